"""Low-precision states, and the tolerances a dtype can resolve.

bfloat16 and float16 states are integrated in float32: the solver's state, its error estimate
and the step-size control are float32, while ``func`` is evaluated in the user's dtype (the
state is cast to it on the way in, the derivative back to float32 on the way out; see
:class:`torchmali._tree.RHS`). The outputs are cast back to the user's dtype. The answer is then
as accurate as ``func`` evaluated in that dtype allows, and adaptive step control works: in the
user's dtype the error estimate would be rounded to a few bits (a bfloat16 ``z' = -z`` solved
with ``dopri5`` at ``rtol=1e-7`` returned ``0.43`` for ``0.368``, ``alf`` did not move at all,
and float16 divided by an ``atol`` that rounds to 0).
"""

from __future__ import annotations

import math

import torch

#: dtypes integrated in float32 (func still runs in the user's dtype)
LOW_PRECISION = (torch.bfloat16, torch.float16)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the solver's state for a user state of ``dtype``."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the machine epsilon: the largest relative rounding error of ``dtype``."""
    return torch.finfo(dtype).eps / 2


def check_tolerances(
    rtol: float | torch.Tensor, atol: float | torch.Tensor, dtype: torch.dtype, adaptive: bool
) -> None:
    """Refuse tolerances that no solve can meet.

    ``rtol = atol = 0`` (for any tensor of a tuple state) divides every error estimate by 0.
    For adaptive solves of bfloat16/float16 states, a positive ``rtol`` below the unit roundoff
    ``u`` of the state's dtype cannot be met: the answer itself is rounded to ``u`` (and, for a low-precision ``func``, every
    derivative is only that accurate, so the error estimate is noise at that level and the steps
    shrink without end). ``rtol = 0`` (pure absolute control) is allowed with ``atol > 0``.

    Raises:
        ValueError: naming the fix.
    """
    r = rtol if isinstance(rtol, torch.Tensor) else torch.tensor([rtol], dtype=torch.float64)
    a = atol if isinstance(atol, torch.Tensor) else torch.tensor([atol], dtype=torch.float64)
    if bool(((r == 0) & (a == 0)).any()):
        raise ValueError(
            "rtol and atol are both 0: every step's error would be divided by 0; set rtol > 0 "
            "(e.g. rtol=1e-6) or atol > 0"
        )
    if not adaptive or dtype not in LOW_PRECISION:
        # float32/float64: torchdiffeq accepts any rtol, and an atol that dominates makes a tiny
        # rtol harmless; a tolerance the solve cannot meet ends in a SolverError (step underflow)
        return
    u = unit_roundoff(dtype)
    positive = r[r > 0]
    smallest = float(positive.min()) if positive.numel() else math.inf
    if smallest < u:
        work = working_dtype(dtype)
        how = (
            f"or compute in float32 (y0.float() and a float32 func; the solver already "
            f"integrates {_name(dtype)} states in {_name(work)}, but func's {_name(dtype)} "
            "derivatives limit the accuracy)"
        )
        raise ValueError(
            f"rtol={smallest:.3g} is below the resolution of {_name(dtype)} (unit roundoff "
            f"{u:.3g}): a {_name(dtype)} answer cannot meet it. Use rtol >= {_round_up(u)}, "
            f"rtol=0 with atol > 0 for pure absolute error control, {how}"
        )


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _round_up(u: float) -> str:
    """A short decimal at least ``u`` (e.g. ``0.0039`` -> ``0.004``)."""
    digits = -math.floor(math.log10(u))
    return f"{math.ceil(u * 10**digits) / 10**digits:.{max(digits, 0)}g}"
