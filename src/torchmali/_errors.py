"""Exceptions raised during a solve."""

from __future__ import annotations


class SolverError(RuntimeError):
    """A solve could not finish: step-size underflow, too many steps, or non-finite values.

    Attributes:
        t: the time the solver had reached (in the user's time direction).
        n_steps: steps attempted so far (accepted and rejected).
    """

    def __init__(self, message: str, t: float, n_steps: int) -> None:
        super().__init__(message)
        self.t = t
        self.n_steps = n_steps
