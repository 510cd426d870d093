"""Swap the attention of a built model in place: CSA -> GLMHA (or a baseline), fresh or with an SVD warm start.

By default (``init="random"``) the new attentions start as in a newly built model. With
``init="svd"`` a trained CSA model becomes a GLMHA model whose key/value tokens are the CSA
tokens that a truncated SVD of the CSA key/value projections ranks highest (docs/GLMHA.md, section 5), so
it can be fine-tuned instead of trained from scratch; at full rank the converted Restormer
computes what the CSA one does. Details of the warm start: docs/attention.md.
"""
from __future__ import annotations

import json
from typing import Callable

import torch
from torch import nn

from .csa import MDTA, SpectralMSA
from .glmha import GLMHA, SpectralGLMHA
from .registry import FAMILIES, build_attention, get_attention_class, list_attentions

INITS = ("random", "svd")


def _attention_family(module: nn.Module) -> str | None:
    """The family of a registered attention module, or None for any other module."""
    for family in FAMILIES:
        for name in list_attentions(family):
            if type(module) is get_attention_class(name, family):
                return family
    return None


def _block_arguments(module: nn.Module, family: str) -> dict:
    """The arguments a block passes to ``build_attention`` for this module's place."""
    if family == "mdta":
        return {"dim": module.dim, "num_heads": module.num_heads, "bias": module.bias}
    return {
        "dim": module.dim,
        "num_heads": module.num_heads,
        "dim_head": module.dim_head,
        "mask_guided": module.mask_guided,
        "bias": module.to_q.bias is not None,
    }


def layer_initialiser(model: nn.Module, name: str) -> Callable[[nn.Module], None] | None:
    """How ``model`` initialises the layer ``name``: the ``layer_init`` of the nearest module holding it
    that declares one (MST and MST++: truncated-normal linears), or None (PyTorch's defaults, as Restormer)."""
    parts = name.split(".")
    for end in range(len(parts) - 1, -1, -1):
        initialise = getattr(model.get_submodule(".".join(parts[:end])), "layer_init", None)
        if initialise is not None:
            return initialise
    return None


