"""Dual batch normalisation of TWINS (SPEC 4.2): an adaptive and a fixed copy of every BN."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

BN_MODES = ("adaptive", "fixed", "mix")


class FixedStatsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its stored running statistics and never updates them.

    Its affine ``weight``/``bias`` stay trainable. Buffers and keys are those of ``nn.BatchNorm2d``
    so a checkpoint's BN entries load into it unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=False,
            momentum=0.0,
            eps=self.eps,
        )


class DualBatchNorm2d(nn.Module):
    """Two BN copies sharing nothing: ``adaptive`` (ordinary BN) and ``fixed``.

    ``mode`` is set by ``RobustNet.forward`` for one call: ``"adaptive"`` (default, also used in
    eval mode and by attacks), ``"fixed"``, or ``"mix"``: rows ``[0, B//2)`` go through the fixed
    copy, rows ``[B//2, B)`` through the adaptive copy.
    """

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.adaptive = bn
        self.fixed = FixedStatsBatchNorm2d(
            bn.num_features,
            eps=bn.eps,
            momentum=bn.momentum,
            affine=True,
            track_running_stats=True,
            device=bn.weight.device,
            dtype=bn.weight.dtype,
        )
        self.fixed.load_state_dict(copy.deepcopy(bn.state_dict()))
        self.mode = "adaptive"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "adaptive":
            return self.adaptive(x)
        if self.mode == "fixed":
            return self.fixed(x)
        half = x.shape[0] // 2
        if half == 0:
            return self.adaptive(x)
        return torch.cat([self.fixed(x[:half]), self.adaptive(x[half:])], dim=0)
