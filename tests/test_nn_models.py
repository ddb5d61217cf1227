"""torchmali.nn: ODEBlock, vector fields, ODEResNet, LatentODE, CNF."""

from __future__ import annotations

import math

import pytest
import torch

from torchmali.gradients import names, resolve
from torchmali.nn import CNF, ConvODEFunc, LatentODE, MLPODEFunc, ODEBlock, ODEResNet
from torchmali.solvers import ALF

FIXED = {"method": "alf", "options": {"step_size": 0.25}}
EXACT_GRADIENTS = tuple(
    g for g in names(exact=True, memory_efficient=True) if resolve(g).accepts(ALF)
)


class Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(-0.5, dtype=torch.float64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.a * y


def test_odeblock_final_state_trajectory_and_stats() -> None:
    block = ODEBlock(Linear(), method="rk4", options={"step_size": 0.05})
    y0 = torch.ones(3, dtype=torch.float64)
    y1 = block(y0)
    assert torch.allclose(y1, y0 * math.exp(-0.5), rtol=1e-6)
    assert block.last_stats.nfe_forward > 0
    ys = block(y0, t=torch.linspace(0, 1, 5, dtype=torch.float64))
    assert ys.shape == (5, 3)
    block.stats_log = []
    block(y0)
    block(y0)
    assert len(block.stats_log) == 2


def test_odeblock_defaults_and_errors() -> None:
    assert ODEBlock(Linear(), gradient="mali").method == "alf"
    assert ODEBlock(Linear()).method is None
    with pytest.raises(ValueError, match="at least two time points"):
        ODEBlock(Linear(), t=(0.0,))
    with pytest.raises(ValueError, match="activation"):
        MLPODEFunc(2, activation="swish")
    with pytest.raises(ValueError, match="norm"):
        ConvODEFunc(4, norm="batch")


def test_fields_shapes() -> None:
    t = torch.tensor(0.3)
    assert ConvODEFunc(8)(t, torch.randn(2, 8, 5, 5)).shape == (2, 8, 5, 5)
    assert MLPODEFunc(3, 16)(t, torch.randn(4, 3)).shape == (4, 3)


def test_oderesnet_presets() -> None:
    small = ODEResNet.small(width=8, **FIXED)
    assert small(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert len(small.ode_blocks) == 2
    big = ODEResNet.resnet18(width=4, **FIXED)
    assert big(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert len(big.ode_blocks) == 4


def _grads(model: torch.nn.Module, loss_fn) -> list[torch.Tensor]:
    model.zero_grad()
    loss_fn(model).backward()
    return [p.grad.clone() for p in model.parameters()]


def test_oderesnet_exact_gradients_match_direct() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1])
    model = ODEResNet.small(width=4, method="alf", options={"step_size": 0.5}).double()

    def loss(m: torch.nn.Module) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(m(x), y)

    ref = _grads(model, loss)
    for gradient in EXACT_GRADIENTS:
        for b in model.ode_blocks:
            b.gradient = gradient
        for g, r in zip(_grads(model, loss), ref, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10, msg=gradient)


@pytest.mark.parametrize("encoder", ["gru", "odernn"])
def test_latent_ode_loss_backward_predict(encoder: str) -> None:
    torch.manual_seed(0)
    model = LatentODE(
        2,
        latent_dim=3,
        rec_hidden=8,
        ode_hidden=8,
        dec_hidden=8,
        encoder=encoder,
        method="alf",
        options={"step_size": 0.1},
    )
    t = torch.linspace(0, 1, 12)
    x = torch.randn(5, 12, 2)
    mask = (torch.rand(5, 12, 2) < 0.5).float()
    out = model(t, x, mask)
    assert out.pred.shape == (5, 12, 2) and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.dynamics.parameters())
    pred = model.predict(t, x, mask, torch.linspace(0, 2, 7))
    assert pred.shape == (5, 7, 2)
    with pytest.raises(ValueError, match="encoder"):
        LatentODE(2, encoder="lstm")


def test_latent_ode_mali_matches_direct() -> None:
    torch.manual_seed(1)
    model = LatentODE(
        2,
        latent_dim=3,
        rec_hidden=8,
        ode_hidden=8,
        dec_hidden=8,
        method="alf",
        options={"step_size": 0.1},
    ).double()
    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    x = torch.randn(3, 9, 2, dtype=torch.float64)
    mask = torch.ones_like(x)

    def loss(m: torch.nn.Module) -> torch.Tensor:
        return m(t, x, mask, sample=False).loss

    ref = _grads(model, loss)
    model.dynamics.gradient = "mali"
    for g, r in zip(_grads(model, loss), ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-7, atol=1e-9)


def test_cnf_density_normalises_and_samples() -> None:
    """The exact-trace density of a random CNF integrates to one over the plane."""
    torch.manual_seed(0)
    cnf = CNF(2, hidden=8, method="rk4", options={"step_size": 0.25}).double().eval()
    g = torch.linspace(-6, 6, 61, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = cnf.log_prob(grid).exp().sum() * (g[1] - g[0]) ** 2
    assert abs(mass.item() - 1.0) < 2e-3
    assert cnf.sample(7).shape == (7, 2)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_cnf_hutchinson_is_unbiased(noise: str) -> None:
    torch.manual_seed(0)
    cnf = CNF(3, hidden=16, noise=noise, method="rk4", options={"step_size": 0.25}).double()
    x = torch.randn(1, 3, dtype=torch.float64).expand(1000, 3)
    with torch.no_grad():
        exact = cnf.log_prob(x[:1], exact=True)
        estimate = cnf.log_prob(x, exact=False)
    stderr = estimate.std() / math.sqrt(len(estimate))
    assert abs(estimate.mean() - exact[0]) < 4 * stderr + 1e-6


def test_cnf_regularisers_and_mali_gradient() -> None:
    torch.manual_seed(0)
    cnf = CNF(2, hidden=8, kinetic=0.1, jacobian=0.1, **FIXED).double()
    x = torch.randn(16, 2, dtype=torch.float64)
    out = cnf(x)
    assert (out.kinetic > 0).all() and (out.jacobian > 0).all()

    def loss(m: torch.nn.Module) -> torch.Tensor:
        torch.manual_seed(3)  # the same Hutchinson noise for both gradient methods
        return m.loss(x)

    ref = _grads(cnf, loss)
    cnf.blocks[0].gradient = "mali"
    for g, r in zip(_grads(cnf, loss), ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="trace"):
        CNF(2, trace="brute")
