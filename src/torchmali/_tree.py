"""Tensor or tuple-of-tensors states <-> one flat tensor, and the wrapped right-hand side."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Structure:
    """The structure of the user's state: one tensor, or a tuple of tensors, real or complex.

    Solvers always see one real tensor: the state itself for a single real tensor (no copy), its
    real view ``torch.view_as_real`` (shape ``(*shape, 2)``, no copy) for a single complex tensor,
    or the concatenation of the flattened (real views of the) members of a tuple. 0-dim tensors
    and tuples of 0-dim tensors are states like any other.
    """

    is_tuple: bool
    shapes: tuple[torch.Size, ...]
    dtype: torch.dtype
    device: torch.device

    @staticmethod
    def of(y0: torch.Tensor | Sequence[torch.Tensor]) -> Structure:
        if isinstance(y0, torch.Tensor):
            return Structure(False, (y0.shape,), y0.dtype, y0.device)
        if not isinstance(y0, tuple | list) or len(y0) == 0:
            raise TypeError(
                f"y0 must be a tensor or a non-empty tuple of tensors, got {type(y0).__name__}"
            )
        for i, y in enumerate(y0):
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"y0[{i}] must be a tensor, got {type(y).__name__}")
        dtypes = {y.dtype for y in y0}
        devices = {y.device for y in y0}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                "all tensors of a tuple state must share one dtype and device; got "
                f"dtypes {sorted(map(str, dtypes))} and devices {sorted(map(str, devices))}: "
                "convert them with .to(...) first"
            )
        return Structure(True, tuple(y.shape for y in y0), y0[0].dtype, y0[0].device)

    @property
    def is_complex(self) -> bool:
        return self.dtype.is_complex

    @property
    def real_dtype(self) -> torch.dtype:
        """The dtype the solvers work in (and of the time passed to ``func``)."""
        return self.dtype.to_real() if self.dtype.is_complex else self.dtype

    @property
    def numels(self) -> tuple[int, ...]:
        """Elements of each member in the solvers' (real) layout."""
        per = 2 if self.is_complex else 1
        return tuple(per * s.numel() for s in self.shapes)

    def flatten(self, ys: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        if not self.is_tuple:
            return torch.view_as_real(ys) if self.is_complex else ys
        if self.is_complex:
            return torch.cat([torch.view_as_real(y).reshape(-1) for y in ys])
        return torch.cat([y.reshape(-1) for y in ys])

    def unflatten(self, y: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Inverse of ``flatten``; leading dimensions (e.g. stacked times ``[T, n]``) are kept."""
        if not self.is_tuple:
            return _as_complex(y) if self.is_complex else y
        parts = torch.split(y, self.numels, dim=-1)
        lead = tuple(y.shape[:-1])
        if self.is_complex:
            return tuple(
                _as_complex(p.reshape((*lead, *s, 2)))
                for p, s in zip(parts, self.shapes, strict=True)
            )
        return tuple(p.reshape((*lead, *s)) for p, s in zip(parts, self.shapes, strict=True))

    def members(self, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The flat (real) pieces of ``y`` belonging to each member (one piece for a tensor)."""
        if not self.is_tuple:
            return (y,)
        return torch.split(y, self.numels, dim=-1)

    def per_tensor(self, value, name: str) -> torch.Tensor | float:
        """Expand a per-tensor tolerance (one number per tuple member) to the flat layout."""
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return float(value)
        values = [float(v) for v in value]
        if not self.is_tuple or len(values) != len(self.shapes):
            raise ValueError(
                f"{name} must be a number, or (for a tuple state) one number per tensor "
                f"({len(self.shapes)} here); got {value!r}"
            )
        if len(set(values)) == 1:
            return values[0]
        return torch.cat(
            [
                torch.full((n,), v, dtype=self.real_dtype, device=self.device)
                for v, n in zip(values, self.numels, strict=True)
            ]
        )


def _as_complex(x: torch.Tensor) -> torch.Tensor:
    """``torch.view_as_complex``, copying first when the layout does not allow a view."""
    try:
        return torch.view_as_complex(x)
    except RuntimeError:
        return torch.view_as_complex(x.contiguous())


def module_of(func: Callable) -> nn.Module | None:
    """The ``nn.Module`` behind ``func``: itself, or the owner of a bound method; else ``None``."""
    module = func if isinstance(func, nn.Module) else getattr(func, "__self__", None)
    return module if isinstance(module, nn.Module) else None


class RHS:
    """The user's ``func`` seen by the solvers: flat state, float time, evaluation counter.

    ``sign = -1`` integrates in reversed time ``s = -t`` (``dy/ds = -func(-s, y)``), so solvers
    always step forward. The output's shape, dtype and structure are checked on every call: the
    check is a few tuple comparisons, and a mismatch is always a user error worth naming.

    Random layers (dropout): when ``seed`` is given, every evaluation runs under a forked RNG
    seeded with it, so a dropout layer draws one mask per solve. The right-hand side is then one
    deterministic function during the whole solve — adaptive step control can converge, and a
    backward pass that recomputes any step (checkpoint, binomial, mali) sees exactly the masks
    the forward pass saw, with no RNG state stored per step. The global RNG stream is left
    untouched by the evaluations.

    Low-precision states (bfloat16, float16): the solver's state and error control stay in
    ``working_dtype`` (float32) while ``func`` runs in the user's dtype: the state is cast to it
    on the way in and the derivative back to ``working_dtype`` on the way out (both casts are
    differentiable).
    """

    #: the dtype of the solver's state when it differs from the user's (see the class docstring)
    working_dtype: torch.dtype | None = None
    #: called as ``probe(evaluate, y)`` instead of the next evaluation, once: the check that
    #: ``params`` cover func's tensors (:class:`torchmali._params.ParamsProbe`)
    probe: Callable | None = None

    def __init__(
        self, func: Callable, structure: Structure, sign: float = 1.0, seed: int | None = None
    ) -> None:
        if not callable(func):
            raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
        self.func = func
        self.structure = structure
        self.sign = sign
        self.nfe = 0
        self.seed = seed

    @property
    def eval_dtype(self) -> torch.dtype:
        """The (real) dtype ``func`` computes in (the user's; the solver's state may be wider)."""
        return self.structure.real_dtype

    def time(self, t: float, perturb: int = 0) -> torch.Tensor:
        """``t`` in the user's time, a 0-dim tensor of the state's real dtype.

        ``perturb = +1`` (``-1``) gives the next (previous) representable time in the solver's
        (increasing) time: torchdiffeq's ``Perturb.NEXT`` (``PREV``).
        """
        st = self.structure
        out = torch.scalar_tensor(self.sign * t, dtype=st.real_dtype, device=st.device)
        if perturb:
            towards = torch.full_like(out, math.inf if perturb * self.sign > 0 else -math.inf)
            out = torch.nextafter(out, towards)
        return out

    def __call__(self, t: float, y: torch.Tensor, perturb: int = 0) -> torch.Tensor:
        """``dy/dt`` at solver time ``t`` (flat).

        ``perturb`` (torchdiffeq's ``Perturb``): ``+1`` evaluates ``func`` one ulp after ``t``,
        ``-1`` one ulp before it, in the solver's (increasing) time and in the state's real
        dtype — the time ``func`` receives. Solvers pass it for stages at the start / end of a
        step (see ``Solver.hints``), so a ``func`` discontinuous at a grid point is evaluated on
        the side of the step; ``func`` itself never receives a ``perturb`` keyword.
        """
        if self.probe is not None:
            probe, self.probe = self.probe, None
            return probe(lambda y_in: self(t, y_in, perturb), y)
        self.nfe += 1
        st = self.structure
        work = self.working_dtype
        if work is not None:
            y = y.to(st.dtype)
        time = self.time(t, perturb)
        if self.seed is None:
            out = self.func(time, st.unflatten(y))
        else:
            devices = [st.device] if st.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices, device_type=st.device.type):
                torch.manual_seed(self.seed)
                out = self.func(time, st.unflatten(y))
        out = self._check(out)
        flat = st.flatten(out)
        if work is not None:
            flat = flat.to(work)
        return -flat if self.sign < 0 else flat

    def _check(self, out):
        st = self.structure
        if st.is_tuple:
            if not isinstance(out, tuple | list) or len(out) != len(st.shapes):
                raise ValueError(
                    f"func must return a tuple of {len(st.shapes)} tensors like y0, got "
                    f"{type(out).__name__}"
                    + (f" of length {len(out)}" if isinstance(out, tuple | list) else "")
                )
            items = out
        else:
            if not isinstance(out, torch.Tensor):
                raise ValueError(f"func must return a tensor like y0, got {type(out).__name__}")
            items = (out,)
        for i, (o, shape) in enumerate(zip(items, st.shapes, strict=True)):
            where = f"func output[{i}]" if st.is_tuple else "func output"
            if not isinstance(o, torch.Tensor):
                raise ValueError(f"{where} must be a tensor, got {type(o).__name__}")
            if o.shape != shape:
                raise ValueError(
                    f"{where} has shape {tuple(o.shape)} but the state has shape {tuple(shape)}: "
                    "func(t, y) must return dy/dt with the same shape as y"
                )
            if o.dtype != st.dtype:
                raise ValueError(
                    f"{where} has dtype {o.dtype} but the state has dtype {st.dtype}: "
                    "cast the parameters (module.to(dtype)) or y0 so they match"
                )
        return out
