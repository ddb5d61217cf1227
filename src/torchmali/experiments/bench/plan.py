"""What the benchmark runs: configurations (:class:`Case`), suites of sections, and the plan.

A *section* is a cross product (workloads x solvers x libraries x gradient methods x step counts or
tolerances x dtypes); a *suite* is a list of sections; the plan is the suite expanded into cases,
with the combinations a library cannot run either dropped (e.g. MALI with a non-reversible solver)
or kept as ``skipped`` with a note (e.g. a peer that is not installed).

The lists of gradient methods and solvers come from the registries when the plan is built
(``torchmali.gradients.names()``, ``GradientMethod.accepts``, ``torchmali.SOLVERS`` with
``reversible=True``), so a method or a reversible solver registered later is benchmarked in every
section it fits, with no change here. A gradient method may also be given with options, as
``name[key=value,...]`` (e.g. ``symplectic[checkpoints=8]`` for ``Symplectic(checkpoints=8)``).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torchmali.gradients import REGISTRY, GradientMethod, names, resolve

__all__ = [
    "GRADIENTS",
    "LIBRARIES",
    "SUITES",
    "VARIANTS",
    "Case",
    "Section",
    "gradient_class",
    "gradient_config",
    "parse_floats",
    "parse_gradients",
    "parse_ints",
    "parse_names",
    "reversible_solvers",
]

#: torchmali's gradient methods when this module was imported, in the order they are reported
#: (the registry's ``names()``); plans call :func:`~torchmali.gradients.names` afresh.
GRADIENTS = names()
#: torchmali first, then the peers.
LIBRARIES = ("torchmali", "torchdiffeq", "torchdiffeqpack")
DTYPES = ("float32", "float64")
#: Configured variants benchmarked beside the registry's defaults (where the class has the option).
VARIANTS = ("symplectic[checkpoints=8]",)


def gradient_config(spec: str) -> GradientMethod:
    """The configuration named by ``spec``: a registered name or alias, optionally with options in
    brackets, ``name[key=value,...]`` (values are Python literals).

    Raises:
        ValueError: an unknown name, an option the method does not have, or a malformed spec.
    """
    name, _, rest = spec.partition("[")
    config = resolve(name.strip())
    if not rest:
        return config
    if not rest.endswith("]"):
        raise ValueError(
            f"gradient {spec!r}: options go in brackets, e.g. symplectic[checkpoints=8]"
        )
    options = {}
    for item in filter(None, (i.strip() for i in rest[:-1].split(","))):
        key, eq, value = item.partition("=")
        try:
            options[key.strip()] = ast.literal_eval(value.strip()) if eq else None
        except (ValueError, SyntaxError):
            raise ValueError(f"gradient {spec!r}: {item!r} is not key=value") from None
    try:
        return dataclasses.replace(config, **options)
    except TypeError as exc:
        valid = [f.name for f in dataclasses.fields(config)]
        raise ValueError(f"gradient {spec!r}: {exc}; {name} has the options {valid}") from None


def gradient_class(spec: str) -> type[GradientMethod] | None:
    """The registered class of a gradient spec (``name`` or ``name[...]``), ``None`` if unknown."""
    return REGISTRY.get(spec.partition("[")[0].strip().lower())


def _valid(spec: str) -> bool:
    try:
        gradient_config(spec)
    except (ValueError, TypeError):
        return False
    return True


def every_gradient(variants: bool = True) -> tuple[str, ...]:
    """Every registered gradient method, then (with ``variants``) the valid :data:`VARIANTS`."""
    return (*names(), *(v for v in VARIANTS if variants and _valid(v)))


def exact_gradients(variants: bool = True) -> tuple[str, ...]:
    """The exact methods (``direct`` and every exact memory-efficient one), then their variants."""
    return tuple(g for g in every_gradient(variants) if gradient_class(g).exact)


def reversible_gradients(variants: bool = True) -> tuple[str, ...]:
    """``direct`` and the methods that need a reversible solver (``mali``)."""
    return ("direct", *(g for g in every_gradient(variants) if gradient_class(g).needs_reversible))


def non_reversible_gradients(variants: bool = True) -> tuple[str, ...]:
    """Every method that works without a reversible solver."""
    return tuple(g for g in every_gradient(variants) if not gradient_class(g).needs_reversible)


def _no_variants(select: Callable[[bool], tuple[str, ...]]) -> Callable[[], tuple[str, ...]]:
    return lambda: select(False)


def parse_gradients(text: str) -> tuple[str, ...]:
    """Parse ``--gradients``: registered names (aliases map to their canonical name) and
    ``name[key=value]`` variants.

    Raises:
        ValueError: an unknown method or a bad variant (the message lists the valid names).
    """
    specs = tuple(dict.fromkeys(s.strip() for s in _split_specs(text) if s.strip()))
    valid = ", ".join(every_gradient())
    if not specs:
        raise ValueError(f"empty list of gradients; valid gradients: {valid}")
    out = []
    for spec in specs:
        cls = gradient_class(spec)
        if cls is None:
            raise ValueError(f"unknown gradients {spec}; valid gradients: {valid}")
        gradient_config(spec)  # raises on bad options
        out.append(cls.name + spec[spec.index("[") :] if "[" in spec else cls.name)
    return tuple(dict.fromkeys(out))


def _split_specs(text: str) -> list[str]:
    """Split at commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def reversible_solvers() -> tuple[str, ...]:
    """The canonical names of the registered reversible solvers (``torchmali.SOLVERS`` with
    ``reversible=True``), in registry order."""
    from torchmali.solvers import SOLVERS

    return tuple(
        dict.fromkeys(
            cls.name
            for cls in SOLVERS.values()
            if cls.reversible and not getattr(cls, "forward_only", False)
        )
    )


