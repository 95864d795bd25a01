"""The LoRa convolution of AutoLoRa (SPEC 4.3): a conv with a low-rank weight update beside it."""

from __future__ import annotations

import torch
from torch import nn


class LoRaConv2d(nn.Conv2d):
    """``nn.Conv2d`` plus a rank-``r`` update ``delta = (B @ A).view(C_out, C_in, k, k) / r``.

    ``A``: (r*k) x (C_in*k), initialised N(0, 1); ``B``: (C_out*k) x (r*k), initialised to zero,
    so the LoRa branch starts equal to the plain convolution. The state-dict keys of the conv stay
    ``weight`` (and ``bias``); the update adds ``lora_A`` and ``lora_B``.

    ``use_lora`` is set by ``RobustNet.forward`` for the duration of one LoRa-branch call; when it
    is false the module is exactly the wrapped convolution.
    """

    def __init__(self, conv: nn.Conv2d, rank: int) -> None:
        kernel = conv.kernel_size[0]
        if conv.groups != 1 or conv.kernel_size[0] != conv.kernel_size[1]:
            raise ValueError(
                f"LoRa needs a square kernel and groups=1, got kernel {conv.kernel_size} "
                f"and groups {conv.groups}"
            )
        if rank < 1:
            raise ValueError(f"LoRa rank must be >= 1, got {rank}")
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=1,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            self.weight.copy_(conv.weight)
            if conv.bias is not None:
                self.bias.copy_(conv.bias)
        self.rank = rank
        factory = {"device": conv.weight.device, "dtype": conv.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank * kernel, conv.in_channels * kernel, **factory))
        self.lora_B = nn.Parameter(
            torch.zeros(conv.out_channels * kernel, rank * kernel, **factory)
        )
        nn.init.normal_(self.lora_A, mean=0.0, std=1.0)
        self.use_lora = False

    def delta_weight(self) -> torch.Tensor:
        """The low-rank weight update, shaped like ``weight``."""
        return (self.lora_B @ self.lora_A).view(self.weight.shape) / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.use_lora:
            return super().forward(x)
        # `self.weight` is already detached here: RobustNet runs the LoRa branch with theta1
        # swapped for detached copies, so only the update carries gradient.
        return self._conv_forward(x, self.weight + self.delta_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"
