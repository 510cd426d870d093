"""Per-layer GLMHA ranks and key/value tokens chosen from what a trained CSA model does on inputs.

``glmha rank --suggest`` reads each layer's attention spectrum; this module asks a more direct
question of the trained model: how much does its *output* change when one layer keeps only
some of its key/value tokens? Two steps, both measured on a few inputs (no ground truth):

1. **Which tokens.** Per head, tokens are dropped one at a time, always the one whose removal
   changes that head's contribution to the layer's output least (greedy backward elimination
   on ``W_out,head (softmax(L[:, S]) V[S] - softmax(L) V)``, with ``L`` the head's logits). This
   gives one nested order per head, so the kept set for every rank comes from one pass. The
   weight-only choice (:func:`glmha.attention.convert.select_tokens`) looks at the projections
   alone and cannot see which tokens the inputs actually attend to.
2. **How many, per layer.** For each layer and each candidate rank, the model's output error
   with only that layer converted (SVD warm start on the tokens of step 1) and the MACs it
   saves. Errors of different layers are taken to add up, and the ranks that minimise the
   summed error for a required MAC saving are found with a Lagrange multiplier (per layer,
   ``argmin error + lambda * MACs``; ``lambda`` by bisection).

Layers whose output the model is sensitive to keep more tokens; in a small Restormer the
decoder's full-resolution layers matter far more than the latent ones (docs/distillation.md).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..attention.convert import _attention_family, svd_init_
from ..attention.csa import MDTA, SpectralMSA
from ..engine.tasks import RELATIVE_FLOOR
from .profile import profile

CANDIDATE_RATIOS = tuple(k / 16 for k in range(1, 17))


def candidate_ratios(count: int = 16) -> tuple[float, ...]:
    """``count`` evenly spaced rank ratios ``1/count ... 1``: 16 is :data:`CANDIDATE_RATIOS`, fewer a coarser, cheaper search."""
    if count < 1:
        raise ValueError(f"the number of candidate ranks must be a positive integer, got {count}")
    return tuple(k / count for k in range(1, count + 1))


def model_runs(model: nn.Module, ratios: Sequence[float] = CANDIDATE_RATIOS, part: tuple[int, int] = (0, 1)) -> int:
    """How many times :func:`allocate_ranks` runs ``model`` on its inputs (with ``part``: in that share
    of the layers): once per layer and distinct candidate rank, and twice more (the layers' inputs, the reference)."""
    from ..attention.glmha import resolve_rank

    index, count = part
    layers = [model.get_submodule(n) for n in csa_layers(model)[index::count]]
    return 2 + sum(len({resolve_rank(m.dim, m.num_heads, rank_ratio=r) for r in ratios}) for m in layers)


@dataclass
class Allocation:
    """Per-layer ranks and kept tokens, the MAC saving they give and the summed per-layer output error."""

    ranks: dict[str, int]
    tokens: dict[str, torch.Tensor]
    macs_saving: float
    error: float


def squared_error(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (output - reference).square().mean()


def relative_squared_error(output: torch.Tensor, reference: torch.Tensor, floor: float = RELATIVE_FLOOR) -> torch.Tensor:
    """Squared error relative to the reference (floored as the ``relative_l1`` loss): MRAE's weighting."""
    return ((output - reference) / reference.abs().clamp_min(floor)).square().mean()


def csa_layers(model: nn.Module) -> list[str]:
    """Names of the CSA layers (MDTA, S-MSA) of ``model``, the ones this module converts."""
    return [n for n, m in model.named_modules() if type(m) in (MDTA, SpectralMSA)]


def capture_layer_inputs(model: nn.Module, inputs: Sequence[tuple[torch.Tensor, ...]], names: Sequence[str]) -> dict[str, list[tuple]]:
    """The positional arguments every named attention layer receives while ``model`` runs ``inputs``."""
    captured: dict[str, list[tuple]] = {n: [] for n in names}
    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda _m, args, n=n: captured[n].append(args)) for n in names]
    try:
        with torch.no_grad():
            for args in inputs:
                model(*args)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def _head_terms(layer: nn.Module, args: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per head of a CSA layer on ``args``: attention logits ``B x heads x c x c`` (columns = the
    key/value tokens), the values' Gram matrices ``V V^T`` (``B x heads x c x c``) and the output
    weights' ``W^T W`` (``heads x c x c``), in float64."""
    if type(layer) is MDTA:
        x = args[0]
        b, c, h, w = x.shape
        q, k, v = (t.reshape(b, layer.num_heads, -1, h * w) for t in layer.qkv_dwconv(layer.qkv(x)).chunk(3, dim=1))
        rows, cols, scale, out = q, k, layer.temperature, layer.project_out.weight.flatten(1)
    elif type(layer) is SpectralMSA:
        if layer.mask_guided:  # GLMHA weights the value projection's input by the mask, CSA its output: no token-exact match
            raise ValueError("choosing tokens from data covers Restormer's and MST++'s attention, not MST's mask-guided one")
        x = args[0]
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, h * w, layer.num_heads, -1).permute(0, 2, 3, 1)

        # official S-MSA: softmax(K Q^T) V, so to_q gives the key (column) tokens that go with the values
        rows, cols, v = heads(layer.to_k(tokens)), heads(layer.to_q(tokens)), heads(layer.to_v(tokens))
        scale, out = layer.rescale, layer.proj.weight
    else:
        raise ValueError(f"token selection reads CSA layers (MDTA, S-MSA), not {type(layer).__name__}")
    rows = nn.functional.normalize(rows.double(), dim=-1)
    cols = nn.functional.normalize(cols.double(), dim=-1)
    logits = scale.double() * rows @ cols.transpose(-2, -1)
    v = v.double()
    per_head = out.double().reshape(out.shape[0], layer.num_heads, -1).transpose(0, 1)  # heads x C x c
    return logits, v @ v.transpose(-2, -1), per_head.transpose(-2, -1) @ per_head


