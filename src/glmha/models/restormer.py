"""Restormer (Zamir et al., CVPR 2022), with a pluggable channel attention.

With ``attention="csa"`` the module tree, parameter names and shapes are the official ones,
so official checkpoints load with ``strict=True`` and give the official outputs.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import build_attention
from ..validation import check_image_batch
from .registry import register_model

LAYER_NORM_TYPES = ("WithBias", "BiasFree")


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channels of a ``B x C x H x W`` map (Restormer's LayerNorm).

    ``"WithBias"`` is the usual layer norm; ``"BiasFree"`` divides by the standard deviation
    without centring the input and has no bias. The statistics are taken over the last dim of
    the ``B x H x W x C`` view: PyTorch's fused layer norm works there, and on a channels-last
    input it reads the tensor in place (reducing over dim 1 of ``B x C x H x W`` with
    ``var_mean`` instead was several times slower on the CPU). The output is the same view
    back, so a channels-last input gives a channels-last output.
    """

    def __init__(self, dim: int, layer_norm_type: str = "WithBias", eps: float = 1e-5):
        super().__init__()
        if layer_norm_type not in LAYER_NORM_TYPES:
            raise ValueError(f"layer_norm_type must be one of {LAYER_NORM_TYPES}, got {layer_norm_type!r}")
        self.body = _NormParams(dim, with_bias=layer_norm_type == "WithBias")
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Half-precision inputs (autocast) are normalised in float32; float32 is a no-op here.
        # Half-precision weights (model.half()) are promoted alike: layer_norm takes one dtype.
        precise = torch.promote_types(x.dtype, torch.float32)
        pixels_by_channels = x.permute(0, 2, 3, 1).to(precise)
        weight = self.body.weight.to(precise)
        if self.body.bias is not None:
            out = F.layer_norm(pixels_by_channels, x.shape[1:2], weight, self.body.bias.to(precise), self.eps)
        else:
            var = torch.var(pixels_by_channels, dim=-1, keepdim=True, unbiased=False)
            out = pixels_by_channels * torch.rsqrt(var + self.eps) * weight
        return out.to(x.dtype).permute(0, 3, 1, 2)


