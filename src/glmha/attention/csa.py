"""Channel-wise self-attention (CSA), as the official models define it.

The C channels are the tokens and the H*W pixels of each channel are its embedding, so the
attention map of a head is (C/h) x (C/h). Parameter names follow the official code so that
official checkpoints load unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_attention

_NORM_EPS = 1e-12  # the eps of torch.nn.functional.normalize


def channel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """softmax(temperature * norm(q) norm(k)^T) v for ``B x heads x tokens x pixels`` tensors.

    q has ``c_q`` tokens, k and v share ``c_kv`` tokens (equal to ``c_q`` for CSA, the rank
    for GLMHA). Normalisation is L2 over the pixels, as in the official code.

    The normalisation is applied to the small ``c_q x c_kv`` product instead of to q and k:
    ``norm(q) norm(k)^T = (q k^T) / (|q| |k|^T)``, which saves writing two normalised copies
    of the ``tokens x pixels`` maps (and their backward). Norms are clamped at ``1e-12`` as
    :func:`torch.nn.functional.normalize` does, so the numbers agree to float rounding.
    Under autocast the norms, the scaling and the softmax run in float32.
    """
    precise = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for double inputs
    q_norm = torch.linalg.vector_norm(q, dim=-1, keepdim=True, dtype=precise).clamp_min(_NORM_EPS)
    k_norm = torch.linalg.vector_norm(k, dim=-1, keepdim=True, dtype=precise).clamp_min(_NORM_EPS)
    scale = temperature / (q_norm * k_norm.transpose(-2, -1))
    attn = (q @ k.transpose(-2, -1)).to(precise) * scale
    return attn.softmax(dim=-1).to(v.dtype) @ v


@register_attention("csa", "mdta")
class MDTA(nn.Module):
    """Restormer's multi-Dconv head transposed attention."""

    def __init__(self, dim: int, num_heads: int, bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.bias = bias
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, kernel_size=3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv_dwconv(self.qkv(x))
        q, k, v = (t.reshape(b, self.num_heads, -1, h * w) for t in qkv.chunk(3, dim=1))
        out = channel_attention(q, k, v, self.temperature)
        return self.project_out(out.reshape(b, c, h, w))


def shift_back_mask(mask: torch.Tensor, width: int, step: float) -> torch.Tensor:
    """Undo the dispersion of a ``B x C x H x W'`` mask embedding: channel ``i`` starts at column ``int(step * i)``.

    Returns ``B x C x H x width``. This is the official ``shift_back`` of MST's mask-guided
    mechanism, written as a gather instead of an in-place loop.
    """
    channels, full_width = mask.shape[1], mask.shape[-1]
    starts = [int(step * i) for i in range(channels)]
    if starts[-1] + width > full_width:
        raise ValueError(
            f"the mask embedding is {full_width} columns wide, too narrow to shift back {channels} channels "
            f"by {step:g} px each to width {width} (needs {starts[-1] + width})"
        )
    columns = torch.tensor(starts, device=mask.device)[:, None] + torch.arange(width, device=mask.device)
    index = columns[None, :, None, :].expand(mask.shape[0], channels, mask.shape[2], width)
    return mask.gather(-1, index)


class MaskGuidedMechanism(nn.Module):
    """MST's mask-guided mechanism: turns the shifted 3-D mask into a per-pixel weight for ``v``.

    ``m = conv1(mask)``; ``m = m + m * sigmoid(depth_conv(conv2(m)))``; then the dispersion is
    undone (:func:`shift_back_mask`). At full resolution (``downsample=1``) channel ``i`` is
    shifted by ``dispersion_step * i`` pixels (2 px per band in CASSI). Deeper levels see a mask
    downsampled ``downsample`` times with ``downsample`` times more channels; the official code
    shifts them by ``dispersion_step / downsample**2`` per channel, deriving ``downsample`` as
    ``256 // mask height`` (so it is only right for 256-pixel inputs and fails above 256). Here
    the level's factor is given explicitly, which gives the official numbers at 256 and the
    same shifts at any other size.
    """

    def __init__(self, n_feat: int, downsample: int = 1, dispersion_step: float = 2.0):
        super().__init__()
        self.conv1 = nn.Conv2d(n_feat, n_feat, kernel_size=1, bias=True)
        self.conv2 = nn.Conv2d(n_feat, n_feat, kernel_size=1, bias=True)
        self.depth_conv = nn.Conv2d(n_feat, n_feat, kernel_size=5, padding=2, groups=n_feat, bias=True)
        self.downsample = downsample
        self.dispersion_step = dispersion_step

    def forward(self, mask_shift: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """``B x C x H x W'`` shifted mask -> ``B x C x H x width`` weights (``width`` defaults to H, as official)."""
        mask_shift = self.conv1(mask_shift)
        attn_map = torch.sigmoid(self.depth_conv(self.conv2(mask_shift)))
        mask_shift = mask_shift + mask_shift * attn_map
        step = self.dispersion_step / self.downsample**2
        return shift_back_mask(mask_shift, mask_shift.shape[-2] if width is None else width, step)


@register_attention("csa", "smsa")
class SpectralMSA(nn.Module):
    """Spectral-wise multi-head self-attention (S-MSA) of MST and MST++.

    Works on channels-last ``B x H x W x C`` tensors like the official code: linear q, k, v
    (``heads * dim_head`` channels), per-head channel attention with a learned ``rescale``,
    a linear ``proj``, plus a positional branch ``pos_emb`` (depth-wise conv, GELU, depth-wise
    conv) on ``v``. The official code computes ``softmax(rescale * K Q^T) V``, i.e. the
    channel attention with the roles of q and k swapped.

    With ``mask_guided=True`` (MST) ``v`` is weighted by :class:`MaskGuidedMechanism` applied to
    the shifted mask (``B x H x W' x C``, or batch 1 for a mask shared by the batch). The
    official code always uses the first sample's mask for the whole batch; here each sample
    uses its own, which is the same whenever the batch shares one mask, as in official
    training and testing. In MST the head width is the base width and every level doubles
    the width, so ``dim // dim_head`` is the level's downsampling factor, which sets the
    mask's shift-back step.
    """

    def __init__(self, dim: int, num_heads: int, dim_head: int, mask_guided: bool = False, bias: bool = False):
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.dim_head = dim_head
        self.mask_guided = mask_guided
        inner = num_heads * dim_head
        if mask_guided and inner != dim:
            raise ValueError(f"mask-guided S-MSA needs num_heads * dim_head == dim, got {num_heads} * {dim_head} != {dim}")
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(dim, inner, bias=bias)
        self.to_v = nn.Linear(dim, inner, bias=bias)
        self.rescale = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.proj = nn.Linear(inner, dim, bias=True)
        self.pos_emb = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False),
            nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False),
        )
        if mask_guided:
            self.mm = MaskGuidedMechanism(dim, downsample=max(1, dim // dim_head))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        q_inp, k_inp, v_inp = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)

        def heads(t: torch.Tensor) -> torch.Tensor:  # B x HW x (heads*d) -> B x heads x d x HW
            return t.reshape(b, h * w, self.num_heads, -1).permute(0, 2, 3, 1)

        q, k, v = heads(q_inp), heads(k_inp), heads(v_inp)
        if self.mask_guided:
            if mask is None:
                raise ValueError("this S-MSA is mask-guided (MST): pass the shifted mask")
            weights = self.mm(mask.permute(0, 3, 1, 2), width=w)  # B x C x H x W
            v = v * weights.reshape(weights.shape[0], self.num_heads, -1, h * w)
        out = channel_attention(k, q, v, self.rescale)  # official order: K Q^T
        out_c = self.proj(out.permute(0, 3, 1, 2).reshape(b, h * w, -1)).view(b, h, w, c)
        out_p = self.pos_emb(v_inp.reshape(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return out_c + out_p
