"""User errors raise ``ValueError`` / ``TypeError`` naming the fix; failed solves raise ``SolverError``."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import torchmali


def decay(t, y):
    return -y


@pytest.fixture
def y0(f64):
    return torch.tensor([1.0, 2.0], dtype=f64)


@pytest.fixture
def t(f64):
    return torch.tensor([0.0, 1.0], dtype=f64)


# ---------------------------------------------------------------------------------------------
# Method and options.


def test_unknown_method(y0, t):
    with pytest.raises(ValueError, match=r"unknown method 'rk45'.*dopri5"):
        torchmali.odeint(decay, y0, t, method="rk45")


def test_unknown_option_lists_valid_ones(y0, t):
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['stepsize'\].*'step_size'"):
        torchmali.odeint(decay, y0, t, options={"stepsize": 0.1})


def test_options_must_be_a_mapping(y0, t):
    with pytest.raises(TypeError, match="options must be a dict"):
        torchmali.odeint(decay, y0, t, options=[("step_size", 0.1)])


def test_options_dict_not_mutated(y0, t):
    options = {"step_size": 0.25, "step_t": [0.1], "eta": 1.0}
    before = copy.deepcopy(options)
    torchmali.odeint(decay, y0, t, method="alf", options=options)
    torchmali.odeint(decay, y0, t, method="rk4", options=options | {"eta": 1.0})
    assert options == before
    adaptive = {"first_step": 0.01, "max_step": 0.5, "norm": None}
    before = dict(adaptive)
    torchmali.odeint(decay, y0, t, options=adaptive)
    assert adaptive == before


@pytest.mark.parametrize("bad", [0.0, -0.1, math.inf, math.nan])
def test_step_size_must_be_finite_positive(bad, y0, t):
    with pytest.raises(ValueError, match="step_size"):
        torchmali.odeint(decay, y0, t, method="rk4", options={"step_size": bad})


def test_step_size_must_be_a_number(y0, t):
    with pytest.raises(TypeError, match=r"options\['step_size'\] must be a number"):
        torchmali.odeint(decay, y0, t, method="rk4", options={"step_size": "0.1"})


@pytest.mark.parametrize("eta", [0.5, 0.0, -0.2, 1.2])
def test_eta_out_of_range_or_half(eta, y0, t):
    with pytest.raises(ValueError, match=r"eta"):
        torchmali.odeint(decay, y0, t, method="alf", options={"eta": eta})


def test_eta_half_names_invertibility(y0, t):
    with pytest.raises(ValueError, match="non-invertible"):
        torchmali.odeint(decay, y0, t, method="alf", options={"eta": 0.5})


def test_eta_with_non_alf_method(y0, t):
    with pytest.raises(ValueError, match=r"ALF damping.*no effect with method='dopri5'"):
        torchmali.odeint(decay, y0, t, method="dopri5", options={"eta": 0.9})


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun", "rk4"])
def test_adaptive_only_option_on_the_grid_of_t(method, y0, t):
    """A fixed-grid method without step_size steps on t (torchdiffeq); adaptive options still
    have no effect there and are refused."""
    with pytest.raises(ValueError, match=r"only apply to adaptive solves"):
        torchmali.odeint(decay, y0, t, method=method, options={"first_step": 0.1})


@pytest.mark.parametrize(
    "option", [{"first_step": 0.1}, {"max_step": 0.5}, {"pcoeff": 0.2}, {"norm": max}]
)
def test_adaptive_only_option_with_step_size(option, y0, t):
    with pytest.raises(ValueError, match=r"only apply to adaptive solves"):
        torchmali.odeint(decay, y0, t, method="dopri5", options={"step_size": 0.1, **option})


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"max_num_steps": 0}, "max_num_steps"),
        ({"max_num_steps": 2.5}, "max_num_steps"),
        ({"min_step": -1.0}, "min_step"),
        ({"max_step": 0.0}, "max_step"),
        ({"safety": 1.5}, "safety"),
        ({"ifactor": 0.5}, "ifactor"),
        ({"dfactor": 0.0}, "dfactor"),
        ({"pcoeff": math.inf}, "pcoeff"),
        ({"step_t": [0.5, math.nan]}, "step_t"),
        ({"norm": 3.0}, "norm"),
        ({"first_step": -0.1}, "first_step"),
    ],
)
def test_invalid_option_values(option, match, y0, t):
    with pytest.raises((ValueError, TypeError), match=match):
        torchmali.odeint(decay, y0, t, options=option)


# ---------------------------------------------------------------------------------------------
# Times, states, tolerances, func.


@pytest.mark.parametrize(
    ("times", "match"),
    [
        (torch.zeros(2, 2), "1-D"),
        (torch.tensor(1.0), "1-D"),
        (torch.tensor([]), "non-empty"),
        (torch.tensor([0.0, 1.0, 1.0]), "strictly increasing or strictly decreasing"),
        (torch.tensor([0.0, 1.0, 0.5]), "strictly increasing or strictly decreasing"),
        (torch.tensor([0.0, math.nan]), "NaN or Inf"),
        (torch.tensor([0.0, math.inf]), "NaN or Inf"),
    ],
)
def test_bad_times(times, match, y0):
    with pytest.raises(ValueError, match=match):
        torchmali.odeint(decay, y0, times)


def test_times_of_wrong_type(y0):
    with pytest.raises(TypeError, match="t must be"):
        torchmali.odeint(decay, y0, "0 to 1")


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_y0(bad, y0, t):
    with pytest.raises(ValueError, match="y0 contains NaN or Inf"):
        torchmali.odeint(decay, y0 * torch.tensor([1.0, bad], dtype=y0.dtype), t)


def test_integer_y0(t):
    with pytest.raises(TypeError, match="floating point"):
        torchmali.odeint(decay, torch.tensor([1, 2]), t)


def test_y0_wrong_type(t):
    with pytest.raises(TypeError, match="y0 must be a tensor or a non-empty tuple"):
        torchmali.odeint(decay, 1.0, t)
    with pytest.raises(TypeError, match=r"y0\[0\] must be a tensor, got float"):
        torchmali.odeint(decay, [1.0, 2.0], t)
    with pytest.raises(TypeError, match=r"y0\[1\] must be a tensor"):
        torchmali.odeint(decay, (torch.ones(2), 3.0), t)


def test_tuple_members_with_different_dtypes(t):
    y = (torch.ones(2, dtype=torch.float32), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"share one dtype.*\.to\("):
        torchmali.odeint(lambda t, y: y, y, t)


@pytest.mark.parametrize("name", ["rtol", "atol"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -1e-6])
def test_bad_tolerances(name, bad, y0, t):
    with pytest.raises(ValueError, match=f"{name} must be finite and non-negative"):
        torchmali.odeint(decay, y0, t, **{name: bad})


def test_per_tensor_tolerance_count(y0, t):
    with pytest.raises(ValueError, match=r"one number per tensor \(2 here\)"):
        torchmali.odeint(lambda t, y: y, (y0, y0), t, rtol=[1e-6, 1e-6, 1e-6])
    with pytest.raises(ValueError, match="rtol must be a number"):
        torchmali.odeint(decay, y0, t, rtol=[1e-6, 1e-6])
    with pytest.raises(ValueError, match="atol must be finite and non-negative"):
        torchmali.odeint(lambda t, y: y, (y0, y0), t, atol=[1e-6, -1.0])


def test_func_not_callable(y0, t):
    with pytest.raises(TypeError, match="func must be callable"):
        torchmali.odeint("not a function", y0, t)


@pytest.mark.parametrize("method", ["dopri5", "rk4", "alf"])
def test_func_wrong_shape(method, y0, t):
    options = {"step_size": 0.1} if method == "rk4" else {}
    with pytest.raises(ValueError, match=r"shape \(3,\) but the state has shape \(2,\)"):
        torchmali.odeint(lambda t, y: torch.cat([y, y[:1]]), y0, t, method=method, options=options)


def test_func_wrong_dtype(y0, t):
    with pytest.raises(
        ValueError, match=r"dtype torch.float32 but the state has dtype torch.float64"
    ):
        torchmali.odeint(lambda t, y: y.float(), y0, t)


def test_func_returns_tuple_for_tensor_state(y0, t):
    with pytest.raises(ValueError, match="func must return a tensor like y0, got tuple"):
        torchmali.odeint(lambda t, y: (y,), y0, t)


def test_func_returns_tensor_for_tuple_state(y0, t):
    with pytest.raises(
        ValueError, match="func must return a tuple of 2 tensors like y0, got Tensor"
    ):
        torchmali.odeint(lambda t, y: y[0], (y0, y0), t)
    with pytest.raises(ValueError, match="got tuple of length 1"):
        torchmali.odeint(lambda t, y: (y[0],), (y0, y0), t)
    with pytest.raises(ValueError, match=r"func output\[1\] must be a tensor"):
        torchmali.odeint(lambda t, y: (y[0], 1.0), (y0, y0), t)


def test_unknown_gradient_method(y0, t):
    with pytest.raises(ValueError, match="unknown gradient method 'magic'"):
        torchmali.odeint(decay, y0, t, gradient="magic")
    with pytest.raises(TypeError, match="gradient must be a name"):
        torchmali.odeint(decay, y0, t, gradient=3)


# ---------------------------------------------------------------------------------------------
# Failed solves: SolverError with the time reached.


def _nan_after(t_bad: float):
    def f(t, y):
        return -y if float(t) <= t_bad else y * math.nan

    return f


@pytest.mark.parametrize(
    ("method", "t_bad", "step"),
    # NaN from t > 0.52: rk4 meets it at stage t = 0.55 of the step from 0.5, ALF at its midpoint
    # 0.55, Euler only when it evaluates at 0.6 (the start of step 7).
    [("rk4", 0.5, 6), ("alf", 0.5, 6), ("euler", 0.6, 7)],
)
def test_nan_mid_solve_fixed(method, t_bad, step, y0, t):
    with pytest.raises(
        torchmali.SolverError, match=rf"non-finite values \(NaN/Inf\).*between t={t_bad}"
    ) as info:
        torchmali.odeint(_nan_after(0.52), y0, t, method=method, options={"step_size": 0.1})
    assert info.value.t == pytest.approx(t_bad)
    assert info.value.n_steps == step


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "alf"])
def test_nan_mid_solve_adaptive(method, y0, t):
    with pytest.raises(torchmali.SolverError, match=r"non-finite values \(NaN/Inf\)") as info:
        torchmali.odeint(_nan_after(0.5), y0, t, rtol=1e-4, atol=1e-6, method=method)
    assert info.value.t == pytest.approx(0.5, abs=1e-3)
    assert str(info.value).count("t=0.5") >= 1


def test_nan_mid_solve_decreasing_time(y0):
    """Times in the error are in the user's direction."""
    t = torch.tensor([1.0, 0.0], dtype=y0.dtype)

    def f(t, y):
        return -y if float(t) >= 0.45 else y * math.nan

    with pytest.raises(torchmali.SolverError, match="non-finite") as info:
        torchmali.odeint(f, y0, t, method="rk4", options={"step_size": 0.1})
    assert info.value.t == pytest.approx(0.5)


