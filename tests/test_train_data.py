"""Data of the experiments: CIFAR-10 batch files, toys, series, digits."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from torchmali.experiments import data


def write_tiny_cifar(root: Path, n: int = 6, seed: int = 0) -> Path:
    """A CIFAR-10 directory in the python-pickle batch format with ``n`` images per batch."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"batch_label": name.encode(),
        }
        with (root / name).open("wb") as f:
            pickle.dump(batch, f)
    return root


def test_cifar10_tiny_files(tmp_path: Path) -> None:
    root = write_tiny_cifar(tmp_path / "cifar-10-batches-py")
    for where in (root, tmp_path):  # the folder itself or its parent
        xtr, ytr, xte, yte = data.load_cifar10(where)
        assert xtr.shape == (30, 3, 32, 32) and xte.shape == (6, 3, 32, 32)
        assert ytr.dtype == torch.int64 and int(ytr.max()) <= 9


def test_cifar10_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        data.load_cifar10(tmp_path / "nowhere")
    root = write_tiny_cifar(tmp_path / "c")
    (root / "test_batch").unlink()
    with pytest.raises(ValueError, match="lacks the CIFAR-10 batch files"):
        data.load_cifar10(root)
    (root / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        data.load_cifar10(root)
    with (root / "test_batch").open("wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="3072"):
        data.load_cifar10(root)


def test_digits_split_is_fixed() -> None:
    a = data.load_digits_split()
    b = data.load_digits_split()
    assert a[0].shape == (1437, 1, 8, 8) and a[2].shape == (360, 1, 8, 8)
    assert torch.equal(a[1], b[1]) and torch.equal(a[3], b[3])
    tr, te = data.digits_density()
    assert tr.shape == (1437, 64) and te.shape == (360, 64) and tr.max() == 16


def test_dequantize_logdet_matches_autograd() -> None:
    x = torch.tensor([[0.0, 16.0, 7.0]], dtype=torch.float64)
    u = torch.full_like(x, 0.3, requires_grad=True)
    y, logdet = data.dequantize_logit(x, u)
    jac = torch.autograd.grad(y.sum(), u)[0] * data.DIGITS_LEVELS  # dy/d((x+u)/17)
    torch.testing.assert_close(logdet, jac.log().sum(1))


@pytest.mark.parametrize("name", data.TOYS)
def test_toys(name: str) -> None:
    x = data.sample_toy(name, 501, np.random.default_rng(0))
    assert x.shape == (501, 2) and np.isfinite(x).all() and np.abs(x).max() < 6
    with pytest.raises(ValueError, match="unknown toy"):
        data.sample_toy("swissroll", 3, np.random.default_rng(0))


def test_series_and_masks() -> None:
    t, x = data.spirals(10, steps=20, seed=1)
    assert t.shape == (20,) and x.shape == (10, 20, 2)
    ts = data.TimeSeries(t, x, obs_frac=0.5, seed=0)
    total = ts.obs_mask + ts.interp_mask + ts.extrap_mask
    assert torch.equal(total, torch.ones_like(total))  # a partition of the grid
    assert (ts.obs_mask[:, 0] == 1).all() and ts.extrap_mask[:, :10].sum() == 0


def test_membrane_windows_split_by_block() -> None:
    from matplotlib import cbook

    t, xtr, xte = data.membrane_windows()
    assert t.shape == (60,) and xtr.shape[1:] == (60, 1) and xte.shape[1:] == (60, 1)
    # 8 blocks of 225 points, blocks 4 and 8 for testing, a window at every point of a block
    assert len(xtr) == 6 * (225 - 60 + 1) and len(xte) == 2 * (225 - 60 + 1)

    def blocks(x: torch.Tensor) -> list[torch.Tensor]:  # first window + each later last point
        return [torch.cat([x[k, :, 0], x[k + 1 : k + 166, -1, 0]]) for k in range(0, len(x), 166)]

    train, test = blocks(xtr), blocks(xte)
    joined = torch.cat([*train[:3], test[0], *train[3:], test[1]]).double()
    with cbook.get_sample_data("membrane.dat") as f:
        raw = torch.frombuffer(bytearray(f.read()), dtype=torch.float32)
    series = raw[1500:10500:5][:1800].double()
    train_values = torch.cat([series[:675], series[900:1575]])
    expected = (series - train_values.mean()) / train_values.std(correction=0)
    assert torch.allclose(joined, expected, atol=1e-5)  # contiguous blocks, in order
    t, xtr, xte = data.membrane_windows(steps=40, hop=5, blocks=4, test_every=2)
    assert len(xtr) == len(xte) == 2 * len(range(0, 450 - 40 + 1, 5))
    with pytest.raises(ValueError, match="test_every"):
        data.membrane_windows(blocks=3, test_every=4)
    with pytest.raises(ValueError, match="shorter windows"):
        data.membrane_windows(steps=300)


@pytest.mark.parametrize("dataset,pad", [("digits", 1), ("cifar10", 4)])
def test_image_augmentation_shifts_each_image(dataset: str, pad: int) -> None:
    """Each image is translated by its own offset of at most ``pad`` pixels (CIFAR-10: maybe
    flipped); digits are zero-filled, so an image with a blank border keeps its pixels. The draws
    depend on (seed, epoch, example) only."""
    import argparse

    from torchmali.experiments.image import ImageTask

    task = ImageTask.__new__(ImageTask)  # only the augmentation's pieces are needed
    task.dataset = dataset
    task.args = argparse.Namespace(seed=3)
    task.xtr = torch.zeros(64, 3, 12, 12)
    task.num_train = lambda: 64
    task._draws_epoch = None
    x = torch.zeros(64, 3, 12, 12)
    x[:, :, 5:7, 5:7] = torch.rand(64, 3, 2, 2) + 0.1  # reflected padding stays blank
    idx = torch.arange(64)
    draws = task._draws(idx, epoch=2)
    assert torch.equal(task._draws(idx[10:20], epoch=2), draws[10:20])  # by example
    assert not torch.equal(task._draws(idx, epoch=3), draws)  # a new table each epoch
    out = task._augment(x, draws)
    assert out.shape == x.shape
    offsets = set()
    for a, b in zip(x, out, strict=True):
        candidates = [a, a.flip(2)] if dataset == "cifar10" else [a]
        found = [
            (di, dj)
            for c in candidates
            for di in range(-pad, pad + 1)
            for dj in range(-pad, pad + 1)
            if torch.equal(torch.roll(c, (di, dj), (1, 2)), b)
        ]
        assert found, "not a translation of the input"
        offsets.add(found[0])
    assert len(offsets) > 1  # per image, not one shift for the whole batch


def test_density_mass_tells_a_valid_density_from_a_broken_one() -> None:
    """The 2-D check of ``torchmali train density``: a flow that does nothing is the standard
    normal (mass 1); log-densities that are not those of a density are flagged."""
    import warnings
    from types import SimpleNamespace

    from torchmali.experiments.density import DensityTask, density_mass
    from torchmali.nn import CNF

    flow = CNF(2, hidden=8, method="rk4", options={"step_size": 0.5})
    for p in flow.parameters():
        torch.nn.init.zeros_(p)
    flow.eval()
    with torch.no_grad():
        assert abs(density_mass(flow) - 1.0) < 1e-3
    broken = SimpleNamespace(log_prob=lambda x: torch.full((len(x),), -3.0))  # e^-3 everywhere
    assert density_mass(broken) == pytest.approx(256 * math.exp(-3.0), rel=1e-5)
    task = DensityTask.__new__(DensityTask)  # only the check's pieces are needed
    task.digits, task.xtr = False, torch.zeros(1, 2)
    with pytest.warns(RuntimeWarning, match="integrates to 12.7"):
        assert task.final_metrics(broken)["test_density_mass"] == pytest.approx(
            256 * math.exp(-3.0), rel=1e-5
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            assert task.final_metrics(flow)["test_density_mass"] == pytest.approx(1.0, abs=1e-3)
