"""Memory: MALI's does not grow with the number of steps, direct backprop's does.

Measured two ways: the solve's own bookkeeping (``SolveStats.memory_bytes``) and, independently,
the peak resident set size of a fresh subprocess running forward + backward.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import torchmali

_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import torch, torchmali
    torch.set_num_threads(1)
    gradient, n_steps = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 512), torch.nn.Tanh(), torch.nn.Linear(512, 64))
    y0 = torch.randn(256, 64, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    opts = {"step_size": 1.0 / n_steps}
    # warm-up with one step: allocator pools, lazy initialisation
    torchmali.odeint(lambda t, y: net(y), y0, t, method="alf", options={"step_size": 1.0},
                     gradient=gradient, params=list(net.parameters())).sum().backward()
    def rss_kb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    before = rss_kb()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak-RSS high-water mark (VmHWM)
    ys = torchmali.odeint(lambda t, y: net(y), y0, t, method="alf", options=opts,
                          gradient=gradient, params=list(net.parameters()))
    ys.sum().backward()
    peak = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    print(json.dumps({"peak_above_baseline_bytes": (peak - before) * 1024}))
    """
)


def peak_rss(gradient: str, n_steps: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, gradient, str(n_steps)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_above_baseline_bytes"]


@pytest.mark.slow
def test_peak_rss_mali_flat_direct_grows():
    state = 256 * 64 * 4  # bytes of one state
    direct = {n: peak_rss("direct", n) for n in (10, 200)}
    mali = {n: peak_rss("mali", n) for n in (10, 200)}
    # direct keeps the graph of every step: >= (input + hidden activations) per step
    assert direct[200] - direct[10] > 150 * (state + 2 * 256 * 512 * 4)
    # MALI keeps O(1) states whatever the number of steps
    assert mali[200] - mali[10] < 0.1 * (direct[200] - direct[10])
    assert mali[200] < 64 * state + 8 * 2**20


@pytest.mark.parametrize("gradient", ["mali", "direct", "checkpoint", "binomial"])
def test_reported_memory(gradient):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    y0 = torch.randn(16, 8, requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    mem = {}
    for n in (10, 1000):
        sol = torchmali.solve(
            lambda t, y: net(y),
            y0,
            t,
            method="alf",
            options={"step_size": 1 / n},
            gradient=gradient,
            params=list(net.parameters()),
        )
        mem[n] = sol.stats.memory_bytes
    state = 16 * 8 * 4
    if gradient in ("mali", "binomial"):
        # O(1) states plus 8 bytes per grid point: within 10% + the step record
        assert mem[1000] - 8 * 1001 <= 1.1 * (mem[10] - 8 * 11)
    else:
        assert mem[1000] > 50 * mem[10] / 2
        assert mem[1000] >= 1000 * state


def test_binomial_reports_the_states_it_can_hold():
    """K slots, but no more states than steps: with K >= N it keeps what checkpointing keeps."""
    y0 = torch.randn(4, 3)
    t = torch.tensor([0.0, 1.0])
    kept = {}
    for gradient in ("checkpoint", torchmali.Binomial(checkpoints=8), torchmali.Binomial(2)):
        sol = torchmali.solve(
            lambda t, y: -y, y0, t, method="alf", options={"step_size": 0.25}, gradient=gradient
        )
        kept[str(gradient)] = sol.stats.memory_bytes
    state = 2 * y0.nbytes  # ALF's (z, v)
    record = 8 * 5  # the five grid times
    assert kept["checkpoint"] == kept[str(torchmali.Binomial(checkpoints=8))] == 4 * state + record
    assert kept[str(torchmali.Binomial(2))] == 2 * state + record