def swap_attention(
    model: nn.Module,
    attention: str,
    init: str = "random",
    layer_init: Callable[[nn.Module], None] | None = None,
    **attention_kwargs,
) -> nn.Module:
    """Replace every attention module of ``model`` (built by this package) with ``attention``.

    Works in place and returns ``model``; all other modules and weights are kept. MST's
    mask-guided mechanism belongs to the block rather than to the attention and is carried
    over. The new attentions are initialised as the model initialises its own layers
    (:func:`layer_initialiser`; ``layer_init`` overrides it), so with ``init="random"`` a
    swapped model starts like one built with that attention;
    ``init="svd"`` (CSA -> GLMHA only) starts them from the CSA weights: queries, output
    projection, temperatures and positional branch copied, keys and values the CSA tokens
    that a truncated SVD of the CSA key/value projections selects (see :func:`svd_init_`).
    ``attention_kwargs`` are the new attention's options (e.g. ``rank_ratio=0.25``).
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if attention not in list_attentions():
        raise ValueError(f"unknown attention {attention!r}; available: {list_attentions()}")
    targets = [
        (name, module, family)
        for name, module in model.named_modules()
        if (family := _attention_family(module)) is not None
    ]
    if not targets:
        raise ValueError(f"{type(model).__name__} has no attention module of this package to swap")

    for name, old, family in targets:
        new = build_attention(attention, family, **_block_arguments(old, family), **attention_kwargs)
        reference = next(old.parameters())
        new = new.to(device=reference.device, dtype=reference.dtype)
        initialise = layer_init or layer_initialiser(model, name)
        if initialise is not None:  # also under the warm start, for what it does not set (the calibration's first layer)
            new.apply(initialise)
        if init == "svd":
            svd_init_(new, old)
        if hasattr(old, "mm") and hasattr(new, "mm"):
            new.mm.load_state_dict(old.mm.state_dict())
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, new)

    for module in model.modules():  # models (and MST++'s stages) record their attention's name
        if isinstance(getattr(module, "attention", None), str):
            module.attention = attention
    spec = getattr(model, "spec", None)
    if spec is not None:  # the build record (glmha.create_model) now names the new attention for every layer
        spec.attention, spec.attention_kwargs, spec.layers = attention, json.loads(json.dumps(attention_kwargs)), {}
    return model


def swap_layer_attentions(model: nn.Module, layers: dict[str, dict], init: str = "random") -> nn.Module:
    """Swap each named attention layer for its own choice, in place: ``{layer name: {"attention": ..., "attention_kwargs": {...}}}``.

    :func:`swap_attention` on the block that holds each layer, so other layers and weights
    are kept (e.g. per-layer GLMHA ranks, :func:`glmha.analysis.eigen.apply_ranks`). The
    model's build record (``model.spec``) keeps the choices, so a saved model rebuilds them.
    """
    found = {name for name, module in model.named_modules() if _attention_family(module) is not None}
    unknown = sorted(set(layers) - found)
    if unknown:
        raise ValueError(f"no attention layer named {unknown[0]!r} in {type(model).__name__}; layers: {sorted(found)}")
    for name, choice in layers.items():
        parent_name = name.rpartition(".")[0]
        if sum(1 for other in found if other.startswith(parent_name + ".") or not parent_name) != 1:
            raise ValueError(f"cannot swap {name!r} alone: its parent module holds several attention layers")
        swap_attention(model.get_submodule(parent_name), choice["attention"], init=init,
                       layer_init=layer_initialiser(model, name), **choice.get("attention_kwargs", {}))
        if isinstance(getattr(model, "attention", None), str):
            model.attention = choice["attention"]
    spec = getattr(model, "spec", None)
    if spec is not None:
        spec.layers.update(json.loads(json.dumps(layers)))
    return model


@torch.no_grad()
def svd_init_(new: nn.Module, old: nn.Module, tokens: torch.Tensor | None = None) -> None:
    """Initialise the GLMHA module ``new`` from the CSA module ``old`` in place.

    Per head, the CSA keys and values are c tokens (rows of ``[W_k W_v]``, key i goes with
    value i); GLMHA keeps ``r/h`` of them, chosen by the truncated SVD of that matrix
    (:func:`select_tokens`): their rows, biases and depth-wise kernels are copied, so key l
    still goes with value l. Tokens are selected rather than mixed because softmax attention
    is not invariant to a rotation of the keys and values: a selection is the identity at full
    rank. The calibration starts neutral (last layer zero: ``g = 1/2`` for every channel,
    compensated by doubling the key/value weights, not the biases, which the gate does not
    scale). So at ``rank == dim`` the converted MDTA layer computes what the CSA layer does;
    S-MSA only in its attention part, as GLMHA's positional branch reads the query
    projection (CSA's reads the values) and MST's mask weights the input of the value
    projection rather than its output.

    ``tokens`` (sorted indices, ``rank / heads`` in each head) replaces the SVD choice, e.g. the
    tokens :func:`glmha.analysis.allocation.token_orders` ranks from the model's inputs.
    """
    if type(old) is MDTA and isinstance(new, GLMHA):  # exact types: the S-MSA baselines derive from SpectralMSA
        dim = old.dim
        w_q, w_k, w_v = old.qkv.weight.split(dim)
        d_q, d_k, d_v = old.qkv_dwconv.weight.split(dim)
        new.q.weight.copy_(w_q)
        new.q_dwconv.weight.copy_(d_q)
        kept = _kept(tokens, w_k.flatten(1), w_v.flatten(1), old.num_heads, new.rank)
        new.kv.weight.copy_(torch.cat([w_k[kept], w_v[kept]]))
        new.kv_dwconv.weight.copy_(torch.cat([d_k[kept], d_v[kept]]))
        if old.bias:
            b_q, b_k, b_v = old.qkv.bias.split(dim)
            dw_q, dw_k, dw_v = old.qkv_dwconv.bias.split(dim)
            new.q.bias.copy_(b_q)
            new.q_dwconv.bias.copy_(dw_q)
            new.kv.bias.copy_(torch.cat([b_k[kept], b_v[kept]]))
            new.kv_dwconv.bias.copy_(torch.cat([dw_k[kept], dw_v[kept]]))
            new.project_out.bias.copy_(old.project_out.bias)
        new.temperature.copy_(old.temperature)
        new.project_out.weight.copy_(old.project_out.weight)
        gated_weights = [new.kv.weight]
    elif type(old) is SpectralMSA and isinstance(new, SpectralGLMHA):
        # The official S-MSA computes softmax(K Q^T) V: its to_k plays the query (row) role
        # and its to_q the key role.
        new.to_q.load_state_dict(old.to_k.state_dict())
        kept = _kept(tokens, old.to_q.weight, old.to_v.weight, old.num_heads, new.rank)
        new.to_k.weight.copy_(old.to_q.weight[kept])
        new.to_v.weight.copy_(old.to_v.weight[kept])
        if old.to_q.bias is not None and new.to_k.bias is not None:
            new.to_k.bias.copy_(old.to_q.bias[kept])
            new.to_v.bias.copy_(old.to_v.bias[kept])
        new.rescale.copy_(old.rescale)
        new.proj.load_state_dict(old.proj.state_dict())
        new.pos_emb.load_state_dict(old.pos_emb.state_dict())
        gated_weights = [new.to_k.weight, new.to_v.weight]
    else:
        raise ValueError(
            f"init='svd' converts CSA to GLMHA; cannot initialise {type(new).__name__} from {type(old).__name__}"
        )

    if new.calibration is not None:
        new.calibration.fc2.weight.zero_()  # g = sigmoid(0) = 1/2 for every channel
        for weight in gated_weights:  # the gate scales the weights only, not the biases
            weight.mul_(2)


def _kept(tokens: torch.Tensor | None, w_k: torch.Tensor, w_v: torch.Tensor, num_heads: int, rank: int) -> torch.Tensor:
    if tokens is None:
        return select_tokens(w_k, w_v, num_heads, rank)
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    per_head = w_k.shape[0] // num_heads
    counts = torch.bincount(tokens // per_head, minlength=num_heads)
    if tokens.numel() != rank or tokens.unique().numel() != rank or not bool((counts == rank // num_heads).all()):
        raise ValueError(f"tokens must be {rank} distinct indices, {rank // num_heads} in each of the {num_heads} heads")
    return tokens.sort().values


def select_tokens(w_k: torch.Tensor, w_v: torch.Tensor, num_heads: int, rank: int) -> torch.Tensor:
    """Indices of the ``rank`` key/value tokens to keep, ``rank / num_heads`` per head.

    ``w_k``, ``w_v``: ``dim x C`` projections (row i is token i; head j owns rows
    ``j*c .. (j+1)*c - 1``). Per head, with ``[W_k W_v] = U S V^T`` the leverage score of
    token i is ``|U_r[i, :]|^2`` for the top ``r = rank / num_heads`` left singular vectors:
    how much of the best rank-r approximation lives in that token (column-subset selection
    by leverage scores). The ``r`` highest-scoring tokens are kept in their original order;
    scores equal to 12 decimals go to the lower index. Returns a sorted ``rank`` long tensor
    (the identity ``0 .. dim-1`` at full rank).
    """
    dim = w_k.shape[0]
    if dim % num_heads or rank % num_heads or not 0 < rank <= dim:
        raise ValueError(
            f"need num_heads ({num_heads}) to divide dim ({dim}) and rank ({rank}), with 0 < rank <= dim"
        )
    tokens, kept = dim // num_heads, rank // num_heads
    key_value = torch.cat([w_k, w_v], dim=1).double()
    selected = []
    for head in range(num_heads):
        rows = key_value[head * tokens : (head + 1) * tokens]
        left = torch.linalg.svd(rows, full_matrices=False).U[:, :kept]
        scores = torch.round(left.square().sum(dim=1), decimals=12)
        order = torch.sort(scores, descending=True, stable=True).indices  # stable: ties by index
        selected.append(order[:kept].sort().values + head * tokens)
    return torch.cat(selected)
