"""``params=``: the tensors a memory-efficient gradient differentiates, and the check that
``func`` uses no other tensor that requires grad.

Direct backpropagation differentiates whatever ``func`` touches. The memory-efficient methods
(``mali``, ``checkpoint``, ``binomial``, ``adjoint``, ...) run the forward pass without a graph
and differentiate, in their backward pass, only ``y0`` and ``params``: a trainable tensor that
``func`` reaches some other way (a module-level ``net`` used by a lambda, a list ``[W]``, a
nested helper, ``functools.partial(g, A=W)``, a callable object's attribute, a global used by an
``nn.Module``) would silently get no gradient. Guessing from closure cells cannot see most of
these, so the check looks at what ``func`` actually does:

* the first evaluation of ``func`` in a solve (one the solve makes anyway: the solver's initial
  derivative or first stage) is made with autograd enabled, on the state detached and marked as
  requiring grad;
* the graph of its output is walked from the output back to its leaves; the walk stops at the
  state, at every tensor of ``params`` (a leaf's ``AccumulateGrad`` node, or a non-leaf
  parameter's ``(grad_fn, output_nr)`` edge) and at leaves that nothing but the graph references
  (created inside ``func``, e.g. ``t.requires_grad_()`` for a divergence: nothing can train them);
* any other leaf that requires grad is a tensor ``func`` uses that would get no gradient: the
  solve raises a ``ValueError`` naming how many there are, their shapes and the fix.

Cost: the autograd bookkeeping of one evaluation and a walk over its graph, once per solve (no
extra evaluation); the check runs only when autograd is enabled and the gradient method is not
``direct``. ``params=()`` (explicitly empty) says "differentiate none of func's tensors" and
skips the check. The check sees what the first evaluation touches: a ``func`` whose branches
use different tensors at different times needs ``params=`` listing all of them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ._tree import module_of


def resolve_params(func: Callable, params: Any) -> tuple[tuple[torch.Tensor, ...], bool]:
    """Validate ``params=`` and return ``(the tensors to differentiate, check func's tensors)``.

    The second value is ``False`` only for an explicitly empty ``params`` (``params=()``: none
    of func's tensors is differentiated, by request).

    ``None`` means the parameters of an ``nn.Module`` ``func`` (or of the module a bound method
    belongs to), else nothing. Tensors that do not require grad are dropped, duplicates (the
    same tensor twice, which would double its gradient) are kept once.

    Raises:
        TypeError: ``params`` is not an iterable of tensors.
    """
    if params is None:
        module = module_of(func)
        found = () if module is None else tuple(module.parameters())
        return tuple(p for p in found if p.requires_grad), True
    if isinstance(params, torch.Tensor):
        raise TypeError(
            "params must be an iterable of tensors, got a single tensor: pass params=[W] "
            "(a tensor would be iterated row by row)"
        )
    if isinstance(params, str | bytes) or not isinstance(params, Iterable):
        raise TypeError(
            f"params must be an iterable of tensors, got {type(params).__name__}: pass e.g. "
            "params=list(net.parameters()) or params=[W]"
        )
    out: list[torch.Tensor] = []
    seen: set[int] = set()
    given = 0
    for i, p in enumerate(params):
        given += 1
        if not isinstance(p, torch.Tensor):
            raise TypeError(
                f"params[{i}] must be a tensor, got {type(p).__name__}: params lists the "
                "tensors to differentiate, e.g. params=list(net.parameters())"
            )
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return tuple(out), given > 0


class ParamsProbe:
    """Makes one evaluation of ``func`` with graph and checks that ``params`` cover its leaves.

    Installed as ``RHS.probe`` by :func:`torchmali._odeint.solve`: the right-hand side hands its
    next evaluation to the probe (once), which evaluates with autograd enabled, walks the graph
    and returns the output the caller expects (detached when the caller runs without grad).

    Args:
        params: the tensors the gradient method differentiates.
        method: the gradient method's name, for the message.
        module_func: whether ``func`` is an ``nn.Module`` (its parameters are the default).
    """

    def __init__(self, params: tuple[torch.Tensor, ...], method: str, module_func: bool) -> None:
        self.params = params
        self.method = method
        self.module_func = module_func

    def __call__(
        self, evaluate: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor
    ) -> torch.Tensor:
        """Evaluate ``evaluate(y)`` with graph, check its leaves, return what the caller needs."""
        keep_graph = torch.is_grad_enabled() and y.requires_grad
        y_in = y if keep_graph else y.detach().requires_grad_(True)
        with torch.enable_grad():
            out = evaluate(y_in)
        missing = uncovered(out, (y_in, *self.params))
        if missing:
            raise ValueError(self.message(missing))
        return out if keep_graph else out.detach()

    def message(self, missing: list[torch.Size]) -> str:
        shapes = ", ".join(str(tuple(s)) for s in missing[:8]) + (
            ", ..." if len(missing) > 8 else ""
        )
        n = len(missing)
        what = f"{n} tensor{'s' if n > 1 else ''} that require grad"
        where = (
            "and are not among its parameters or params"
            if self.module_func
            else "and are not in params (func is not an nn.Module, so nothing else is known)"
        )
        return (
            f"func uses {what} {where} (shape{'s' if n > 1 else ''} {shapes}); "
            f"gradient={self.method!r} differentiates only y0 and params, so "
            f"{'they' if n > 1 else 'it'} would silently get no gradient. Pass params=[...] — "
            "e.g. params=list(net.parameters()) — or make func an nn.Module that owns them; "
            "call .requires_grad_(False) on tensors that should stay fixed, or solve under "
            "torch.no_grad() when no gradient is needed"
        )


def uncovered(out: Any, covered: Iterable[torch.Tensor]) -> list[torch.Size]:
    """Shapes of the leaves requiring grad that ``out``'s graph reaches other than through
    ``covered`` (leaf tensors, or non-leaf tensors matched by their gradient edge), ignoring
    leaves that only the graph references."""
    leaves = {id(p) for p in covered if p.requires_grad and p.grad_fn is None}
    stops = {(p.grad_fn, p.output_nr) for p in covered if p.grad_fn is not None}
    outs = [o for o in (out if isinstance(out, tuple | list) else (out,)) if o.requires_grad]
    stack: list[tuple[Any, int]] = []
    missing: list[torch.Size] = []
    for o in outs:
        if o.grad_fn is None:  # func returned a leaf itself
            if id(o) not in leaves:
                missing.append(o.shape)
        else:
            stack.append((o.grad_fn, o.output_nr))
    seen: set[Any] = set()
    while stack:
        edge = stack.pop()
        node = edge[0]
        if node is None or node in seen or edge in stops:
            continue
        seen.add(node)
        if type(node) is _ACCUMULATE_GRAD:
            shape = _uncovered_leaf(node, leaves)
            if shape is not None:
                missing.append(shape)
        else:
            stack.extend(node.next_functions)
    return missing


def _accumulate_grad_type() -> type:
    with torch.enable_grad():
        out = torch.zeros(()).requires_grad_(True) * 1.0
    return type(out.grad_fn.next_functions[0][0])


_ACCUMULATE_GRAD = _accumulate_grad_type()


def _uncovered_leaf(node: Any, covered: set[int]) -> torch.Size | None:
    """The shape of the leaf of an ``AccumulateGrad`` node when it is neither ``covered`` nor
    held only by the graph (a leaf created inside ``func``, e.g. ``t.clone().requires_grad_()``,
    which nothing can train); else ``None``. "Held only by the graph" compares the leaf's
    reference count with that of such a leaf, measured once here in the same way."""
    variable = node.variable
    if id(variable) in covered:
        return None
    if sys.getrefcount(variable) <= _only_in_graph():
        return None
    return variable.shape


_FRESH: list[int] = []


def _only_in_graph() -> int:
    if not _FRESH:
        with torch.enable_grad():
            out = torch.zeros(()).requires_grad_(True) * 1.0
        node = out.grad_fn.next_functions[0][0]
        variable = node.variable
        _FRESH.append(sys.getrefcount(variable))
    return _FRESH[0]
