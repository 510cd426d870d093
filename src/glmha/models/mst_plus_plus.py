"""MST++ (Cai et al., CVPRW 2022): multi-stage spectral transformer for RGB-to-hyperspectral reconstruction.

A 3x3 conv lifts the RGB image to ``n_feat`` channels, ``stage`` U-shaped spectral
transformers (:class:`glmha.models.mst.MST` without the mask) refine it in sequence, a 3x3
conv maps it to the bands and a global skip adds the lifted input. The image is
reflect-padded to a multiple of 8 and the output cropped back, as the official model does, so
any size at least 5x5 works. With ``attention="csa"`` the parameter names and shapes are the
official ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..validation import InputError, check_image_batch
from .mst import MST
from .registry import register_model


class MSTPlusPlus(nn.Module):
    """MST++; arguments follow the official ``MST_Plus_Plus`` constructor.

    As in the official code, each stage is an MST of width 31 with 2 levels and one block per
    level, whatever ``n_feat`` is (so ``n_feat`` must be 31 for the stages to fit).
    """

    size_multiple = 8  # the official padding; the stages themselves need a multiple of 4

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 31,
        n_feat: int = 31,
        stage: int = 3,
        attention: str = "csa",
        attention_kwargs: dict | None = None,
    ):
        super().__init__()
        stage_width = 31
        if n_feat != stage_width:
            raise ValueError(f"MST++ stages are {stage_width} channels wide (as in the official code); n_feat must be {stage_width}, got {n_feat}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.attention = attention
        self.conv_in = nn.Conv2d(in_channels, n_feat, kernel_size=3, padding=1, bias=False)
        self.body = nn.Sequential(*(
            MST(dim=stage_width, stage=2, num_blocks=(1, 1, 1), in_channels=stage_width, out_channels=stage_width,
                mask_guided=False, attention=attention, attention_kwargs=attention_kwargs)
            for _ in range(stage)
        ))
        self.conv_out = nn.Conv2d(n_feat, out_channels, kernel_size=3, padding=1, bias=False)

    def example_inputs(self, height: int = 256, width: int = 256, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """An RGB batch of the given size on the model's device."""
        weight = self.conv_out.weight
        return (torch.zeros(batch, self.in_channels, height, width, device=weight.device, dtype=weight.dtype),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_channels)
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.size_multiple, (-w) % self.size_multiple
        if pad_h >= h or pad_w >= w:
            raise InputError(
                f"MST++ reflect-pads to a multiple of {self.size_multiple}, which needs an image of at least 5x5; got {h}x{w}"
            )
        x = F.pad(x, [0, pad_w, 0, pad_h], mode="reflect")
        x = self.conv_in(x)
        out = self.conv_out(self.body(x)) + x
        return out[:, :, :h, :w]


@register_model("mst_plus_plus")
def mst_plus_plus(attention: str = "csa", attention_kwargs: dict | None = None, **kwargs) -> MSTPlusPlus:
    """MST++ for RGB-to-HSI (31 bands, 3 stages; 1.62M params with CSA), the NTIRE 2022 winner."""
    return MSTPlusPlus(attention=attention, attention_kwargs=attention_kwargs, **kwargs)