@torch.no_grad()
def token_orders(layer: nn.Module, captured: Sequence[tuple]) -> list[list[int]]:
    """Per head, the layer's token indices (head-local) from the most to the least needed (see the module doc).

    The change of a head's output term for kept tokens ``S`` is ``W M V`` with the ``c x c`` matrix
    ``M = softmax(L[:, S]) (zero in the dropped columns) - softmax(L)``, so its squared norm is
    ``trace(M (V V^T) M^T W^T W)``: small ``c x c`` products, whatever the image size.
    """
    terms = [_head_terms(layer, args) for args in captured]
    logits = torch.cat([t[0] for t in terms])  # B x heads x c x c
    gram = torch.cat([t[1] for t in terms])
    weights = terms[0][2]
    orders = []
    for head in range(logits.shape[1]):
        head_logits, head_gram, head_weights = logits[:, head], gram[:, head], weights[head]
        full = torch.softmax(head_logits, dim=-1)

        def change(subset: list[int]) -> float:
            reduced = torch.zeros_like(full)
            reduced[..., subset] = torch.softmax(head_logits[..., subset], dim=-1)
            m = reduced - full
            return float(((m @ head_gram @ m.transpose(-2, -1)) * head_weights.transpose(-2, -1)).sum())

        kept = list(range(full.shape[-1]))
        dropped: list[int] = []
        while len(kept) > 1:
            best = min(kept, key=lambda t: (change([s for s in kept if s != t]), t))
            kept.remove(best)
            dropped.append(best)
        orders.append(kept + dropped[::-1])
    return orders


def kept_tokens(orders: list[list[int]], rank: int) -> torch.Tensor:
    """The layer-wide indices of the first ``rank / heads`` tokens of every head's order, sorted."""
    heads = len(orders)
    tokens = len(orders[0])
    per_head = rank // heads
    return torch.tensor(sorted(head * tokens + t for head, order in enumerate(orders) for t in order[:per_head]))


