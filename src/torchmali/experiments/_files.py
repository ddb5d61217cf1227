"""The files of ``torchmali train`` and ``torchmali bench``: an error that names the file and
the fix (exit status 2, one line) instead of a traceback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_KEYS", "output_dir", "read_checkpoint"]

#: what ``torchmali train`` writes into ``OUT/checkpoint.pt``
CHECKPOINT_KEYS = frozenset(
    {"epoch", "model", "optimizer", "scheduler", "rng", "history", "config"}
)


def output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Create the output directory ``path`` (and its parents) and check that it is writable.

    Raises:
        ValueError: ``path`` is an existing file, cannot be created or is not writable (the
            message names the path and the fix).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{option} {path} is an existing file, not a directory: choose another {option} "
            "(a new or an existing directory)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f"cannot create the {option} directory {path} ({e.strerror or e}): choose a "
            f"writable {option}"
        ) from e
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"the {option} directory {path} is not writable: choose another {option}")
    return path


def read_checkpoint(path: Path, map_location: Any = None) -> dict[str, Any]:
    """Load ``OUT/checkpoint.pt`` for ``--resume``; a file that cannot be read is left as it is.

    Raises:
        ValueError: the file is corrupt, truncated or not a ``torchmali train`` checkpoint.
    """
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # any failure to unpickle means the file is unusable
        raise ValueError(
            f"cannot read {path} (corrupt or truncated?): delete it or use a fresh --out "
            f"({type(e).__name__})"
        ) from e
    if not isinstance(ckpt, dict) or not CHECKPOINT_KEYS <= set(ckpt):
        raise ValueError(
            f"{path} is not a torchmali train checkpoint: delete it or use a fresh --out"
        )
    return ckpt
