"""GLMHA: guided low-rank multi-head attention (docs/GLMHA.md, sections 3 and 4).

CSA builds C keys and C values and attends over all of them. GLMHA keeps the C queries
(the output needs C channels) but generates only ``rank`` keys and values, straight from
the input, through a projection that an instance-specific channel gate ``g`` calibrates:
``[K; V] = W_kv diag(g) X``. Each head then has a ``(C/h) x (rank/h)`` attention map.

The gate is folded into the projection weights by default (one batched ``2r x C`` weight
per image) instead of multiplying the ``C x N`` activation, which would cost a full extra
pass over the feature map forward and backward; ``gate_weights=False`` does the latter,
for the comparison in docs/attention.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .csa import MaskGuidedMechanism, channel_attention
from .registry import register_attention


def resolve_rank(dim: int, num_heads: int, rank: int | None = None, rank_ratio: float | None = None) -> int:
    """Key/value length: ``rank``, or ``rank_ratio * dim`` rounded to a multiple of ``num_heads``.

    ``rank_ratio`` (default 0.5 when neither is given) yields between ``num_heads`` (one key per
    head) and ``dim`` (full rank). An explicit ``rank`` is taken as it is, so it must be a
    multiple of ``num_heads`` no larger than ``dim``; giving both is an error.
    """
    if rank is not None and rank_ratio is not None:
        raise ValueError(f"give rank or rank_ratio, not both (got rank={rank!r}, rank_ratio={rank_ratio!r})")
    if rank is None:
        rank_ratio = 0.5 if rank_ratio is None else rank_ratio
        if isinstance(rank_ratio, bool) or not isinstance(rank_ratio, (int, float)) or not 0 < rank_ratio <= 1:
            raise ValueError(f"rank_ratio must be a number in (0, 1], got {rank_ratio!r}")
        per_head = int(rank_ratio * dim / num_heads + 0.5)  # round half up, unlike round()
        return min(max(per_head, 1), dim // num_heads) * num_heads
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    if rank > dim:
        raise ValueError(f"rank {rank} exceeds the {dim} channels of this layer; for models whose levels differ in width "
                         "use rank_ratio, or per-layer ranks (glmha.analysis.eigen.apply_ranks)")
    if rank % num_heads:
        below, above = rank // num_heads * num_heads, -(-rank // num_heads) * num_heads
        raise ValueError(f"rank {rank} is not a multiple of the layer's {num_heads} heads; use {below or above} or {above}")
    return rank


def _check_flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r} ({type(value).__name__})")
    return value


class ChannelCalibration(nn.Module):
    """The guidance network: ``g = sigmoid(W2 GELU(W1 avgpool(X)))``, one gate per input channel.

    No biases, so the parameter count is the spec's ``2 C hidden``.
    """

    def __init__(self, dim: int, reduction: int = 8):
        super().__init__()
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"reduction must be a positive integer, got {reduction!r}")
        hidden = max(dim // reduction, 4)
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled``: ``B x C`` channel means; returns the ``B x C`` gate in (0, 1)."""
        return torch.sigmoid(self.fc2(F.gelu(self.fc1(pooled))))


def gated_projection(
    weight: torch.Tensor, x: torch.Tensor, gate: torch.Tensor | None, gate_weights: bool = True
) -> torch.Tensor:
    """``weight @ diag(gate) @ x`` for ``x``: ``B x C x N``, ``weight``: ``out x C``, ``gate``: ``B x C``.

    With ``gate_weights`` the gate scales the small ``out x C`` weight of each instance and one
    batched product follows; otherwise it scales the ``C x N`` activation first.
    """
    if gate is None:
        return torch.matmul(weight, x)
    if gate_weights:
        return torch.bmm(weight * gate[:, None, :], x)
    return torch.matmul(weight, x * gate[:, :, None])


