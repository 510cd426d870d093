"""MST for real CASSI data, as the ``real/`` code of the official MST repository defines it.

The real-data network differs from the simulation MST (:mod:`glmha.models.mst`) in its input
and in having no mask-guided mechanism:

- it takes the raw measurement ``y`` alone, ``B x H x W'`` (or ``B x 1 x H x W'``) with
  ``W' = W + step * (bands - 1)``;
- its first estimate is the measurement's fixed shift-back slices (band ``c`` reads columns
  ``step * c .. step * c + W``), mixed by a learned 3x3 convolution, the official ``fution``
  (the official spelling is kept so that official checkpoints load);
- the U-shaped spectral transformer (the building blocks of :class:`glmha.models.mst.MST`,
  without the mask, with the leaky ReLU after the embedding) refines that estimate, and the
  output is added to it.

With ``attention="csa"`` the parameter names, shapes and module order are the official ones.
The official code only takes square scenes (``W' - 54 == H``) whose sides are multiples of
4; here any size works: the first estimate is reflect-padded to a multiple of ``2**stage``
and the output cropped back (no padding happens at the official sizes).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.cassi import shift_back
from ..validation import InputError, check_image_batch
from .mst import MST, MST_PRESETS
from .registry import register_model


class RealMST(MST):
    """MST of the real-data experiments: measurement in, ``bands``-band cube out.

    ``dim``, ``stage`` and ``num_blocks`` are those of :class:`glmha.models.mst.MST`; ``bands``
    (28) and ``step`` (2 px per band) describe the camera's dispersion.
    """

    def __init__(
        self,
        dim: int = 28,
        stage: int = 2,
        num_blocks: Sequence[int] = (2, 2, 2),
        bands: int = 28,
        step: int = 2,
        attention: str = "csa",
        attention_kwargs: dict | None = None,
    ):
        super().__init__(dim=dim, stage=stage, num_blocks=num_blocks, in_channels=bands, out_channels=bands,
                         mask_guided=False, attention=attention, attention_kwargs=attention_kwargs,
                         embedding_activation=True)
        self.bands, self.step = bands, step
        self.fution = nn.Conv2d(bands, bands, 3, padding=1, bias=False)
        # The official module order (fusion right after the embedding), so state_dict() lists its keys in order.
        modules = self._modules
        self._modules = {"embedding": modules.pop("embedding"), "fution": modules.pop("fution"), **modules}
        # The official real-data MST keeps PyTorch's default initialisation of its linear layers.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.reset_parameters()
        self.pad_multiple = self.size_multiple
        self.size_multiple = 1  # any measurement size: the estimate is padded inside

    @property
    def measurement_extra_width(self) -> int:
        """Columns the measurement has beyond the scene: ``step`` per band after the first."""
        return self.step * (self.bands - 1)

    def example_inputs(self, height: int = 256, width: int = 256, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """The measurement of a ``height x width`` scene, ``(y,)`` with ``y`` of ``batch x height x (width + 54)``."""
        weight = self.mapping.weight
        return (torch.zeros(batch, height, width + self.measurement_extra_width, device=weight.device, dtype=weight.dtype),)

    def check_inputs(self, y: torch.Tensor) -> None:
        """Clear errors for a measurement of the wrong shape, type or size."""
        if isinstance(y, torch.Tensor) and y.dim() == 3:
            y = y.unsqueeze(1)
        if isinstance(y, torch.Tensor) and y.dim() == 4 and y.shape[1] != 1:
            raise InputError(
                f"the real-data MST takes the raw measurement B x H x W' (or B x 1 x H x W'), got shape {tuple(y.shape)}"
            )
        check_image_batch(y, 1, what="measurement")
        h, full_width = y.shape[-2:]
        width = full_width - self.measurement_extra_width
        if width < 1:
            raise InputError(
                f"a measurement of {self.bands} bands dispersed by {self.step} px is {self.measurement_extra_width} columns "
                f"wider than the scene; got only {full_width} columns"
            )
        for side in (h, width):
            if side <= (-side) % self.pad_multiple:
                raise InputError(f"the scene ({h}x{width}) is too small to pad to a multiple of {self.pad_multiple}")

    def initial_estimate(self, y: torch.Tensor) -> torch.Tensor:
        """The fused shift-back of the measurement, ``B x bands x H x W``: the official ``initial_x``."""
        if y.dim() == 4:
            y = y[:, 0]
        return self.fution(shift_back(y, bands=self.bands, step=self.step))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        self.check_inputs(y)
        x = self.initial_estimate(y)
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.pad_multiple, (-w) % self.pad_multiple
        if pad_h or pad_w:
            return self.refine(F.pad(x, [0, pad_w, 0, pad_h], mode="reflect"))[..., :h, :w]
        return self.refine(x)


def _build_real_mst(preset: str, attention: str, attention_kwargs: dict | None, **kwargs) -> RealMST:
    kwargs.setdefault("num_blocks", MST_PRESETS[preset])
    return RealMST(attention=attention, attention_kwargs=attention_kwargs, **kwargs)


@register_model("mst_s_real")
def mst_s_real(attention: str = "csa", attention_kwargs: dict | None = None, **kwargs) -> RealMST:
    """MST-S for real CASSI measurements: dim 28, 2 stages, blocks [2, 2, 2] (707,048 params with CSA)."""
    return _build_real_mst("mst_s", attention, attention_kwargs, **kwargs)


@register_model("mst_m_real")
def mst_m_real(attention: str = "csa", attention_kwargs: dict | None = None, **kwargs) -> RealMST:
    """MST-M for real CASSI measurements: dim 28, 2 stages, blocks [2, 4, 4] (1,184,184 params with CSA)."""
    return _build_real_mst("mst_m", attention, attention_kwargs, **kwargs)


@register_model("mst_l_real")
def mst_l_real(attention: str = "csa", attention_kwargs: dict | None = None, **kwargs) -> RealMST:
    """MST-L for real CASSI measurements: dim 28, 2 stages, blocks [4, 7, 5] (1,630,076 params with CSA)."""
    return _build_real_mst("mst_l", attention, attention_kwargs, **kwargs)
