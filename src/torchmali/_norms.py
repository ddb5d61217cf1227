"""Error norms in the user's structure, as torchdiffeq defines them.

torchdiffeq measures the scaled error ``e / (atol + rtol * max(|y0|, |y1|))`` with:

* a tensor state: the RMS over all elements (complex elements by their modulus);
* a tuple state: the *mixed* norm, the largest of the members' RMS norms (so a small member is
  controlled as tightly as a large one);
* ``options["norm"]``: the user's function, called with the scaled error in the user's
  structure (a tensor of the state's shape, ``()`` for a scalar, or a tuple of such tensors;
  complex for a complex state).

Solvers work on one flat real tensor (see :class:`torchmali._tree.Structure`); the functions
here translate between the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._tree import Structure
from .step_size import Tolerance, rms_norm

Norm = Callable[[torch.Tensor], torch.Tensor | float]

_SQRT2 = math.sqrt(2.0)


def state_norm(structure: Structure, user_norm: Callable | None) -> Norm:
    """The norm of a flat scaled error: the user's (on the user's structure) or the default."""
    if user_norm is not None:
        return lambda x: user_norm(structure.unflatten(x))
    if structure.is_complex:
        # |z|^2 = re^2 + im^2: the RMS over complex elements is sqrt(2) times the RMS over the
        # real view's elements.
        if not structure.is_tuple:
            return lambda x: rms_norm(x) * _SQRT2
        return lambda x: _mixed(structure, x) * _SQRT2
    if not structure.is_tuple or len(structure.shapes) == 1:
        return rms_norm
    return lambda x: _mixed(structure, x)


def _mixed(structure: Structure, x: torch.Tensor) -> torch.Tensor:
    """torchdiffeq's ``_mixed_norm``: the largest RMS norm of the tuple's members."""
    return torch.stack([rms_norm(p) for p in structure.members(x)]).max()


@dataclass
class ComplexTolerance(Tolerance):
    """Error scaling of a complex state seen through its real view.

    ``|y|`` is the modulus of each complex element (applied to both its real and imaginary
    parts), as torchdiffeq computes it on the complex tensor.
    """

    def scale(self, y0: torch.Tensor, y1: torch.Tensor | None = None) -> torch.Tensor:
        mag = _modulus(y0) if y1 is None else torch.maximum(_modulus(y0), _modulus(y1))
        return mag * self.rtol + self.atol


def _modulus(y: torch.Tensor) -> torch.Tensor:
    """``|z|`` of each (re, im) pair of the flat real layout, repeated for both parts."""
    pairs = y.reshape(*y.shape[:-1], -1, 2)
    mod = torch.linalg.vector_norm(pairs, dim=-1, keepdim=True).expand_as(pairs)
    return mod.reshape(y.shape)


def make_tolerance(structure: Structure, rtol, atol, user_norm: Callable | None) -> Tolerance:
    """The :class:`Tolerance` of a solve with this state structure and options' ``norm``."""
    norm = state_norm(structure, user_norm)
    cls = ComplexTolerance if structure.is_complex else Tolerance
    return cls(rtol=rtol, atol=atol, norm=norm)