def test_blow_up_underflows(y0, t):
    """y' = y^2 blows up at t = 1/y0: step-size underflow there, after few steps."""
    with pytest.raises(torchmali.SolverError, match="step size underflow") as info:
        torchmali.odeint(lambda t, y: y**2, y0[:1], t * 2)
    assert info.value.t == pytest.approx(1.0, abs=1e-6)
    assert info.value.n_steps < 2000


def test_step_size_below_min_step(y0, t):
    with pytest.raises(torchmali.SolverError, match=r"below min_step=0\.05") as info:
        torchmali.odeint(lambda t, y: -500 * y, y0, t, options={"min_step": 0.05})
    assert info.value.t == 0.0


def test_max_num_steps_adaptive_reports_progress(y0, f64):
    t = torch.tensor([0.0, 100.0], dtype=f64)
    with pytest.raises(
        torchmali.SolverError,
        match=r"reached max_num_steps=20 at t=[0-9.]+ of \[0, 100\] \(\d+ accepted, \d+ rejected\)",
    ) as info:
        torchmali.odeint(
            lambda t, y: torch.stack([y[1], -y[0]]), y0, t, options={"max_num_steps": 20}
        )
    assert 0.0 < info.value.t < 100.0
    assert info.value.n_steps == 21


def test_max_num_steps_fixed(y0, t):
    with pytest.raises(torchmali.SolverError, match=r"needs 100 steps, more than max_num_steps=10"):
        torchmali.odeint(
            decay, y0, t, method="rk4", options={"step_size": 0.01, "max_num_steps": 10}
        )


