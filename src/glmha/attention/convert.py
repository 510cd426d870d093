"""Swap the attention of a built model: CSA -> GLMHA (or a baseline), with an SVD warm start.

A trained CSA model becomes a GLMHA model whose key/value projections start from a
truncated SVD of the CSA ones (docs/GLMHA.md, section 5), so it can be fine-tuned instead
of trained from scratch. Details of the warm start: docs/attention.md.
"""
from __future__ import annotations

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


def swap_attention(model: nn.Module, attention: str, init: str = "random", **attention_kwargs) -> nn.Module:
    """Replace every attention module of ``model`` (built by this package) with ``attention``.

    Works in place and returns ``model``; all other modules and weights are kept. MST's
    mask-guided mechanism belongs to the block rather than to the attention and is carried
    over. ``init="random"`` gives the new attentions their own initialisation;
    ``init="svd"`` (CSA -> GLMHA only) starts them from the CSA weights: queries, output
    projection, temperatures and positional branch copied, keys and values from a truncated
    SVD of the CSA key/value projections (see :func:`svd_init_`). ``attention_kwargs`` are the
    new attention's options (e.g. ``rank_ratio=0.25``).
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
        if init == "svd":
            svd_init_(new, old)
        if hasattr(old, "mm") and hasattr(new, "mm"):
            new.mm.load_state_dict(old.mm.state_dict())
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, new)

    for module in model.modules():  # models (and MST++'s stages) record their attention's name
        if isinstance(getattr(module, "attention", None), str):
            module.attention = attention
    return model


@torch.no_grad()
def svd_init_(new: nn.Module, old: nn.Module) -> None:
    """Initialise the GLMHA module ``new`` from the CSA module ``old`` in place.

    Per head, the CSA keys and values are c tokens (rows of ``W_k`` and ``W_v``); GLMHA's
    ``r/h`` tokens are their top singular directions: with ``[W_k W_v] = U S V^T``, the new
    projections are ``U_r^T W_k`` and ``U_r^T W_v`` (the same mix of key and value tokens,
    so key l still goes with value l). The depth-wise kernel of a mixed channel is the
    average of the CSA kernels weighted by the squared mixing coefficients. The calibration
    starts neutral (last layer zero: ``g = 1/2`` for every channel, compensated by doubling
    the key/value weights), so at full rank only the token mixing differs from CSA.
    """
    if isinstance(old, MDTA) and isinstance(new, GLMHA):
        dim = old.dim
        w_q, w_k, w_v = old.qkv.weight.flatten(1).split(dim)
        d_q, d_k, d_v = old.qkv_dwconv.weight.split(dim)
        new.q.weight.copy_(w_q.reshape_as(new.q.weight))
        new.q_dwconv.weight.copy_(d_q)
        if old.bias:
            b_q, b_k, b_v = old.qkv.bias.split(dim)
            new.q.bias.copy_(b_q)
            new.q_dwconv.bias.copy_(old.qkv_dwconv.bias[:dim])
            new.project_out.bias.copy_(old.project_out.bias)
        mixing = _token_mixing(w_k, w_v, old.num_heads, new.rank)  # dim x rank, block-diagonal
        new.kv.weight.copy_(torch.cat([mixing.T @ w_k, mixing.T @ w_v]).reshape_as(new.kv.weight))
        weights = mixing.square().T  # rank x dim: squared coefficients, rows sum to 1
        kv_kernel = torch.cat([torch.einsum("rc,c...->r...", weights, d) for d in (d_k, d_v)])
        new.kv_dwconv.weight.copy_(kv_kernel)
        if old.bias:
            new.kv.bias.copy_(torch.cat([mixing.T @ b_k, mixing.T @ b_v]))
            dw_k, dw_v = old.qkv_dwconv.bias[dim:].split(dim)
            new.kv_dwconv.bias.copy_(torch.cat([mixing.T @ dw_k, mixing.T @ dw_v]))
        new.temperature.copy_(old.temperature)
        new.project_out.weight.copy_(old.project_out.weight)
        kv_layer = new.kv
    elif isinstance(old, SpectralMSA) and isinstance(new, SpectralGLMHA):
        # The official S-MSA computes softmax(K Q^T) V: its to_k plays the query (row) role.
        new.to_q.load_state_dict(old.to_k.state_dict())
        mixing = _token_mixing(old.to_q.weight, old.to_v.weight, old.num_heads, new.rank)
        new.to_k.weight.copy_(mixing.T @ old.to_q.weight)
        new.to_v.weight.copy_(mixing.T @ old.to_v.weight)
        if old.to_q.bias is not None and new.to_k.bias is not None:
            new.to_k.bias.copy_(mixing.T @ old.to_q.bias)
            new.to_v.bias.copy_(mixing.T @ old.to_v.bias)
        new.rescale.copy_(old.rescale)
        new.proj.load_state_dict(old.proj.state_dict())
        new.pos_emb.load_state_dict(old.pos_emb.state_dict())
        kv_layer = None
    else:
        raise ValueError(
            f"init='svd' converts CSA to GLMHA; cannot initialise {type(new).__name__} from {type(old).__name__}"
        )

    if new.calibration is not None:
        new.calibration.fc2.weight.zero_()  # g = sigmoid(0) = 1/2 for every channel
        if kv_layer is not None:
            kv_layer.weight.mul_(2)
        else:
            new.to_k.weight.mul_(2)
            new.to_v.weight.mul_(2)


def _token_mixing(w_k: torch.Tensor, w_v: torch.Tensor, num_heads: int, rank: int) -> torch.Tensor:
    """``dim x rank`` block-diagonal matrix: per head, the top left singular vectors of ``[W_k W_v]``."""
    dim = w_k.shape[0]
    tokens, kept = dim // num_heads, rank // num_heads
    mixing = w_k.new_zeros(dim, rank)
    for head in range(num_heads):
        rows = slice(head * tokens, (head + 1) * tokens)
        left, _, _ = torch.linalg.svd(torch.cat([w_k[rows], w_v[rows]], dim=1).double(), full_matrices=False)
        left = left[:, :kept]
        # Singular vectors have arbitrary signs; pick the one whose mixed token leans towards the sum.
        left = left * torch.where(left.sum(dim=0) < 0, -1.0, 1.0)
        mixing[rows, head * kept : (head + 1) * kept] = left.to(mixing.dtype)
    return mixing
