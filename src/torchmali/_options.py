"""Validated solver options (the ``options=`` dict)."""

from __future__ import annotations

import math
import numbers
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
        step_size: fixed step size; required by the fixed-grid solvers, and turns ``"alf"`` into a
            fixed-step solver. The grid is ``t0 + i * step_size`` merged with every output time.
        first_step: initial step of an adaptive solve (default: Hairer's rule, 2 evaluations).
        max_num_steps: maximum number of steps (accepted + rejected) before a ``SolverError``.
        min_step: smallest step an adaptive solver may take before a ``SolverError``.
        max_step: largest step an adaptive solver may take.
        safety: step-size safety factor (0.9).
        ifactor: largest growth factor of the step size per step (10).
        dfactor: smallest shrink factor of the step size per step (0.2).
        pcoeff, icoeff, dcoeff: PID controller coefficients (0, 1, 0 = integral controller).
        eta: ALF damping η in (0, 1], not 0.5 (default 1).
        step_t: times the adaptive grid must step on (e.g. discontinuities of ``func``).
        norm: custom error norm ``norm(scaled_error) -> scalar`` (default: RMS over all elements).
        perturb: on a fixed grid, evaluate the stage at the start of each step just after it and
            stages at its end just before it (one ulp), as torchdiffeq's ``perturb`` option does,
            so that a ``func`` discontinuous at grid points sees the correct side. Adaptive solves
            always evaluate stages at a step's end just before it.
        solver_options: the solver-specific keys (e.g. ``max_order`` for Adams, ``solver`` for
            ``scipy_solver``), validated against the method's ``solver_options`` declaration; see
            each solver's documentation. Pass them at the top level of the ``options`` dict.
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
        unknown = sorted(set(options) - set(valid))
        if unknown:
            where = f" for method={solver.name!r}" if solver is not None else ""
            raise ValueError(f"unknown option(s) {unknown}; valid options{where} are {valid}")
        kw: dict[str, Any] = {}
        own = {name: opt.default for name, opt in specific.items()}
        for key, value in options.items():
            if key in specific:
                own[key] = specific[key].check(key, value)
                continue
            if value is None and key in ("step_size", "first_step", "norm"):
                continue
            if key == "perturb":
                if not isinstance(value, bool):
                    raise TypeError(f"options['perturb'] must be True or False, got {value!r}")
                kw[key] = value
            elif key == "norm":
                if not callable(value):
                    raise TypeError("options['norm'] must be a callable norm(tensor) -> scalar")
                kw[key] = value
            elif key == "step_t":
                kw[key] = _times(value)
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


_EXAMPLES = {"max_num_steps": 10_000, "safety": 0.9, "ifactor": 10.0, "dfactor": 0.2, "eta": 1.0}


def _times(value: Any) -> tuple[float, ...]:
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"options['step_t'] must hold real times, got a {value.dtype} tensor")
        value = value.detach().reshape(-1).tolist()
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(
            f"options['step_t'] must be a sequence of times, got {type(value).__name__}: pass "
            "e.g. options={'step_t': [0.5]}"
        )
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(
                f"options['step_t'][{i}] must be a number (a time), got {type(v).__name__}"
            )
        out.append(float(v))
    if not all(math.isfinite(v) for v in out):
        raise ValueError("options['step_t'] must hold finite times")
    return tuple(out)