# ---------------------------------------------------------------------------------------------
# Every numeric argument names what it got and the fix (issue 11.5).


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"rtol": "1e-3"}, TypeError, r"rtol must be a number .*got str '1e-3'.*rtol=0\.001"),
        ({"atol": "tiny"}, TypeError, r"atol must be a number .*got str 'tiny'.*atol=1e-8"),
        ({"rtol": None}, TypeError, "rtol must be a number .*got None"),
        ({"atol": True}, TypeError, "atol must be a number .*got bool"),
        ({"rtol": 1e-3j}, TypeError, "rtol must be a number .*got complex"),
        ({"rtol": [1e-6, "1e-6"]}, TypeError, r"rtol\[1\] must be a number, got str"),
        ({"atol": torch.ones(2, 2)}, TypeError, r"atol must be a number or a 1-D tensor"),
    ],
)
def test_tolerance_types(kw, error, match, y0, t):
    with pytest.raises(error, match=match):
        torchmali.odeint(decay, y0, t, **kw)


def test_tolerance_numpy_and_tensor_numbers_are_accepted(y0, t):
    np = pytest.importorskip("numpy")
    torchmali.odeint(decay, y0, t, rtol=np.float64(1e-6), atol=torch.tensor(1e-8))
    pair = (y0, y0)
    torchmali.odeint(lambda t, y: y, pair, t, rtol=np.array([1e-6, 1e-5]), atol=(1e-8, 1e-8))


