"""Counting the bytes kept for a backward pass."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def tensor_bytes(tensors: Iterable) -> int:
    """Total bytes of the tensors (``None`` entries ignored; shared storages counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in tensors:
        if t is None:
            continue
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key in seen:
            continue
        seen.add(key)
        total += key[1]
    return total


class SavedTensorBytes:
    """Context manager counting the bytes autograd saves for backward inside it.

    Uses ``torch.autograd.graph.saved_tensors_hooks``; a storage saved by several operations is
    counted once, and storages of leaf tensors the caller holds anyway (parameters, inputs)
    are counted too.
    """

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self.nbytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._seen:
            self._seen.add(ptr)
            self.nbytes += storage.nbytes()
        return t

    def __enter__(self) -> SavedTensorBytes:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t
