"""Model size: parameters and multiply-accumulates, counted by PyTorch's flop counter."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Profile:
    """``macs`` are what the papers call FLOPs; ``flops = 2 * macs``."""

    params: int
    macs: int
    flops: int

    def __str__(self) -> str:
        return f"{self.params / 1e6:.3f} M params, {self.macs / 1e9:.2f} GMACs ({self.flops / 1e9:.2f} GFLOPs)"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def profile(model: nn.Module, *example_inputs: torch.Tensor) -> Profile:
    """Count parameters and the MACs of one forward pass on ``example_inputs``.

    Counted with :class:`torch.utils.flop_counter.FlopCounterMode` (matrix products and
    convolutions; element-wise work such as softmax and norms is not counted, as in the
    papers' tables).
    """
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(*example_inputs)
    finally:
        model.train(was_training)
    flops = int(counter.get_total_flops())
    return Profile(params=count_parameters(model), macs=flops // 2, flops=flops)
