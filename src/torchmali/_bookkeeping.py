"""Evaluations made only for gradient bookkeeping leave no trace.

The time gradient needs ``f(t0, y0)`` and ``f(t_k, y(t_k))`` (see ``_odeint._shift_start`` /
``_shift_output``): evaluations the solve itself does not make. In training mode they would
update BatchNorm running statistics (``num_batches_tracked`` 27 instead of 24 in issue 11.7) and
advance the global random stream (dropout), so a run's state would depend on whether ``t``
requires grad. Under :func:`untouched`, every buffer of every ``nn.Module`` that runs is restored
afterwards, and so is the random state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ._tree import module_of


@contextlib.contextmanager
def untouched(func: Callable, device: torch.device) -> Iterator[None]:
    """Run the block, then restore module buffers and the random state as they were.

    The modules are found where they run: a global forward pre-hook records the buffers of
    every module called in the block (so a lambda calling a module-level ``net`` is covered), and
    the buffers of ``func`` itself when it is a module or a bound method of one.

    Args:
        func: the user's right-hand side.
        device: the state's device (its random generator is restored too when it is CUDA).
    """
    saved: dict[tuple[int, str], tuple[dict[str, Any], str, torch.Tensor, torch.Tensor]] = {}

    def record(module: nn.Module, recurse: bool) -> None:
        for owner in module.modules() if recurse else (module,):
            for name, buf in owner._buffers.items():
                key = (id(owner), name)
                if buf is not None and key not in saved:
                    saved[key] = (owner._buffers, name, buf, buf.detach().clone())

    module = module_of(func)
    if module is not None:
        record(module, recurse=True)
    handle = nn.modules.module.register_module_forward_pre_hook(
        lambda m, args: record(m, recurse=False)
    )
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            yield
    finally:
        handle.remove()
        # ``.data``: restore the values without bumping the version counter, as BatchNorm's own
        # in-place update of its statistics does not: a graph that saved a buffer (BatchNorm's
        # backward keeps its running statistics) stays usable.
        for buffers, name, original, copy in saved.values():
            buffers[name] = original
            original.data.copy_(copy)
