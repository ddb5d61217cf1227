"""Validated solver options (the ``options=`` dict)."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

import torch

DEFAULT_MAX_NUM_STEPS = 100_000


@dataclass(frozen=True)
class Options:
    """Every key accepted in ``options=``.

    Attributes:
        step_size: fixed step size; turns ``"alf"`` into a fixed-step solver. The grid is
            torchdiffeq's: ``t0 + i * step_size`` up to the last output time, the last point
            moved onto it; output times between grid points are interpolated (``interp``), except
            with reversible solvers (``"alf"``), whose grid also lands on every output time.
            Without ``step_size`` (and ``grid_constructor``) a fixed-grid solver steps on ``t``.
        grid_constructor: ``grid_constructor(func, y0, t) -> grid``, a 1-D tensor of grid
            times from ``t[0]`` to ``t[-1]`` (in the direction of ``t``) for a fixed-grid solve;
            exclusive with ``step_size``.
        interp: how a fixed-grid solve computes outputs between grid points: ``"linear"``
            (default) or ``"cubic"`` (Hermite, one extra evaluation of ``func`` per such
            output), as torchdiffeq does.
        first_step: initial step of an adaptive solve (default: Hairer's rule, 2 evaluations).
        max_num_steps: maximum number of steps (accepted + rejected) before a ``SolverError``.
        min_step: smallest step an adaptive solver may take before a ``SolverError``.
        max_step: largest step an adaptive solver may take.
        safety: step-size safety factor (0.9).
        ifactor: largest growth factor of the step size per step (10).
        dfactor: smallest shrink factor of the step size per step (0.2).
        pcoeff, icoeff, dcoeff: PID controller coefficients (0, 1, 0 = integral controller).
        eta: ALF damping η in (0, 1], not 0.5 (default 1).
        step_t: times the grid must step on (e.g. kinks of ``func``): a sequence or a tensor.
        jump_t: times where ``func`` jumps (adaptive solves): the grid steps on them, and after
            each one the derivative is evaluated again just after the jump (``perturb=+1``), as
            torchdiffeq does. ``step_t`` and ``jump_t`` must not share times.
        norm: custom error norm ``norm(scaled_error) -> scalar``, called with the scaled error
            in the structure of ``y0`` (a tensor of its shape, or a tuple); default: RMS over
            all elements for a tensor, the largest RMS of the members for a tuple (torchdiffeq's
            mixed norm).
        dtype: the dtype of time in adaptive solves (torchdiffeq's option): ``torch.float64``
            (default; time is always float64 in torchmali), or a lower precision, in which case
            every step time is rounded to ``promote_types(dtype, state's real dtype)``.
        perturb: on a fixed grid, evaluate the stage at the start of each step just after it and
            stages at its end just before it (one ulp), as torchdiffeq's ``perturb`` option does,
            so that a ``func`` discontinuous at grid points sees the correct side. Adaptive solves
            always evaluate stages at a step's end just before it.
        solver_options: the solver-specific keys (e.g. ``max_order`` for Adams, ``solver`` for
            ``scipy_solver``), validated against the method's ``solver_options`` declaration; see
            each solver's documentation. Pass them at the top level of the ``options`` dict.

    Also accepted, as torchdiffeq 0.2.5 accepts them: ``grid_points`` and ``eps`` (options of
    torchdiffeq < 0.2, replaced by ``step_t``/``jump_t``), ignored with a warning.
    """

    step_size: float | None = None
    first_step: float | None = None
    max_num_steps: int = DEFAULT_MAX_NUM_STEPS
    min_step: float = 0.0
    max_step: float = math.inf
    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    eta: float = 1.0
    step_t: tuple[float, ...] = ()
    norm: Callable[[Any], Any] | None = None
    jump_t: tuple[float, ...] = ()
    grid_constructor: Callable[..., Any] | None = None
    interp: str | None = None
    dtype: torch.dtype = torch.float64
    perturb: bool = False
    solver_options: Mapping[str, Any] = field(default_factory=dict)

    @staticmethod
    def keys() -> list[str]:
        """The keys every method accepts (solver-specific ones come on top)."""
        return [f.name for f in fields(Options) if f.name != "solver_options"]

    @classmethod
    def parse(cls, options: Mapping[str, Any] | None, solver: Any = None) -> Options:
        """Validate a user's options dict (never mutated) into an :class:`Options`.

        Args:
            options: the ``options=`` dict (or an :class:`Options`, returned as is).
            solver: the solver class of the method; its ``solver_options`` declaration adds the
                method's own keys (filled with their defaults when absent).
        """
        specific = dict(getattr(solver, "solver_options", None) or {})
        if options is None:
            options = {}
        if isinstance(options, Options):
            return options
        if not isinstance(options, Mapping):
            raise TypeError(f"options must be a dict, got {type(options).__name__}")
        valid = cls.keys() + sorted(specific)
        unknown = sorted(set(options) - set(valid) - set(_IGNORED))
        if unknown:
            where = f" for method={solver.name!r}" if solver is not None else ""
            raise ValueError(f"unknown option(s) {unknown}; valid options{where} are {valid}")
        ignored = sorted(set(options) & set(_IGNORED))
        if ignored:
            warnings.warn(
                f"options {ignored} are ignored (as torchdiffeq 0.2.5 ignores them): they were "
                "removed in torchdiffeq 0.2.0; use options['step_t'] (times to step on) or "
                "options['jump_t'] (discontinuities of func) instead",
                UserWarning,
                stacklevel=4,
            )
        kw: dict[str, Any] = {}
        own = {name: opt.default for name, opt in specific.items()}
        for key, value in options.items():
            if key in _IGNORED:
                continue
            if key in specific:
                own[key] = specific[key].check(key, value)
                continue
            if value is None and key in _NULLABLE:
                continue
            if key == "perturb":
                if not isinstance(value, bool):
                    raise TypeError(f"options['perturb'] must be True or False, got {value!r}")
                kw[key] = value
            elif key in ("norm", "grid_constructor"):
                if not callable(value):
                    what = "norm(tensor) -> scalar" if key == "norm" else "fn(func, y0, t) -> grid"
                    raise TypeError(f"options[{key!r}] must be a callable {what}")
                kw[key] = value
            elif key in ("step_t", "jump_t"):
                kw[key] = _times(key, value)
            elif key == "interp":
                if value not in ("linear", "cubic"):
                    raise ValueError(
                        f"options['interp'] must be 'linear' or 'cubic', got {value!r}"
                    )
                kw[key] = value
            elif key == "dtype":
                if not isinstance(value, torch.dtype) or not value.is_floating_point:
                    raise TypeError(
                        f"options['dtype'] is the dtype of time: a floating torch.dtype such as "
                        f"torch.float64, got {value!r}"
                    )
                kw[key] = value
            elif key == "max_num_steps":
                number = _number(key, value)
                if not (math.isfinite(number) and number == int(number) and number >= 1):
                    raise ValueError(
                        f"options['max_num_steps'] must be a positive integer, got {value!r}"
                    )
                kw[key] = int(number)
            else:
                kw[key] = _number(key, value)
        opts = cls(**kw, solver_options=MappingProxyType(own))
        opts._check()
        return opts

    def _check(self) -> None:
        if self.step_size is not None and self.grid_constructor is not None:
            raise ValueError(
                "options['step_size'] and options['grid_constructor'] are mutually exclusive: "
                "pass one of them"
            )
        shared = sorted(set(self.step_t) & set(self.jump_t))
        if (
            shared
            or len(set(self.step_t)) != len(self.step_t)
            or len(set(self.jump_t)) != len(self.jump_t)
        ):
            raise ValueError(
                "options['step_t'] and options['jump_t'] must not have any repeated elements "
                f"between them (as in torchdiffeq){f'; shared: {shared[:5]}' if shared else ''}"
            )
        for key in ("step_size", "first_step"):
            v = getattr(self, key)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"options[{key!r}] must be a finite positive number, got {v}")
        if not (self.min_step >= 0 and math.isfinite(self.min_step)):
            raise ValueError(f"options['min_step'] must be finite and >= 0, got {self.min_step}")
        if not self.max_step > self.min_step:
            raise ValueError("options['max_step'] must be larger than options['min_step']")
        if not 0 < self.safety <= 1:
            raise ValueError(f"options['safety'] must be in (0, 1], got {self.safety}")
        if not self.ifactor >= 1:
            raise ValueError(f"options['ifactor'] must be >= 1, got {self.ifactor}")
        if not 0 < self.dfactor <= 1:
            raise ValueError(f"options['dfactor'] must be in (0, 1], got {self.dfactor}")
        for key in ("pcoeff", "icoeff", "dcoeff"):
            if not math.isfinite(getattr(self, key)):
                raise ValueError(f"options[{key!r}] must be finite")
        if not 0 < self.eta <= 1:
            raise ValueError(f"options['eta'] (ALF damping) must be in (0, 1], got {self.eta}")
        if self.eta == 0.5:
            raise ValueError(
                "options['eta'] = 0.5 makes ALF non-invertible (1 - 2*eta = 0); use eta = 1.0 "
                "(default) or a value away from 0.5"
            )


def _number(key: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"options[{key!r}] must be a scalar, got a tensor of shape {tuple(value.shape)}"
            )
        value = value.item()
    if value is None:
        default = getattr(Options(), key, None)
        raise TypeError(
            f"options[{key!r}] must be a number, got None: leave the key out for the default "
            f"({default!r})"
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        got = f"str {value!r}" if isinstance(value, str) else type(value).__name__
        raise TypeError(
            f"options[{key!r}] must be a number, got {got}: pass "
            f"{'an integer' if key == 'max_num_steps' else 'a float'}, e.g. "
            f"options={{{key!r}: {_EXAMPLES.get(key, 0.1)!r}}}"
        )
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"options[{key!r}] is NaN")
    return value


#: torchdiffeq's pre-0.2 options, which torchdiffeq 0.2.5 ignores with a warning.
_IGNORED = ("grid_points", "eps")
#: options whose ``None`` means "the default".
_NULLABLE = ("step_size", "first_step", "norm", "grid_constructor", "interp", "dtype")
_EXAMPLES = {"max_num_steps": 10_000, "safety": 0.9, "ifactor": 10.0, "dfactor": 0.2, "eta": 1.0}


def _times(key: str, value: Any) -> tuple[float, ...]:
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"options[{key!r}] must hold real times, got a {value.dtype} tensor")
        value = value.detach().reshape(-1).tolist()
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            f"options[{key!r}] must be a sequence of times, got {type(value).__name__}: pass "
            f"e.g. options={{{key!r}: [0.5]}} (or a 1-D tensor)"
        )
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(
                f"options[{key!r}][{i}] must be a number (a time), got {type(v).__name__}"
            )
        out.append(float(v))
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"options[{key!r}] must hold finite times")
    return tuple(out)
