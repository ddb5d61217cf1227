"""``torchmali train image``: ODE-ResNet classification of digits (default) or CIFAR-10."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from torchmali.experiments import data
from torchmali.experiments._train_common import Task
from torchmali.experiments.distributed import DistEnv
from torchmali.nn import ODEResNet

__all__ = ["DEFAULTS", "QUICK", "ImageTask", "add_arguments", "preset", "specific_defaults"]

DEFAULTS = {
    "epochs": 15,
    "batch_size": 64,
    "lr": 3e-3,
    "method": "alf",
    "step_size": 0.25,
    "rtol": 1e-3,
    "atol": 1e-4,
    "width": 32,
    "augment": True,
}
QUICK = {
    "epochs": 3,
    "batch_size": 64,
    "lr": 3e-3,
    "method": "alf",
    "step_size": 0.25,
    "rtol": 1e-2,
    "atol": 1e-3,
    "width": 8,
    "limit": 600,
    "augment": False,
}


def preset(args: argparse.Namespace) -> str:
    """The ODE-ResNet preset: ``--model``, or ``small`` for digits and ``resnet18`` for CIFAR-10."""
    if args.model != "auto":
        return args.model
    return "small" if args.data is None else "resnet18"


def specific_defaults(args: argparse.Namespace) -> dict:
    """Defaults of the preset chosen: the ODE-ResNet18 preset is 64 channels wide."""
    return {"width": 64} if preset(args) == "resnet18" else {}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The image task's own options."""
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="CIFAR-10 directory (python pickle batches); default: sklearn digits",
    )
    p.add_argument(
        "--model",
        choices=("auto", "small", "resnet18"),
        default="auto",
        help="ODE-ResNet preset (auto: small for digits, resnet18 for CIFAR-10)",
    )
    p.add_argument(
        "--width",
        type=int,
        default=None,
        help="channels of the first stage (default 32 small / 64 resnet18; quick 8)",
    )
    p.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="training-time augmentation: random shifts of up to 1 pixel (digits) or 4-pixel "
        "crops and horizontal flips (CIFAR-10), drawn per (seed, epoch, example) so that any "
        "number of processes and a resumed run see the same; default on (off with --quick)",
    )


class ImageTask(Task):
    """Image classification with :class:`torchmali.nn.ODEResNet`; metric: test accuracy."""

    name = "image"
    metric = "test_accuracy"
    higher_is_better = True

    def __init__(self, args: argparse.Namespace, env: DistEnv) -> None:
        super().__init__(args, env)
        if args.data is None:
            xtr, ytr, xte, yte = data.load_digits_split()
            self.dataset = "digits"
        else:
            xtr, ytr, xte, yte = data.load_cifar10(args.data)
            self.dataset = "cifar10"
        if args.limit:
            xtr, ytr = xtr[: args.limit], ytr[: args.limit]
            xte, yte = xte[: max(args.limit // 4, 1)], yte[: max(args.limit // 4, 1)]
        dev = env.device
        self.xtr, self.ytr, self.xte, self.yte = xtr.to(dev), ytr.to(dev), xte.to(dev), yte.to(dev)
        self._draws_epoch: int | None = None  # the epoch of the augmentation table below
        self._draws_table = torch.empty(0, 3)

    def build(self) -> nn.Module:
        a = self.args
        ode = self.ode_kwargs()
        in_ch = self.xtr.shape[1]
        if preset(a) == "small":
            return ODEResNet.small(10, in_ch, width=a.width, **ode)
        return ODEResNet.resnet18(10, in_ch, width=a.width, **ode)

    def num_train(self) -> int:
        return len(self.xtr)

    def _augment(self, x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Translate each image of ``x`` (digits: up to 1 pixel, zero fill; CIFAR-10: up to 4
        pixels, reflected, then a horizontal flip) by its row of ``draws`` (``(n, 3)`` uniform
        numbers in ``[0, 1)``: row shift, column shift, flip)."""
        if self.dataset == "cifar10":
            pad, mode = 4, "reflect"
            flip = draws[:, 2] < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        else:
            pad, mode = 1, "constant"
        n, c, h, w = x.shape
        padded = F.pad(x, (pad, pad, pad, pad), mode=mode)
        shift = (draws[:, :2] * (2 * pad + 1)).long().clamp_(max=2 * pad).T  # per image
        rows = (shift[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (shift[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, channel, rows, cols]

    def _draws(self, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        """The augmentation's random numbers of examples ``idx`` in ``epoch``: one table per
        epoch from a generator seeded with ``(seed, epoch)``, indexed by example."""
        if self._draws_epoch != epoch:
            gen = torch.Generator().manual_seed(self.args.seed * 1_000_003 + epoch)
            self._draws_table = torch.rand(self.num_train(), 3, generator=gen)
            self._draws_epoch = epoch
        return self._draws_table[idx.cpu()].to(self.xtr.device)

    def batch_loss(self, model: nn.Module, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        x, y = self.xtr[idx], self.ytr[idx]
        if self.args.augment:
            x = self._augment(x, self._draws(idx, epoch))
        return F.cross_entropy(model(x), y)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        correct, loss = 0, 0.0
        for xb, yb in zip(self.xte.split(500), self.yte.split(500), strict=True):
            logits = model(xb)
            loss += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
        n = len(self.yte)
        return {"test_accuracy": correct / n, "test_loss": loss / n}

    def plot(self, model: nn.Module, out: Path) -> list[str]:
        return []
