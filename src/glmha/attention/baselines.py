"""Efficient-attention baselines that the GLMHA paper argues against, applied to CSA.

In channel attention the C channels are the tokens (the sequence, per head c = C/h) and the
N = H*W pixels of a channel are its embedding. Each baseline keeps MDTA's projections
(1x1 conv, 3x3 depthwise conv, output 1x1 conv, per-head temperature, L2-normalised queries
and keys) and changes only how the queries meet the keys:

- ``linformer``: learned ``k x c`` matrices E, F per head shorten the key and value sequences
  from c to k tokens before attention (Wang et al., 2020).
- ``performer``: softmax attention replaced by FAVOR+ positive random features, i.e. linear
  attention ``phi(Q) (phi(K)^T V)`` (Choromanski et al., 2021).
- ``reformer``: shared query/key projection and LSH attention: tokens hashed by random
  rotations, sorted by bucket, attention inside chunks (Kitaev et al., 2020).

Costs in formulas: docs/attention.md. The random features and rotations live in an
N-dimensional embedding space whose size is the image's pixel count, so they are drawn
from a fixed seed for each N on first use and kept out of the state dict.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .glmha import resolve_rank
from .registry import register_attention


class _ChannelAttentionBase(nn.Module):
    """MDTA's projections around an ``attend(q, k, v)`` that subclasses define.

    ``q``, ``k``, ``v``: ``B x heads x c x N``. Subclasses with a shared query/key projection
    set ``projections = 2`` and get ``k = None``.
    """

    projections = 3

    def __init__(self, dim: int, num_heads: int, bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.bias = bias
        width = self.projections * dim
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, width, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(width, width, kernel_size=3, padding=1, groups=width, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self._random_cache: dict[tuple, torch.Tensor] = {}

    def attend(self, q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def random_matrix(self, rows: int, cols: int, like: torch.Tensor, seed: int) -> torch.Tensor:
        """A fixed Gaussian ``rows x cols`` matrix (same numbers for the same size and seed)."""
        key = (rows, cols, seed, like.device, like.dtype)
        if key not in self._random_cache:
            if like.device.type == "meta":
                matrix = torch.empty(rows, cols, device="meta", dtype=like.dtype)
            else:
                generator = torch.Generator().manual_seed(seed)
                matrix = torch.randn(rows, cols, generator=generator).to(like.device, like.dtype)
            self._random_cache[key] = matrix
        return self._random_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        parts = self.qkv_dwconv(self.qkv(x)).reshape(b, self.projections, self.num_heads, -1, h * w).unbind(1)
        if self.projections == 2:
            out = self.attend(parts[0], None, parts[1])
        else:
            out = self.attend(*parts)
        return self.project_out(out.reshape(b, c, h, w))


@register_attention("linformer", "mdta")
class LinformerCSA(_ChannelAttentionBase):
    """Channel attention with the key and value sequences projected from c to k tokens per head.

    ``rank`` (the projected length k summed over heads) or ``rank_ratio`` as GLMHA's.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False, rank: int | None = None, rank_ratio: float = 0.5):
        super().__init__(dim, num_heads, bias)
        self.rank = resolve_rank(dim, num_heads, rank, rank_ratio)
        tokens, projected = dim // num_heads, self.rank // num_heads
        # E and F shorten the sequence, one pair per head (Linformer without parameter sharing).
        self.key_projection = nn.Parameter(torch.randn(num_heads, projected, tokens) / math.sqrt(tokens))
        self.value_projection = nn.Parameter(torch.randn(num_heads, projected, tokens) / math.sqrt(tokens))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k = torch.einsum("hrc,bhcn->bhrn", self.key_projection, F.normalize(k, dim=-1))
        v = torch.einsum("hrc,bhcn->bhrn", self.value_projection, v)
        attn = (F.normalize(q, dim=-1) @ k.transpose(-2, -1)) * self.temperature
        return attn.softmax(dim=-1) @ v