Names = tuple[str, ...] | Callable[[], tuple[str, ...]]


def _names(value: Names) -> tuple[str, ...]:
    return value() if callable(value) else tuple(value)


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
        methods: solver names, or a function returning them when the plan is built (e.g.
            :func:`reversible_solvers`).
        steps: fixed-grid step counts; empty for an adaptive section.
        rtols: tolerances of an adaptive section (``atol = rtol``); empty for a fixed grid.
        gradients: gradient methods, or a function returning them when the plan is built (default:
            :func:`every_gradient`); the pairs a method refuses (``GradientMethod.accepts``) and
            the ones a peer does not have are dropped from the plan.
        libraries: libraries.
        dtypes: dtypes.
        repeats: measured calls per case, overriding the command line's (e.g. 1 where only the
            gradient error matters).
    """

    name: str
    workloads: tuple[str, ...]
    methods: Names
    steps: tuple[int, ...] = ()
    rtols: tuple[float, ...] = ()
    gradients: Names = every_gradient
    libraries: tuple[str, ...] = LIBRARIES
    dtypes: tuple[str, ...] = ("float32",)
    repeats: int | None = None

    def cases(self, **common: Any) -> list[Case]:
        """Every configuration of the section (before any support check).

        Args:
            common: the :class:`Case` fields shared by every case (device, repeats, ...).
        """
        out = []
        methods, gradients = _names(self.methods), _names(self.gradients)
        for workload in self.workloads:
            for dtype in self.dtypes:
                for method in methods:
                    sizes: list[dict] = [{"n_steps": n} for n in self.steps]
                    sizes += [{"rtol": r, "atol": r} for r in self.rtols]
                    for size in sizes:
                        for library in self.libraries:
                            for gradient in gradients:
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


def _with(*extra: str) -> Callable[[], tuple[str, ...]]:
    """The reversible solvers, then ``extra`` solvers."""
    return lambda: (*reversible_solvers(), *extra)


_PEERS_RK = ("direct", "adjoint", "checkpoint")  # the methods torchdiffeq / TorchDiffEqPack have
_F64 = {"libraries": ("torchmali",), "dtypes": ("float64",), "repeats": 1}
_RK = "rk4"  # the fixed-grid Runge–Kutta section's solver (torchdiffeq has the same scheme)

_LONG = ("decay", "oscillate")  # the long-horizon workloads: dissipative and oscillatory

SUITES: dict[str, tuple[Section, ...]] = {
    "default": (
        Section(
            "reversible solvers", ("mlp",), reversible_solvers, (10, 100),
            gradients=exact_gradients,
        ),
        Section("long grid", ("mlp",), ("alf",), (1000,), gradients=exact_gradients),
        Section(
            "reversible solvers", ("mlp-times", "conv"), reversible_solvers, (10, 100),
            gradients=reversible_gradients,
        ),
        Section("Runge-Kutta grid", ("mlp", "conv"), (_RK,), (10, 100)),
        Section(
            "Euler grid", ("mlp", "mlp-times", "conv"), ("euler",), (10, 100), gradients=_PEERS_RK
        ),
        Section(
            "adaptive reversible", ("mlp",), reversible_solvers, rtols=(1e-2, 1e-4),
            gradients=reversible_gradients,
        ),
        Section(
            "adaptive dopri5", ("mlp",), ("dopri5",), rtols=(1e-4, 1e-7),
            gradients=non_reversible_gradients,
        ),
        Section(
            "long horizon", _LONG, reversible_solvers, (100,), gradients=reversible_gradients
        ),
        Section("long horizon", _LONG, (_RK,), (100,)),
        Section("long horizon", _LONG, ("dopri5",), rtols=(1e-6,)),
        Section("float64", ("mlp",), _with(_RK), (10, 30), gradients=exact_gradients, **_F64),
    ),
    # Every target of targets.targets can be evaluated from these runs alone.
    "quick": (
        Section(
            "reversible solvers", ("mlp",), reversible_solvers, (10, 30),
            gradients=_no_variants(reversible_gradients),
        ),
        Section(
            "reversible solvers", ("conv",), reversible_solvers, (10,),
            gradients=_no_variants(reversible_gradients),
        ),
        Section(
            "Runge-Kutta grid", ("mlp",), (_RK,), (30,),
            gradients=_no_variants(every_gradient),
        ),
        Section("Euler grid", ("mlp",), ("euler",), (30,), gradients=_PEERS_RK),
        Section(
            "adaptive reversible", ("mlp",), reversible_solvers, rtols=(1e-3,),
            gradients=_no_variants(reversible_gradients),
        ),
        Section(
            "adaptive dopri5", ("mlp",), ("dopri5",), rtols=(1e-4,),
            gradients=_no_variants(non_reversible_gradients),
        ),
        Section(
            "long horizon", ("decay",), reversible_solvers, (30,),
            gradients=_no_variants(reversible_gradients),
        ),
        Section("long horizon", ("decay",), (_RK,), (30,), gradients=_no_variants(every_gradient)),
        Section(
            "float64", ("mlp",), reversible_solvers, (10,),
            gradients=_no_variants(reversible_gradients), **_F64,
        ),
        Section(
            "float64", ("mlp",), (_RK,), (10,), gradients=_no_variants(exact_gradients), **_F64
        ),
    ),
}  # fmt: skip


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
