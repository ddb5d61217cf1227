"""``ODEResNet``: ResNet-style stages, each a downsampling block followed by an ODE block."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from torchmali.nn._block import ODEBlock
from torchmali.nn._fields import ConvODEFunc, group_norm

__all__ = ["BasicBlock", "ODEResNet"]


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions, GroupNorm) with a projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = group_norm(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), group_norm(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(h)) + self.shortcut(x))


class ODEResNet(nn.Module):
    """Image classifier: stem, stages of (downsampling block, ODE block), pooling, linear head.

    The first stage keeps the resolution, every later stage halves it. Each ODE block integrates a
    :class:`ConvODEFunc` over ``t = (0, 1)``; the keyword arguments in ``ode`` (``method``,
    ``gradient``, ``rtol``, ``atol``, ``options``) go to every :class:`ODEBlock`.

    Args:
        stages: Channels of each stage.
        in_channels: Channels of the input images.
        num_classes: Number of classes.
        **ode: Arguments of :class:`ODEBlock`.

    Raises:
        ValueError: If ``stages`` is empty.
    """

    def __init__(
        self,
        stages: Sequence[int] = (32, 64),
        in_channels: int = 1,
        num_classes: int = 10,
        **ode: Any,
    ) -> None:
        super().__init__()
        if not stages:
            raise ValueError("stages must list at least one channel count, e.g. (32, 64).")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stages[0], 3, padding=1, bias=False),
            group_norm(stages[0]),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        prev = stages[0]
        for i, c in enumerate(stages):
            layers.append(BasicBlock(prev, c, stride=1 if i == 0 else 2))
            layers.append(ODEBlock(ConvODEFunc(c), **ode))
            prev = c
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(prev, num_classes)

    @classmethod
    def small(
        cls, num_classes: int = 10, in_channels: int = 1, width: int = 32, **ode: Any
    ) -> ODEResNet:
        """Preset for 8x8 images (e.g. scikit-learn's digits): two stages, 8x8 then 4x4."""
        return cls((width, 2 * width), in_channels, num_classes, **ode)

    @classmethod
    def resnet18(
        cls, num_classes: int = 10, in_channels: int = 3, width: int = 64, **ode: Any
    ) -> ODEResNet:
        """ODE-ResNet18 for 32x32 images (CIFAR-10): four stages of ``width * (1, 2, 4, 8)``
        channels, each ResNet18 stage's second residual block replaced by an ODE block."""
        return cls((width, 2 * width, 4 * width, 8 * width), in_channels, num_classes, **ode)

    @property
    def ode_blocks(self) -> list[ODEBlock]:
        """The ODE blocks, in order."""
        return [m for m in self.modules() if isinstance(m, ODEBlock)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for images ``x`` of shape ``[B, C, H, W]``."""
        h = self.stages(self.stem(x))
        return self.head(h.mean(dim=(2, 3)))