@register_attention("performer", "mdta")
class PerformerCSA(_ChannelAttentionBase):
    """Channel attention with softmax replaced by ``num_features`` positive random features.

    ``exp(tau q.k) = E_w[phi_w(tau q) phi_w(k)]`` with ``phi_w(x) = exp(w.x - |x|^2 / 2)``,
    ``w ~ N(0, I_N)``; the attention is then linear in the sequence length.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False, num_features: int = 64, feature_seed: int = 0):
        super().__init__(dim, num_heads, bias)
        if num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features}")
        self.num_features = num_features
        self.feature_seed = feature_seed

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        features = self.random_matrix(q.shape[-1], self.num_features, q, self.feature_seed)
        q = F.normalize(q, dim=-1) * self.temperature
        k = F.normalize(k, dim=-1)
        q_logits = q @ features - 0.5 * q.pow(2).sum(-1, keepdim=True)
        k_logits = k @ features - 0.5  # |k| = 1
        # Stabilisers: a per-query shift and one shift per head cancel in the ratio below.
        q_features = torch.exp(q_logits - q_logits.amax(dim=-1, keepdim=True))
        k_features = torch.exp(k_logits - k_logits.amax(dim=(-2, -1), keepdim=True))
        numerator = q_features @ (k_features.transpose(-2, -1) @ v)
        denominator = (q_features * k_features.sum(dim=-2, keepdim=True)).sum(dim=-1, keepdim=True)
        return numerator / denominator


@register_attention("reformer", "mdta")
class ReformerCSA(_ChannelAttentionBase):
    """Channel attention with Reformer's shared-QK LSH attention.

    Each of ``n_hashes`` rounds hashes the channel tokens with a random rotation of their
    pixel embeddings into ``n_buckets`` buckets, sorts the tokens by bucket, cuts the sorted
    sequence into chunks of ``bucket_size`` and lets each chunk attend to itself and to the
    chunk before it. The rounds are merged with weights from their softmax normalisers.
    """

    projections = 2  # queries double as keys

    def __init__(
        self,
        dim: int,
        num_heads: int,
        bias: bool = False,
        n_hashes: int = 2,
        bucket_size: int = 16,
        hash_seed: int = 0,
    ):
        super().__init__(dim, num_heads, bias)
        if n_hashes < 1 or bucket_size < 1:
            raise ValueError(f"n_hashes and bucket_size must be positive, got {n_hashes} and {bucket_size}")
        tokens = dim // num_heads
        self.n_hashes = n_hashes
        self.bucket_size = min(bucket_size, tokens)
        self.n_chunks = math.ceil(tokens / self.bucket_size)
        self.n_buckets = 2 * math.ceil(self.n_chunks / 2)  # a rotation gives an even count
        self.hash_seed = hash_seed

    def attend(self, q: torch.Tensor, k: None, v: torch.Tensor) -> torch.Tensor:
        b, heads, tokens, n = q.shape
        chunk, n_chunks = self.bucket_size, self.n_chunks
        padded = chunk * n_chunks
        keys = F.normalize(q, dim=-1)
        rotations = self.random_matrix(n, self.n_hashes * self.n_buckets // 2, q, self.hash_seed)
        rotated = (keys @ rotations).unflatten(-1, (self.n_hashes, -1)).transpose(-3, -2)
        buckets = torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)  # B x heads x rounds x c
        position = torch.arange(tokens, device=q.device)
        order = (buckets * tokens + position).argsort(dim=-1)  # by bucket, then by position

        queries = keys * self.temperature[None, :, :, :]  # tau q.k, tau per head
        outputs, normalisers = [], []
        for round_order in order.unbind(dim=2):
            gather = round_order[..., None].expand(-1, -1, -1, n)
            sorted_q = torch.gather(queries, 2, gather)
            sorted_k = torch.gather(keys, 2, gather)
            sorted_v = torch.gather(v, 2, gather)
            sorted_pos = round_order
            if padded > tokens:  # padding keys are masked out below
                pad = (0, 0, 0, padded - tokens)
                sorted_q, sorted_k, sorted_v = (F.pad(t, pad) for t in (sorted_q, sorted_k, sorted_v))
                sorted_pos = F.pad(round_order, (0, padded - tokens), value=-1)
            chunks_q = sorted_q.reshape(b, heads, n_chunks, chunk, n)
            chunks_k, chunks_v, chunks_pos = (
                torch.cat([t, t.roll(1, dims=2)], dim=3)  # own chunk and the one before
                for t in (
                    sorted_k.reshape(b, heads, n_chunks, chunk, n),
                    sorted_v.reshape(b, heads, n_chunks, chunk, n),
                    sorted_pos.reshape(b, heads, n_chunks, chunk),
                )
            )
            logits = chunks_q @ chunks_k.transpose(-2, -1)
            query_pos = sorted_pos.reshape(b, heads, n_chunks, chunk, 1)
            # A shared-QK token always matches itself best: allow it only when nothing else is there.
            logits = logits.masked_fill(chunks_pos[..., None, :] == query_pos, -1e4)
            logits = logits.masked_fill(chunks_pos[..., None, :] < 0, float("-inf"))
            normaliser = logits.logsumexp(dim=-1, keepdim=True)
            out = (logits - normaliser).exp() @ chunks_v
            # Back to channel order (padding rows dropped).
            inverse = round_order.argsort(dim=-1)
            out = out.reshape(b, heads, padded, n)[:, :, :tokens]
            normaliser = normaliser.reshape(b, heads, padded, 1)[:, :, :tokens]
            outputs.append(torch.gather(out, 2, inverse[..., None].expand(-1, -1, -1, n)))
            normalisers.append(torch.gather(normaliser, 2, inverse[..., None]))
        weights = torch.stack(normalisers).softmax(dim=0)
        return (torch.stack(outputs) * weights).sum(dim=0)
