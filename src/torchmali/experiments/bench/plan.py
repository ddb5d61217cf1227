"""What the benchmark runs: configurations (:class:`Case`), suites of sections, and the plan.

A *section* is a cross product (workloads x solvers x libraries x gradient methods x step counts or
tolerances x dtypes); a *suite* is a list of sections; the plan is the suite expanded into cases,
with the combinations a library cannot run either dropped (e.g. MALI with a non-reversible solver)
or kept as ``skipped`` with a note (e.g. a peer that is not installed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torchmali.gradients import REGISTRY, names

__all__ = [
    "GRADIENTS",
    "LIBRARIES",
    "SUITES",
    "Case",
    "Section",
    "parse_floats",
    "parse_ints",
    "parse_names",
]

#: torchmali's gradient methods, in the order they are reported (the registry's ``names()``).
GRADIENTS = names()
#: torchmali first, then the peers.
LIBRARIES = ("torchmali", "torchdiffeq", "torchdiffeqpack")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Case:
    """One benchmark configuration, measured in a fresh process.

    Attributes:
        library: ``torchmali``, ``torchdiffeq`` or ``torchdiffeqpack``.
        gradient: the gradient method in torchmali's vocabulary (for the peers: torchdiffeq's
            ``odeint`` is ``direct``, ``odeint_adjoint`` is ``adjoint``; TorchDiffEqPack's
            ``odesolve_adjoint_sym12`` is ``mali`` and ``odesolve_adjoint`` (ACA) is ``checkpoint``).
        method: the solver, by torchmali's name for the same scheme.
        workload: a key of :data:`~torchmali.experiments.bench.workloads.WORKLOADS`.
        dtype: ``float32`` or ``float64``.
        n_steps: steps of the fixed grid, or ``None`` for an adaptive solve.
        rtol: relative tolerance of an adaptive solve (``None`` on a fixed grid).
        atol: absolute tolerance of an adaptive solve.
        device: ``cpu`` or ``cuda``.
        repeats: timed repetitions after the warm-up.
        seed: seeds the workload.
        threads: torch's intra-op threads in the worker (0: torch's default).
    """

    library: str
    gradient: str
    method: str
    workload: str
    dtype: str = "float32"
    n_steps: int | None = None
    rtol: float | None = None
    atol: float | None = None
    device: str = "cpu"
    repeats: int = 3
    seed: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if (self.n_steps is None) == (self.rtol is None):
            raise ValueError("a Case needs exactly one of n_steps (fixed grid) and rtol (adaptive)")

    @property
    def mode(self) -> str:
        """``fixed`` or ``adaptive``."""
        return "fixed" if self.n_steps is not None else "adaptive"

    @property
    def series(self) -> str:
        """The line this case belongs to in the plots, e.g. ``torchmali mali alf``."""
        return f"{self.library} {self.gradient} {self.method}"

    def label(self) -> str:
        """A short unique description for progress bars and errors."""
        size = f"n={self.n_steps}" if self.n_steps is not None else f"rtol={self.rtol:g}"
        return f"{self.workload} {self.series} {size} {self.dtype}"

    def to_dict(self) -> dict:
        """The fields as a dict (the record's first keys)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Section:
    """A cross product of configurations.

    Attributes:
        name: for the report.
        workloads: workload names.
        methods: solver names.
        steps: fixed-grid step counts; empty for an adaptive section.
        rtols: tolerances of an adaptive section (``atol = rtol``); empty for a fixed grid.
        gradients: gradient methods (peers run those they have).
        libraries: libraries.
        dtypes: dtypes.
        repeats: measured calls per case, overriding the command line's (e.g. 1 where only the
            gradient error matters).
    """

    name: str
    workloads: tuple[str, ...]
    methods: tuple[str, ...]
    steps: tuple[int, ...] = ()
    rtols: tuple[float, ...] = ()
    gradients: tuple[str, ...] = GRADIENTS
    libraries: tuple[str, ...] = LIBRARIES
    dtypes: tuple[str, ...] = ("float32",)
    repeats: int | None = None

    def cases(self, **common: Any) -> list[Case]:
        """Every configuration of the section (before any support check).

        Args:
            common: the :class:`Case` fields shared by every case (device, repeats, ...).
        """
        out = []
        for workload in self.workloads:
            for dtype in self.dtypes:
                for method in self.methods:
                    sizes: list[dict] = [{"n_steps": n} for n in self.steps]
                    sizes += [{"rtol": r, "atol": r} for r in self.rtols]
                    for size in sizes:
                        for library in self.libraries:
                            for gradient in self.gradients:
                                out.append(
                                    Case(
                                        library,
                                        gradient,
                                        method,
                                        workload,
                                        dtype,
                                        **size,
                                        **{**common, "repeats": self.repeats or common["repeats"]},
                                    )
                                )
        return out


_EXACT = names(exact=True)  # direct and every exact memory-efficient method
_PEERS_ALF = _EXACT  # with TorchDiffEqPack's MALI
_PEERS_RK = ("direct", "adjoint", "checkpoint")  # the methods torchdiffeq / TorchDiffEqPack have
_ADAPTIVE_RK = tuple(g for g in GRADIENTS if not REGISTRY[g].needs_reversible)
_REVERSIBLE = ("direct", *(g for g in GRADIENTS if REGISTRY[g].needs_reversible))

_F64 = {"gradients": _EXACT, "libraries": ("torchmali",), "dtypes": ("float64",), "repeats": 1}

SUITES: dict[str, tuple[Section, ...]] = {
    "default": (
        Section("ALF grid", ("mlp",), ("alf",), steps=(10, 100, 1000), gradients=_PEERS_ALF),
        Section("Euler grid", ("mlp",), ("euler",), steps=(10, 100), gradients=_PEERS_RK),
        Section("ALF grid", ("mlp-times", "conv"), ("alf",), steps=(10, 100), gradients=_PEERS_ALF),
        Section(
            "Euler grid", ("mlp-times", "conv"), ("euler",), steps=(10, 100), gradients=_PEERS_RK
        ),
        Section("adaptive ALF", ("mlp",), ("alf",), rtols=(1e-2, 1e-4), gradients=_REVERSIBLE),
        Section(
            "adaptive dopri5", ("mlp",), ("dopri5",), rtols=(1e-4, 1e-7), gradients=_ADAPTIVE_RK
        ),
        Section("float64", ("mlp",), ("alf",), steps=(10, 100), **_F64),
    ),
    "quick": (
        Section("ALF grid", ("mlp",), ("alf",), steps=(10, 100), gradients=_PEERS_ALF),
        Section("Euler grid", ("mlp",), ("euler",), steps=(10, 100), gradients=_PEERS_RK),
        Section("ALF grid", ("conv",), ("alf",), steps=(10, 30), gradients=_PEERS_ALF),
        Section("adaptive ALF", ("mlp",), ("alf",), rtols=(1e-3,), gradients=_REVERSIBLE),
        Section("adaptive dopri5", ("mlp",), ("dopri5",), rtols=(1e-6,), gradients=_ADAPTIVE_RK),
        Section("float64", ("mlp",), ("alf",), steps=(100,), **_F64),
    ),
}


def parse_names(text: str, valid: Sequence[str], what: str) -> tuple[str, ...]:
    """Parse a comma-separated list of names, each one of ``valid``.

    Raises:
        ValueError: on an empty list or an unknown name (the message lists the valid ones).
    """
    names = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not names:
        raise ValueError(f"empty list of {what}; valid {what}: {', '.join(valid)}")
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; valid {what}: {', '.join(valid)}")
    return names


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """Parse a comma-separated list of positive integers.

    Raises:
        ValueError: on an empty list or an entry that is not a positive integer.
    """
    try:
        values = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(
            f"{what} must be comma-separated positive integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise ValueError(f"{what} must be comma-separated positive integers, got {text!r}")
    return tuple(sorted(set(values)))


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """Parse a comma-separated list of numbers in (0, 1).

    Raises:
        ValueError: on an empty list or an entry outside (0, 1).
    """
    try:
        values = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values or not all(0.0 < v < 1.0 for v in values):
        raise ValueError(f"{what} must be comma-separated numbers in (0, 1), got {text!r}")
    return tuple(sorted(set(values), reverse=True))