class _NormParams(nn.Module):
    # Holds the parameters under ``norm.body`` as the official state dict names them.
    def __init__(self, dim: int, with_bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if with_bias else None


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, kernel_size=3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


class PlainFeedForward(nn.Module):
    """Conventional feed-forward (1x1 conv, GELU, 1x1 conv): the paper's ablation of GDFN."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden, kernel_size=1, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project_out(F.gelu(self.project_in(x)))


FEED_FORWARDS = {"gdfn": GDFN, "plain": PlainFeedForward}


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_expansion_factor: float,
        bias: bool,
        layer_norm_type: str,
        attention: str = "csa",
        attention_kwargs: dict | None = None,
        feed_forward: str = "gdfn",
    ):
        super().__init__()
        if feed_forward not in FEED_FORWARDS:
            raise ValueError(f"feed_forward must be one of {sorted(FEED_FORWARDS)}, got {feed_forward!r}")
        self.norm1 = ChannelLayerNorm(dim, layer_norm_type)
        self.attn = build_attention(attention, "mdta", dim=dim, num_heads=num_heads, bias=bias, **(attention_kwargs or {}))
        self.norm2 = ChannelLayerNorm(dim, layer_norm_type)
        self.ffn = FEED_FORWARDS[feed_forward](dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class OverlapPatchEmbed(nn.Module):
    # The official model builds this without passing ``bias``, so it never has one.
    def __init__(self, in_channels: int, embed_dim: int, bias: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """Halve the resolution, double the channels (conv to C/2, pixel-unshuffle by 2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """Double the resolution, halve the channels (conv to 2C, pixel-shuffle by 2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Restormer(nn.Module):
    """Four-level encoder-decoder of transformer blocks, then refinement blocks.

    Arguments follow the official constructor (``LayerNorm_type`` is spelt
    ``layer_norm_type`` here; the official spelling is accepted too).
    """

    size_multiple = 8  # three 2x downsamplings

    def __init__(
        self,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        layer_norm_type: str = "WithBias",
        dual_pixel_task: bool = False,
        attention: str = "csa",
        attention_kwargs: dict | None = None,
        feed_forward: str = "gdfn",
    ):
        super().__init__()
        if len(num_blocks) != 4 or len(heads) != 4:
            raise ValueError(f"num_blocks and heads need 4 entries (one per level), got {list(num_blocks)} and {list(heads)}")
        if dual_pixel_task and inp_channels != 6:
            raise ValueError(f"dual_pixel_task takes the left and right views stacked: inp_channels must be 6, got {inp_channels}")
        self.in_channels = inp_channels
        self.out_channels = out_channels
        self.dual_pixel_task = dual_pixel_task
        self.attention = attention

        def level(channels: int, n_blocks: int, n_heads: int) -> nn.Sequential:
            return nn.Sequential(
                *(
                    TransformerBlock(
                        channels, n_heads, ffn_expansion_factor, bias, layer_norm_type,
                        attention=attention, attention_kwargs=attention_kwargs, feed_forward=feed_forward,
                    )
                    for _ in range(n_blocks)
                )
            )

        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)
        self.encoder_level1 = level(dim, num_blocks[0], heads[0])
        self.down1_2 = Downsample(dim)
        self.encoder_level2 = level(dim * 2, num_blocks[1], heads[1])
        self.down2_3 = Downsample(dim * 2)
        self.encoder_level3 = level(dim * 4, num_blocks[2], heads[2])
        self.down3_4 = Downsample(dim * 4)
        self.latent = level(dim * 8, num_blocks[3], heads[3])

        self.up4_3 = Upsample(dim * 8)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, kernel_size=1, bias=bias)
        self.decoder_level3 = level(dim * 4, num_blocks[2], heads[2])
        self.up3_2 = Upsample(dim * 4)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, kernel_size=1, bias=bias)
        self.decoder_level2 = level(dim * 2, num_blocks[1], heads[1])
        self.up2_1 = Upsample(dim * 2)  # level 1 keeps the concatenated 2*dim channels
        self.decoder_level1 = level(dim * 2, num_blocks[0], heads[0])
        self.refinement = level(dim * 2, num_refinement_blocks, heads[0])

        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, kernel_size=1, bias=bias)
        self.output = nn.Conv2d(dim * 2, out_channels, kernel_size=3, padding=1, bias=bias)

    def example_inputs(self, height: int = 256, width: int = 256, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """Inputs of the given size on the model's device (used for profiling and benchmarks)."""
        weight = self.output.weight
        return (torch.zeros(batch, self.in_channels, height, width, device=weight.device, dtype=weight.dtype),)

    def forward(self, inp_img: torch.Tensor) -> torch.Tensor:
        check_image_batch(inp_img, self.in_channels)
        h, w = inp_img.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(
                f"Restormer needs H and W divisible by {self.size_multiple}, got {h}x{w}; "
                "use glmha.restore(), which pads and crops back"
            )
        enc1_in = self.patch_embed(inp_img)
        enc1 = self.encoder_level1(enc1_in)
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        latent = self.latent(self.down3_4(enc3))

        dec3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1)))
        dec2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1)))
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1))
        dec1 = self.refinement(dec1)

        if self.dual_pixel_task:
            return self.output(dec1 + self.skip_conv(enc1_in))
        return self.output(dec1) + inp_img


@register_model("restormer")
def restormer(attention: str = "csa", attention_kwargs: dict | None = None, **kwargs) -> Restormer:
    """Restormer; defaults are the official deraining/deblurring configuration (26.1M params)."""
    if "LayerNorm_type" in kwargs:  # the official constructor's spelling
        kwargs["layer_norm_type"] = kwargs.pop("LayerNorm_type")
    return Restormer(attention=attention, attention_kwargs=attention_kwargs, **kwargs)
