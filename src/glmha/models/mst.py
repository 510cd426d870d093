"""MST (Cai et al., CVPR 2022): mask-guided spectral-wise transformer for CASSI reconstruction.

The U-shaped network of spectral-wise attention blocks is shared with MST++
(:mod:`glmha.models.mst_plus_plus`), which stacks three of them without the mask. With
``attention="csa"`` the module tree, parameter names and shapes are the official ones, so
official checkpoints load with ``strict=True`` and give the official outputs.

Inputs of the CASSI model: ``x``, the 28-band network input (e.g. the shifted-back
measurement, setting ``H`` of :mod:`glmha.data.cassi`), ``B x 28 x H x W``; and ``mask``, the
shifted 3-D mask ``Phi``, ``B x 28 x H x (W + 54)`` (or batch 1, shared by the batch).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..attention import build_attention
from ..validation import InputError, check_image_batch, check_shifted_mask
from .registry import register_model

MST_PRESETS = {"mst_s": (2, 2, 2), "mst_m": (2, 4, 4), "mst_l": (4, 7, 5)}


class FeedForward(nn.Module):
    """1x1 conv, GELU, 3x3 depth-wise conv, GELU, 1x1 conv; channels-last in and out."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        hidden = dim * mult
        self.net = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.GELU(),
            nn.Conv2d(hidden, dim, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PreNorm(nn.Module):
    """Layer norm over the channels (last dim), then ``fn``."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class MSAB(nn.Module):
    """Multi-head spectral attention blocks: ``num_blocks`` x (x + S-MSA(x), x + FFN(norm(x))).

    ``blocks[j]`` is the pair (attention, pre-norm feed-forward), as the official state dict
    names them. The attention comes from the registry's ``"smsa"`` family.
    """

    def __init__(
        self,
        dim: int,
        dim_head: int,
        heads: int,
        num_blocks: int,
        mask_guided: bool = False,
        attention: str = "csa",
        attention_kwargs: dict | None = None,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleList([
                build_attention(
                    attention, "smsa", dim=dim, num_heads=heads, dim_head=dim_head, mask_guided=mask_guided,
                    **(attention_kwargs or {}),
                ),
                PreNorm(dim, FeedForward(dim)),
            ])
            for _ in range(num_blocks)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``B x C x H x W``; ``mask``: ``B x C x H x W'`` (mask-guided only)."""
        x = x.permute(0, 2, 3, 1)
        mask = mask.permute(0, 2, 3, 1) if mask is not None else None
        for attn, ff in self.blocks:
            x = attn(x, mask) + x
            x = ff(x) + x
        return x.permute(0, 3, 1, 2)


def init_weights(module: nn.Module) -> None:
    """The official initialisation: truncated normal (std 0.02) linears, unit layer norms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MST(nn.Module):
    """U-shaped spectral transformer: embedding, ``stage`` encoder levels, bottleneck, decoder, mapping.

    Each encoder level halves the resolution and doubles the width (4x4 stride-2 conv); the
    decoder upsamples with 2x2 transposed convs and fuses the skip with a 1x1 conv. Level
    ``l`` has ``2**l`` heads of width ``dim``. The output is added to the input.

    ``mask_guided=True`` is the CASSI model: every level also downsamples the shifted mask
    (a second stride-2 conv per level) and feeds it to the attention's mask-guided mechanism,
    and the embedding is followed by a leaky ReLU (slope 0.1), as in the official MST. MST++
    uses this network with ``mask_guided=False`` and no activation after the embedding.
    ``embedding_activation`` sets the leaky ReLU on its own (default: ``mask_guided``); the
    real-data MST (:mod:`glmha.models.mst_real`) has it without the mask.
    """

    # how this network initialises its layers; swap_attention gives new attentions the same
    layer_init = staticmethod(init_weights)

    def __init__(
        self,
        dim: int = 28,
        stage: int = 2,
        num_blocks: Sequence[int] = (2, 2, 2),
        in_channels: int = 28,
        out_channels: int = 28,
        mask_guided: bool = True,
        attention: str = "csa",
        attention_kwargs: dict | None = None,
        embedding_activation: bool | None = None,
    ):
        super().__init__()
        if len(num_blocks) != stage + 1:
            raise ValueError(f"num_blocks needs stage + 1 = {stage + 1} entries (levels and bottleneck), got {list(num_blocks)}")
        if mask_guided and in_channels != out_channels:
            raise ValueError(f"the CASSI MST adds its input to its output: in_channels ({in_channels}) must equal out_channels ({out_channels})")
        self.dim = dim
        self.stage = stage
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.mask_guided = mask_guided
        self.embedding_activation = mask_guided if embedding_activation is None else embedding_activation
        self.size_multiple = 2**stage
        self.attention = attention

        def blocks(width: int, n: int) -> MSAB:
            return MSAB(width, dim_head=dim, heads=width // dim, num_blocks=n, mask_guided=mask_guided,
                        attention=attention, attention_kwargs=attention_kwargs)

        self.embedding = nn.Conv2d(in_channels, dim, 3, padding=1, bias=False)
        self.encoder_layers = nn.ModuleList()
        width = dim
        for level in range(stage):
            layers = [blocks(width, num_blocks[level]), nn.Conv2d(width, width * 2, 4, stride=2, padding=1, bias=False)]
            if mask_guided:  # the mask goes down its own path
                layers.append(nn.Conv2d(width, width * 2, 4, stride=2, padding=1, bias=False))
            self.encoder_layers.append(nn.ModuleList(layers))
            width *= 2
        self.bottleneck = blocks(width, num_blocks[-1])
        self.decoder_layers = nn.ModuleList()
        for level in reversed(range(stage)):
            self.decoder_layers.append(nn.ModuleList([
                nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2),
                nn.Conv2d(width, width // 2, 1, bias=False),
                blocks(width // 2, num_blocks[level]),
            ]))
            width //= 2
        self.mapping = nn.Conv2d(dim, out_channels, 3, padding=1, bias=False)
        self.lrelu = nn.LeakyReLU(negative_slope=0.1)
        self.apply(init_weights)

    @property
    def mask_width_extra(self) -> int:
        """Columns the shifted mask has beyond the image: 2 px of dispersion per channel after the first."""
        return 2 * (self.dim - 1)

    def example_inputs(self, height: int = 256, width: int = 256, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """Inputs of the given size on the model's device: ``(x,)``, or ``(x, mask)`` when mask-guided."""
        weight = self.mapping.weight
        x = torch.zeros(batch, self.in_channels, height, width, device=weight.device, dtype=weight.dtype)
        if not self.mask_guided:
            return (x,)
        mask = torch.ones(batch, self.dim, height, width + self.mask_width_extra, device=weight.device, dtype=weight.dtype)
        return x, mask

    def check_inputs(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Clear errors for a wrong input or mask (shape, size multiple, dtype)."""
        check_image_batch(x, self.in_channels)
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise InputError(
                f"MST needs H and W divisible by {self.size_multiple} ({self.stage} downsamplings), got {h}x{w}"
            )
        if self.mask_guided:
            check_shifted_mask(mask, x, self.dim, self.mask_width_extra)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(x, mask)
        return self.refine(x, mask)

    def refine(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The U-shaped network and the global skip on checked inputs: ``mapping(...) + x``."""
        fea = self.embedding(x)
        if self.embedding_activation:
            fea = self.lrelu(fea)
        skips, masks = [], []
        for level in self.encoder_layers:
            fea = level[0](fea, mask)
            skips.append(fea)
            masks.append(mask)
            fea = level[1](fea)
            if self.mask_guided:
                mask = level[2](mask)
        fea = self.bottleneck(fea, mask)
        for up, fuse, msab in self.decoder_layers:
            fea = fuse(torch.cat([up(fea), skips.pop()], dim=1))
            fea = msab(fea, masks.pop())
        return self.mapping(fea) + x


def _build_mst(preset_blocks: Sequence[int], attention: str, attention_kwargs: dict | None, **kwargs) -> MST:
    kwargs.setdefault("dim", 28)
    kwargs.setdefault("stage", 2)
    kwargs.setdefault("num_blocks", preset_blocks)
    return MST(attention=attention, attention_kwargs=attention_kwargs, mask_guided=True, **kwargs)


@register_model("mst_s")
def mst_s(attention: str = "csa", attention_kwargs: dict | None = None, **kwargs) -> MST:
    """MST-S for CASSI: dim 28, 2 stages, blocks [2, 2, 2] (0.92M params with CSA)."""
    return _build_mst(MST_PRESETS["mst_s"], attention, attention_kwargs, **kwargs)


@register_model("mst_m")
def mst_m(attention: str = "csa", attention_kwargs: dict | None = None, **kwargs) -> MST:
    """MST-M for CASSI: dim 28, 2 stages, blocks [2, 4, 4] (1.49M params with CSA)."""
    return _build_mst(MST_PRESETS["mst_m"], attention, attention_kwargs, **kwargs)


@register_model("mst_l")
def mst_l(attention: str = "csa", attention_kwargs: dict | None = None, **kwargs) -> MST:
    """MST-L for CASSI: dim 28, 2 stages, blocks [4, 7, 5] (2.02M params with CSA)."""
    return _build_mst(MST_PRESETS["mst_l"], attention, attention_kwargs, **kwargs)
