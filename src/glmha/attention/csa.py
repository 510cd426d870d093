"""Channel-wise self-attention (CSA), as the official models define it.

The C channels are the tokens and the H*W pixels of each channel are its embedding, so the
attention map of a head is (C/h) x (C/h). Parameter names follow the official code so that
official checkpoints load unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_attention


def channel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """softmax(temperature * norm(q) norm(k)^T) v for ``B x heads x tokens x pixels`` tensors.

    q has ``c_q`` tokens, k and v share ``c_kv`` tokens (equal to ``c_q`` for CSA, the rank
    for GLMHA). Normalisation is L2 over the pixels, as in the official code.
    """
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1)) * temperature
    return attn.softmax(dim=-1) @ v


@register_attention("csa", "mdta")
class MDTA(nn.Module):
    """Restormer's multi-Dconv head transposed attention."""

    def __init__(self, dim: int, num_heads: int, bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
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