@torch.no_grad()
def allocate_ranks(
    model: nn.Module,
    inputs: Sequence[torch.Tensor | tuple[torch.Tensor, ...]],
    macs_saving: float,
    ratios: Sequence[float] = CANDIDATE_RATIOS,
    distance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    part: tuple[int, int] = (0, 1),
    gather: Callable[[dict], list[dict]] | None = None,
) -> Allocation:
    """Per-layer ranks and tokens for converting the CSA ``model`` to GLMHA with at least ``macs_saving``
    (a share of the model's MACs on ``inputs[0]``) of its MACs saved, at the least output change (module doc).

    ``inputs``: a few of the model's inputs (tensors or tuples of forward arguments). Raises
    if even the lowest candidate ranks cannot save that much. ``distance(output, reference)``
    measures the output change (default: mean squared error; :func:`relative_squared_error`
    suits MRAE-judged models). ``progress(done, total)`` is called after every run of the model
    (:func:`model_runs` counts them), the cost of the choice.

    Several processes (``torchrun``) share the work: with ``part=(index, count)`` this one
    measures every ``count``-th layer from ``index``, and ``gather(measured)`` must return
    every process's measurements (in any order), e.g. through ``all_gather_object``; every
    process then returns the same allocation.
    """
    from ..attention.convert import _block_arguments
    from ..attention.glmha import resolve_rank
    from ..attention.registry import build_attention

    if not 0 < macs_saving < 1:
        raise ValueError(f"macs_saving must be in (0, 1), got {macs_saving}")
    index, count = part
    if not 0 <= index < count:
        raise ValueError(f"part must be (index, count) with 0 <= index < count, got {part}")
    if count > 1 and gather is None:
        raise ValueError("a part of the layers needs gather, to collect the other parts")
    distance = distance or squared_error
    batches = [x if isinstance(x, (tuple, list)) else (x,) for x in inputs]
    if not batches:
        raise ValueError("rank allocation needs at least one input")
    model = model.eval()
    names = csa_layers(model)
    if not names:
        raise ValueError(f"{type(model).__name__} has no CSA layer to convert")
    base_macs = profile(model, *batches[0]).macs
    captured = capture_layer_inputs(model, batches, names)
    # first what each candidate saves (cheap), so an impossible request fails before the forwards
    candidates: dict[str, list[tuple[int, int, nn.Module]]] = {}
    for name in names:
        layer = model.get_submodule(name)
        family = _attention_family(layer)
        layer_macs = profile(layer, *captured[name][0]).macs
        candidates[name] = []
        for rank in sorted({resolve_rank(layer.dim, layer.num_heads, rank_ratio=r) for r in ratios}):
            new = build_attention("glmha", family, **_block_arguments(layer, family), rank=rank).to(next(layer.parameters()))
            candidates[name].append((rank, layer_macs - profile(new, *captured[name][0]).macs, new.eval()))
    target = macs_saving * base_macs
    most = sum(max(saved for _, saved, _ in options) for options in candidates.values())
    if most < target:
        raise ValueError(f"the lowest ranks save {most / base_macs:.1%} of the MACs, less than the {macs_saving:.1%} asked for")
    mine = names[index::count]
    total, done = 2 + sum(len(candidates[n]) for n in mine), 2  # capture_layer_inputs was the first run
    references = [model(*args).double() for args in batches]
    if progress:
        progress(done, total)
    options: dict[str, list[tuple[int, float, int, torch.Tensor]]] = {}
    for name in mine:
        layer = model.get_submodule(name)
        orders = token_orders(layer, captured[name])
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent)
        options[name] = []
        for rank, saved, new in candidates[name]:
            tokens = kept_tokens(orders, rank)
            svd_init_(new, layer, tokens=tokens)
            setattr(holder, child, new)
            try:
                error = sum(float(distance(model(*args).double(), ref)) for args, ref in zip(batches, references)) / len(batches)
            finally:
                setattr(holder, child, layer)
            options[name].append((rank, error, saved, tokens))
            done += 1
            if progress:
                progress(done, total)
    if gather is not None:
        for measured in gather(options):
            options.update(measured)
        if set(options) != set(names):
            raise RuntimeError(f"the processes measured {len(options)} of the {len(names)} layers; give every part to gather")
        options = {n: options[n] for n in names}  # the same order in every process: the same ties broken alike

    def choose(weight: float) -> dict[str, tuple]:
        return {n: min(opts, key=lambda o: (o[1] - weight * o[2], -o[0])) for n, opts in options.items()}

    def saving(choice: dict[str, tuple]) -> float:
        return sum(o[2] for o in choice.values())

    low, high = 0.0, 1e-12
    while saving(choose(high)) < target:
        high *= 4
    for _ in range(100):
        middle = (low + high) / 2
        if saving(choose(middle)) < target:
            low = middle
        else:
            high = middle
    choice = choose(high)
    return Allocation(
        ranks={n: o[0] for n, o in choice.items()},
        tokens={n: o[3] for n, o in choice.items()},
        macs_saving=saving(choice) / base_macs,
        error=sum(o[1] for o in choice.values()),
    )


def convert(model: nn.Module, allocation: Allocation, **attention_kwargs) -> nn.Module:
    """A GLMHA copy of the CSA ``model`` with ``allocation``'s per-layer ranks, warm-started on its tokens."""
    from .eigen import apply_ranks

    # built without a warm start: every layer is initialised on its own tokens just below
    student = apply_ranks(copy.deepcopy(model), allocation.ranks, "glmha", init="random", **attention_kwargs)
    for name, tokens in allocation.tokens.items():
        svd_init_(student.get_submodule(name), model.get_submodule(name), tokens=tokens)
    return student
