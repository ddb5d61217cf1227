"""bfloat16 / float16 states: the answer of every adaptive solver against float64.

``z' = -z``, ``z(0) = 1`` on ``[0, 1]`` (exact ``exp(-1) = 0.367879``), for every adaptive
solver of ``torchmali.SOLVERS``, in bfloat16 and float16, with the state integrated in float32
(as shipped) and, for comparison, in the state's own dtype (``--before``: the design before
issue 11.2, emulated by making the working dtype the state's). Settings:

* ``rtol=1e-2``: a loose tolerance;
* ``rtol=u``: the tightest the dtype accepts (its unit roundoff, rounded up);
* ``max_step=0.005``: 200 small steps, where a low-precision state rounds its updates away;
* ``rtol=1e-7``: torchdiffeq's default tolerances, refused now.

Each cell is the answer, and its relative difference from the float64 answer of the same solve.

    python benchmarks/low_precision.py
"""

from __future__ import annotations

import argparse
import math

import torch

import torchmali
import torchmali._odeint as odeint_module
from torchmali._precision import unit_roundoff, working_dtype

LOW = (torch.bfloat16, torch.float16)


def _settings(dtype: torch.dtype) -> dict[str, dict]:
    u = float(f"{unit_roundoff(dtype):.1g}")
    u = u if u >= unit_roundoff(dtype) else u * 2
    return {
        "rtol=1e-2": {"rtol": 1e-2, "atol": 1e-6},
        f"rtol={u:g}": {"rtol": u, "atol": 1e-6},
        "max_step=0.005": {"rtol": 1e-2, "atol": 1e-6, "options": {"max_step": 0.005}},
        "rtol=1e-7 (default)": {"rtol": 1e-7, "atol": 1e-9},
    }


def _answer(method: str, dtype: torch.dtype, kw: dict) -> str:
    t = torch.tensor([0.0, 1.0])
    ref = torchmali.odeint(lambda t, y: -y, torch.ones(1, dtype=torch.float64), t.double(),
                           method=method, **kw)  # fmt: skip
    try:
        ys = torchmali.odeint(lambda t, y: -y, torch.ones(1, dtype=dtype), t, method=method,
                              **{**kw, "options": {**kw.get("options", {}), "max_num_steps": 20000}})  # fmt: skip
    except (ValueError, torchmali.SolverError) as e:
        return "refused" if isinstance(e, ValueError) else "SolverError"
    a, r = float(ys[-1]), float(ref[-1])
    return f"{a:.4f} ({abs(a - r) / r:.0e})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--before", action="store_true", help="also the state-in-its-dtype design")
    args = p.parse_args()
    adaptive = sorted(n for n, c in torchmali.SOLVERS.items() if c.adaptive)
    designs = ["float32 state"] + (["state in its dtype (before)"] if args.before else [])
    print(f"z' = -z on [0, 1], exact {math.exp(-1):.6f}; cell: answer (relative difference from "
          "the float64 answer of the same solve)\n")  # fmt: skip
    for design in designs:
        if design != "float32 state":
            odeint_module.working_dtype = lambda d: d
            odeint_module.check_tolerances = lambda *a: None  # the old code had no refusal
        for dtype in LOW:
            settings = _settings(dtype)
            print(f"### {str(dtype)[6:]}, {design}\n")
            print("| solver | " + " | ".join(settings) + " |")
            print("|---" * (len(settings) + 1) + "|")
            for method in adaptive:
                row = [_answer(method, dtype, kw) for kw in settings.values()]
                print(f"| {method} | " + " | ".join(row) + " |")
            print()
        odeint_module.working_dtype = working_dtype


if __name__ == "__main__":
    main()
