"""Efficient-attention baselines that the GLMHA paper argues against, applied to CSA.

In channel attention the C channels are the tokens (the sequence, per head c = C/h) and the
N = H*W pixels of a channel are its embedding. Each baseline keeps the host block's
projections (MDTA: 1x1 conv, 3x3 depth-wise conv, output 1x1 conv; S-MSA: linear q, k, v,
output, positional branch and mask guidance) with the per-head temperature and L2-normalised
queries and keys, and changes only how the queries meet the keys (a "core" module shared by
both families):

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

from .csa import SpectralMSA
from .glmha import resolve_rank
from .registry import register_attention


def _fixed_gaussian(cache: dict, rows: int, cols: int, like: torch.Tensor, seed: int) -> torch.Tensor:
    """A fixed Gaussian ``rows x cols`` matrix (same numbers for the same size and seed), cached."""
    key = (rows, cols, seed, like.device, like.dtype)
    if key not in cache:
        if like.device.type == "meta":
            cache[key] = torch.empty(rows, cols, device="meta", dtype=like.dtype)
        else:
            generator = torch.Generator().manual_seed(seed)
            cache[key] = torch.randn(rows, cols, generator=generator).to(like.device, like.dtype)
    return cache[key]


class LinformerCore(nn.Module):
    """Learned ``(r/h) x c`` matrices E, F per head shorten the key and value sequences."""

    def __init__(self, num_heads: int, tokens: int, projected: int):
        super().__init__()
        # One pair per head (Linformer without parameter sharing).
        self.key_projection = nn.Parameter(torch.randn(num_heads, projected, tokens) / math.sqrt(tokens))
        self.value_projection = nn.Parameter(torch.randn(num_heads, projected, tokens) / math.sqrt(tokens))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        k = torch.einsum("hrc,bhcn->bhrn", self.key_projection, F.normalize(k, dim=-1))
        v = torch.einsum("hrc,bhcn->bhrn", self.value_projection, v)
        attn = (F.normalize(q, dim=-1) @ k.transpose(-2, -1)) * temperature
        return attn.softmax(dim=-1) @ v


class PerformerCore(nn.Module):
    """Softmax attention replaced by ``num_features`` positive random features (FAVOR+).

    ``exp(tau q.k) = E_w[phi_w(tau q) phi_w(k)]`` with ``phi_w(x) = exp(w.x - |x|^2 / 2)``,
    ``w ~ N(0, I_N)``; the attention is then linear in the sequence length.
    """

    def __init__(self, num_features: int = 64, feature_seed: int = 0):
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features}")
        self.num_features = num_features
        self.feature_seed = feature_seed
        self._features: dict = {}

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        features = _fixed_gaussian(self._features, q.shape[-1], self.num_features, q, self.feature_seed)
        q = F.normalize(q, dim=-1) * temperature
        k = F.normalize(k, dim=-1)
        q_logits = q @ features - 0.5 * q.pow(2).sum(-1, keepdim=True)
        k_logits = k @ features - 0.5  # |k| = 1
        # Stabilisers: a per-query shift and one shift per head cancel in the ratio below.
        q_features = torch.exp(q_logits - q_logits.amax(dim=-1, keepdim=True))
        k_features = torch.exp(k_logits - k_logits.amax(dim=(-2, -1), keepdim=True))
        numerator = q_features @ (k_features.transpose(-2, -1) @ v)
        denominator = (q_features * k_features.sum(dim=-2, keepdim=True)).sum(dim=-1, keepdim=True)
        return numerator / denominator


class LSHCore(nn.Module):
    """Reformer's shared-QK LSH attention over ``tokens`` channel tokens per head.

    Each of ``n_hashes`` rounds hashes the tokens with a random rotation of their pixel
    embeddings into ``n_buckets`` buckets, sorts the tokens by bucket, cuts the sorted
    sequence into chunks of ``bucket_size`` and lets each chunk attend to itself and to the
    chunk before it. The rounds are merged with weights from their softmax normalisers.
    """

    def __init__(self, tokens: int, n_hashes: int = 2, bucket_size: int = 16, hash_seed: int = 0):
        super().__init__()
        if n_hashes < 1 or bucket_size < 1:
            raise ValueError(f"n_hashes and bucket_size must be positive, got {n_hashes} and {bucket_size}")
        self.n_hashes = n_hashes
        self.bucket_size = min(bucket_size, tokens)
        self.n_chunks = math.ceil(tokens / self.bucket_size)
        self.n_buckets = 2 * math.ceil(self.n_chunks / 2)  # a rotation gives an even count
        self.hash_seed = hash_seed
        self._rotations: dict = {}

    def forward(self, q: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        b, heads, tokens, n = q.shape
        chunk, n_chunks = self.bucket_size, self.n_chunks
        padded = chunk * n_chunks
        keys = F.normalize(q, dim=-1)
        rotations = _fixed_gaussian(self._rotations, n, self.n_hashes * self.n_buckets // 2, q, self.hash_seed)
        rotated = (keys @ rotations).unflatten(-1, (self.n_hashes, -1)).transpose(-3, -2)
        buckets = torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)  # B x heads x rounds x c
        position = torch.arange(tokens, device=q.device)
        order = (buckets * tokens + position).argsort(dim=-1)  # by bucket, then by position

        queries = keys * temperature  # tau q.k, tau per head
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


# --------------------------------------------------------------------------- Restormer (mdta) blocks
class _ChannelAttention(nn.Module):
    """MDTA's projections around ``self.core``; ``shared_qk`` cores get no key projection."""

    shared_qk = False

    def __init__(self, dim: int, num_heads: int, bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.bias = bias
        width = (2 if self.shared_qk else 3) * dim
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, width, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(width, width, kernel_size=3, padding=1, groups=width, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        parts = self.qkv_dwconv(self.qkv(x)).reshape(b, -1, self.num_heads, c // self.num_heads, h * w).unbind(1)
        if self.shared_qk:
            out = self.core(parts[0], parts[1], self.temperature)
        else:
            out = self.core(*parts, self.temperature)
        return self.project_out(out.reshape(b, c, h, w))


@register_attention("linformer", "mdta")
class LinformerCSA(_ChannelAttention):
    """MDTA with Linformer's sequence projection; ``rank`` (summed over heads) or ``rank_ratio`` as GLMHA's."""

    def __init__(self, dim: int, num_heads: int, bias: bool = False, rank: int | None = None, rank_ratio: float | None = None):
        super().__init__(dim, num_heads, bias)
        self.rank = resolve_rank(dim, num_heads, rank, rank_ratio)
        self.core = LinformerCore(num_heads, dim // num_heads, self.rank // num_heads)


@register_attention("performer", "mdta")
class PerformerCSA(_ChannelAttention):
    """MDTA with Performer's random-feature attention."""

    def __init__(self, dim: int, num_heads: int, bias: bool = False, num_features: int = 64, feature_seed: int = 0):
        super().__init__(dim, num_heads, bias)
        self.core = PerformerCore(num_features, feature_seed)


@register_attention("reformer", "mdta")
class ReformerCSA(_ChannelAttention):
    """MDTA with Reformer's shared-QK LSH attention (the projection makes only Q and V)."""

    shared_qk = True

    def __init__(
        self, dim: int, num_heads: int, bias: bool = False, n_hashes: int = 2, bucket_size: int = 16, hash_seed: int = 0
    ):
        super().__init__(dim, num_heads, bias)
        self.core = LSHCore(dim // num_heads, n_hashes, bucket_size, hash_seed)


# --------------------------------------------------------------------------- MST / MST++ (smsa) blocks
class _SpectralAttention(SpectralMSA):
    """S-MSA's projections (and mask guidance) around ``self.core``, in the official K Q^T order.

    The parameters are S-MSA's own (built by :class:`SpectralMSA`); Reformer's shared-QK
    variant drops ``to_k``.
    """

    shared_qk = False

    def __init__(self, dim: int, num_heads: int, dim_head: int, mask_guided: bool = False, bias: bool = False):
        if num_heads * dim_head != dim:
            raise ValueError(f"S-MSA needs num_heads * dim_head == dim, got {num_heads} * {dim_head} != {dim}")
        super().__init__(dim, num_heads, dim_head, mask_guided=mask_guided, bias=bias)
        if self.shared_qk:
            del self.to_k

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)

        def heads(t: torch.Tensor) -> torch.Tensor:  # B x HW x C -> B x heads x d x HW
            return t.reshape(b, h * w, self.num_heads, -1).permute(0, 2, 3, 1)

        q, v_inp = self.to_q(tokens), self.to_v(tokens)
        v = heads(v_inp)
        if self.mask_guided:
            if mask is None:
                raise ValueError("this S-MSA is mask-guided (MST): pass the shifted mask")
            weights = self.mm(mask.permute(0, 3, 1, 2), width=w)  # B x C x H x W
            v = v * weights.reshape(weights.shape[0], self.num_heads, -1, h * w)
        if self.shared_qk:
            out = self.core(heads(q), v, self.rescale)
        else:
            out = self.core(heads(self.to_k(tokens)), heads(q), v, self.rescale)  # rows: k, as the official code
        out_c = self.proj(out.permute(0, 3, 1, 2).reshape(b, h * w, c)).view(b, h, w, c)
        out_p = self.pos_emb(v_inp.reshape(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return out_c + out_p


@register_attention("linformer", "smsa")
class SpectralLinformer(_SpectralAttention):
    """S-MSA with Linformer's sequence projection (options as :class:`LinformerCSA`)."""

    def __init__(self, dim: int, num_heads: int, dim_head: int, mask_guided: bool = False, bias: bool = False,
                 rank: int | None = None, rank_ratio: float | None = None):
        super().__init__(dim, num_heads, dim_head, mask_guided, bias)
        self.rank = resolve_rank(dim, num_heads, rank, rank_ratio)
        self.core = LinformerCore(num_heads, dim_head, self.rank // num_heads)


@register_attention("performer", "smsa")
class SpectralPerformer(_SpectralAttention):
    """S-MSA with Performer's random-feature attention (options as :class:`PerformerCSA`)."""

    def __init__(self, dim: int, num_heads: int, dim_head: int, mask_guided: bool = False, bias: bool = False,
                 num_features: int = 64, feature_seed: int = 0):
        super().__init__(dim, num_heads, dim_head, mask_guided, bias)
        self.core = PerformerCore(num_features, feature_seed)


@register_attention("reformer", "smsa")
class SpectralReformer(_SpectralAttention):
    """S-MSA with Reformer's shared-QK LSH attention (no ``to_k``; options as :class:`ReformerCSA`)."""

    shared_qk = True

    def __init__(self, dim: int, num_heads: int, dim_head: int, mask_guided: bool = False, bias: bool = False,
                 n_hashes: int = 2, bucket_size: int = 16, hash_seed: int = 0):
        super().__init__(dim, num_heads, dim_head, mask_guided, bias)
        self.core = LSHCore(dim_head, n_hashes, bucket_size, hash_seed)