@pytest.mark.parametrize(
    ("times", "error", "match"),
    [
        (None, TypeError, r"t must be a 1-D tensor of times, got None: pass e\.g\. t="),
        (1.0, ValueError, r"got the number 1\.0: pass e\.g\. t=\[0\.0, 1\.0\]"),
        ([0.0, "1"], TypeError, r"t\[1\] must be a number \(a time\), got str '1'"),
        (torch.tensor([0j, 1j]), TypeError, "t must hold real times, got a torch.complex64"),
        (torch.tensor([False, True]), TypeError, "t must hold real times, got a torch.bool"),
        (torch.tensor(1.0), ValueError, r"got shape \(\): pass e\.g\. t=\[0\.0, 1\.0\]"),
    ],
)
def test_time_types(times, error, match, y0):
    with pytest.raises(error, match=match):
        torchmali.odeint(decay, y0, times)


def test_time_sequences_are_accepted(y0):
    np = pytest.importorskip("numpy")
    for times in ((0, 1), range(3), np.array([0.0, 0.5]), [torch.tensor(0.0), 1.0]):
        assert torchmali.odeint(decay, y0, times).shape[0] == len(times)


@pytest.mark.parametrize(
    ("option", "error", "match"),
    [
        (
            {"max_num_steps": "many"},
            TypeError,
            r"max_num_steps'\] must be a number, got str .*an integer",
        ),
        (
            {"max_num_steps": None},
            TypeError,
            r"got None: leave the key out for the default \(100000\)",
        ),
        ({"max_num_steps": math.inf}, ValueError, "max_num_steps'] must be a positive integer"),
        ({"safety": "0.9"}, TypeError, r"options\['safety'\] must be a number, got str '0\.9'"),
        ({"max_step": None}, TypeError, r"max_step'\] must be a number, got None.*default \(inf\)"),
        ({"dfactor": 0.2j}, TypeError, r"dfactor'\] must be a number, got complex"),
        ({"step_t": 0.5}, TypeError, r"step_t'\] must be a sequence of times, got float.*\[0\.5\]"),
        ({"step_t": "0.5"}, TypeError, r"step_t'\] must be a sequence of times, got str"),
        ({"step_t": [0.5, "x"]}, TypeError, r"step_t'\]\[1\] must be a number"),
        ({"step_t": torch.tensor([0.5j])}, TypeError, "step_t'] must hold real times"),
    ],
)
def test_option_types(option, error, match, y0, t):
    with pytest.raises(error, match=match):
        torchmali.odeint(decay, y0, t, options=option)


def test_numpy_option_values_are_accepted(y0, t):
    np = pytest.importorskip("numpy")
    opts = {"max_num_steps": np.int64(1000), "safety": np.float32(0.8), "step_t": np.array([0.5])}
    torchmali.odeint(decay, y0, t, options=opts)
