"""What a solve returns: the values, the accepted grid and the statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class SolveStats:
    """Statistics of one solve. Backward-pass fields are filled in when ``.backward()`` runs.

    Attributes:
        method: the solver's name.
        gradient: the gradient method's name.
        nfe_forward: evaluations of ``func`` in the forward pass (initial step selection, rejected
            trial steps and time-gradient evaluations included).
        nfe_backward: evaluations of ``func`` (with graph) in the backward pass of a
            memory-efficient gradient method (0 for ``direct``, whose backward is autograd's).
        n_accepted: accepted steps.
        n_rejected: rejected trial steps.
        memory_bytes: bytes kept for the backward pass: saved activations for ``direct`` (counted
            with ``torch.autograd.graph.saved_tensors_hooks``), stored states and checkpoints for
            the other methods, plus the step record.
        drift: ``mali`` only: the largest relative error, over the segments between stored
            points whose reconstruction the gradient used, of the reconstructed point (``y`` and
            the solver state) against the stored one. Segments recomputed exactly (see
            ``fallback_segments``) do not count: their reconstruction was discarded.
        parasitic: ``mali`` only: the reversible solver's consistency check at the end of the
            solve, or ``None`` for a scheme without one. ALF: ``|v_N − f̂| / |f̂|``, where ``f̂``
            is ``f(t_N, z_N)`` extrapolated from the last two evaluations — the size of ALF's
            parasitic (sign-alternating) mode relative to the derivative, about ``h²`` on healthy
            solves, above 1 when ALF blows up on dissipative dynamics. Two-track schemes
            (reversible Heun, ``reversible_rk``): ``|y_N − ŷ_N| / |y_N|``, the gap between the
            tracks.
        recomputed_steps: steps recomputed without graph in the backward pass: ``binomial``'s
            schedule, or ``mali``'s exact recomputation of drifting segments (0 when none).
        optimal_recomputed_steps: ``binomial`` only: the binomial-checkpointing optimum for this
            number of steps and checkpoints.
        checkpoint_interval: ``mali`` only: the interval ``K`` of the points stored in the
            forward pass (from ``checkpoint_every``, the drift bound and ``memory_budget``), or
            ``None`` when none was stored.
        fallback_segments: ``mali`` only: segments whose drift exceeded ``drift_tol`` and whose
            gradient was therefore recomputed exactly from the stored points (0 on healthy
            solves).
    """

    method: str
    gradient: str
    nfe_forward: int = 0
    nfe_backward: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    memory_bytes: int = 0
    drift: float | None = None
    parasitic: float | None = None
    recomputed_steps: int | None = None
    optimal_recomputed_steps: int | None = None
    checkpoint_interval: int | None = None
    fallback_segments: int | None = None

    def as_dict(self) -> dict:
        """The statistics as a plain dict (JSON-serialisable)."""
        return asdict(self)


@dataclass
class Solution:
    """The result of :func:`torchmali.solve`.

    Attributes:
        ys: the solution at every requested time, stacked along a new leading dimension (a tuple
            for a tuple state); the same as what :func:`torchmali.odeint` returns.
        ts: the accepted step times (float64, in the direction of ``t``), ``ts[0] == t[0]``.
        stats: a :class:`SolveStats`.
        event_t: with ``event_fn=``: the event time (in the dtype of ``t``), else ``None``.
    """

    ys: torch.Tensor | tuple[torch.Tensor, ...]
    ts: torch.Tensor
    stats: SolveStats
    event_t: torch.Tensor | None = None