@register_attention("glmha", "mdta")
class GLMHA(nn.Module):
    """GLMHA for Restormer's block: ``forward(x: B x C x H x W) -> B x C x H x W``.

    Args:
        dim, num_heads, bias: as the block's MDTA.
        rank: key/value length; default ``rank_ratio * dim`` (see :func:`resolve_rank`).
        reduction: the calibration MLP's hidden width is ``max(dim // reduction, 4)``.
        calibration: ``False`` drops the guidance (``g = 1``), for the ablation.
        gate_weights: apply the gate to the projection weights (fast) or to the input.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        bias: bool = False,
        rank: int | None = None,
        rank_ratio: float | None = None,
        reduction: int = 8,
        calibration: bool = True,
        gate_weights: bool = True,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim = dim
        self.num_heads = num_heads
        self.bias = bias
        self.rank = resolve_rank(dim, num_heads, rank, rank_ratio)
        self.gate_weights = _check_flag("gate_weights", gate_weights)
        _check_flag("calibration", calibration)
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.q = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.q_dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=bias)
        self.calibration = ChannelCalibration(dim, reduction) if calibration else None
        self.kv = nn.Conv2d(dim, 2 * self.rank, kernel_size=1, bias=bias)
        self.kv_dwconv = nn.Conv2d(
            2 * self.rank, 2 * self.rank, kernel_size=3, padding=1, groups=2 * self.rank, bias=bias
        )
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, rank={self.rank}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.q_dwconv(self.q(x))
        if self.calibration is None:
            kv = self.kv(x)
        else:
            gate = self.calibration(x.mean(dim=(2, 3)))
            if torch.compiler.is_compiling():
                # Compiled, scaling the activation fuses into the norm before it and keeps the
                # key/value weight constant, so Inductor's freezing can prepack it.
                kv = self.kv(x * gate[:, :, None, None])
            elif self.gate_weights and b == 1:
                # One image: the gated weight is an ordinary 1x1 conv, which keeps the input's
                # memory layout (channels-last after the block's norm) instead of copying it
                # into the B x C x N view the batched product needs (docs/benchmarks.md).
                kv = F.conv2d(x, self.kv.weight * gate.reshape(1, c, 1, 1), self.kv.bias)
            else:
                kv = gated_projection(self.kv.weight.flatten(1), x.flatten(2), gate, self.gate_weights)
                if self.kv.bias is not None:
                    kv = kv + self.kv.bias[:, None]
                kv = kv.reshape(b, 2 * self.rank, h, w)
        k, v = self.kv_dwconv(kv).chunk(2, dim=1)
        q = q.reshape(b, self.num_heads, -1, h * w)
        k = k.reshape(b, self.num_heads, -1, h * w)
        v = v.reshape(b, self.num_heads, -1, h * w)
        out = channel_attention(q, k, v, self.temperature)
        return self.project_out(out.reshape(b, c, h, w))


@register_attention("glmha", "smsa")
class SpectralGLMHA(nn.Module):
    """GLMHA for MST / MST++'s S-MSA: ``forward(x: B x H x W x C, mask=None) -> B x H x W x C``.

    ``to_q`` keeps ``C`` outputs; ``to_k`` and ``to_v`` give ``rank`` channels from the calibrated
    input. The positional branch reads the query projection (the values are short now), or,
    with ``positional="input"``, the block's input itself (docs/ablations.md compares the two).
    With ``mask_guided=True`` (MST) the mask-guided map weights the input of the value
    projection: ``V = W_v (g * X * M)``. Other options as :class:`GLMHA`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dim_head: int,
        mask_guided: bool = False,
        bias: bool = False,
        rank: int | None = None,
        rank_ratio: float | None = None,
        reduction: int = 8,
        calibration: bool = True,
        gate_weights: bool = True,
        positional: str = "query",
    ):
        super().__init__()
        if positional not in ("query", "input"):
            raise ValueError(f"positional must be 'query' or 'input', got {positional!r}")
        self.positional = positional
        if num_heads * dim_head != dim:
            raise ValueError(
                f"GLMHA's S-MSA needs num_heads * dim_head == dim (its positional branch reads the "
                f"query projection), got {num_heads} * {dim_head} != {dim}"
            )
        self.dim = dim
        self.num_heads = num_heads
        self.dim_head = dim_head
        self.mask_guided = mask_guided
        self.rank = resolve_rank(dim, num_heads, rank, rank_ratio)
        self.gate_weights = _check_flag("gate_weights", gate_weights)
        _check_flag("calibration", calibration)
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(dim, self.rank, bias=bias)
        self.to_v = nn.Linear(dim, self.rank, bias=bias)
        self.rescale = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.proj = nn.Linear(dim, dim, bias=True)
        self.pos_emb = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False),
            nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False),
        )
        self.calibration = ChannelCalibration(dim, reduction) if calibration else None
        if mask_guided:
            self.mm = MaskGuidedMechanism(dim, downsample=max(1, dim // dim_head))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, rank={self.rank}, mask_guided={self.mask_guided}"

    def _project(self, layer: nn.Linear, x: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        out = gated_projection(layer.weight, x, gate, self.gate_weights)  # B x rank x N
        return out if layer.bias is None else out + layer.bias[:, None]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        q_inp = self.to_q(tokens)
        channels_first = tokens.transpose(1, 2)  # B x C x N
        gate = None if self.calibration is None else self.calibration(tokens.mean(dim=1))
        k = self._project(self.to_k, channels_first, gate)
        value_input = channels_first
        if self.mask_guided:
            if mask is None:
                raise ValueError("this S-MSA is mask-guided (MST): pass the shifted mask")
            weights = self.mm(mask.permute(0, 3, 1, 2), width=w)  # B x C x H x W
            value_input = channels_first * weights.reshape(weights.shape[0], c, h * w)
        v = self._project(self.to_v, value_input, gate)

        q = q_inp.reshape(b, h * w, self.num_heads, -1).permute(0, 2, 3, 1)
        k = k.reshape(b, self.num_heads, -1, h * w)
        v = v.reshape(b, self.num_heads, -1, h * w)
        out = channel_attention(q, k, v, self.rescale)  # B x heads x d x N
        out_c = self.proj(out.permute(0, 3, 1, 2).reshape(b, h * w, c)).view(b, h, w, c)
        positional_input = q_inp if self.positional == "query" else tokens
        out_p = self.pos_emb(positional_input.reshape(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return out_c + out_p
