"""Data sets of the experiments. Nothing is downloaded: everything is generated, ships inside an
installed package (scikit-learn's digits, matplotlib's membrane-potential recording), or is read
from a local directory the user supplies (CIFAR-10)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "TOYS",
    "TimeSeries",
    "digits_density",
    "load_cifar10",
    "load_digits_split",
    "membrane_windows",
    "sample_toy",
    "spirals",
]

TOYS = ("8gaussians", "pinwheel", "checkerboard", "2spirals", "moons")
DIGITS_LEVELS = 17  # digits pixels are integers 0..16


def load_digits_split(
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits with a fixed stratified 80/20 train/test split.

    Returns:
        ``(x_train, y_train, x_test, y_test)``; images ``[N, 1, 8, 8]`` scaled to ``[0, 1]`` and
        standardised with the training set's mean and standard deviation.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.images.astype(np.float32) / 16.0
    xtr, xte, ytr, yte = train_test_split(
        x, d.target, test_size=0.2, random_state=seed, stratify=d.target
    )
    mean, std = xtr.mean(), xtr.std()

    def prep(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((a - mean) / std)[:, None]

    return prep(xtr), torch.from_numpy(ytr).long(), prep(xte), torch.from_numpy(yte).long()


_CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
_CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            d = pickle.load(f, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{path} is not a CIFAR-10 python batch (a pickled dict with b'data', an N x 3072 "
            f"uint8 array, and b'labels'): {type(e).__name__}: {e}. Re-extract "
            "cifar-10-python.tar.gz into the directory."
        ) from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(
            f"{path}: expected b'data' of shape [N, 3072] and N labels, got "
            f"{data.shape} and {len(labels)} labels; the file is not CIFAR-10."
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must lie in 0..9, got {labels.min()}..{labels.max()}.")
    return data, labels


def load_cifar10(root: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CIFAR-10 from a local directory in the standard python-pickle batch format.

    Args:
        root: A directory holding ``data_batch_1`` ... ``data_batch_5`` and ``test_batch`` (the
            extracted ``cifar-10-batches-py``), or its parent.

    Returns:
        ``(x_train, y_train, x_test, y_test)``; images ``[N, 3, 32, 32]`` normalised per channel.

    Raises:
        ValueError: If the directory or a batch file is missing or malformed.
    """
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise ValueError(
            f"CIFAR-10 directory {root} does not exist; pass --data DIR pointing at "
            "the extracted cifar-10-batches-py folder (nothing is downloaded)."
        )
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise ValueError(
            f"{root} lacks the CIFAR-10 batch files {missing}; it must contain "
            f"{names} (the python version of CIFAR-10)."
        )
    parts = [_read_cifar_batch(root / n) for n in names]

    def prep(data: np.ndarray) -> torch.Tensor:
        img = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
        img = (img - _CIFAR_MEAN[:, None, None]) / _CIFAR_STD[:, None, None]
        return torch.from_numpy(img)

    xtr = prep(np.concatenate([p[0] for p in parts[:5]]))
    ytr = torch.from_numpy(np.concatenate([p[1] for p in parts[:5]]))
    return xtr, ytr, prep(parts[5][0]), torch.from_numpy(parts[5][1])


class TimeSeries:
    """Irregularly sampled series on a shared grid: times ``t [T]``, values ``x [N, T, D]``.

    ``obs_mask`` marks the values the encoder sees (a random subset of the first ``n_obs_window``
    grid points: irregular sampling); ``interp_mask`` the held-out values inside that window;
    ``extrap_mask`` every value after it.
    """

    def __init__(self, t: torch.Tensor, x: torch.Tensor, obs_frac: float, seed: int) -> None:
        n, steps, d = x.shape
        half = steps // 2
        gen = torch.Generator().manual_seed(seed)
        keep = (torch.rand(n, half, generator=gen) < obs_frac).float()
        keep[:, 0] = 1.0  # every series is observed at least once
        self.t, self.x = t, x
        self.obs_mask = torch.zeros(n, steps, d)
        self.obs_mask[:, :half] = keep[..., None].expand(n, half, d)
        self.interp_mask = torch.zeros(n, steps, d)
        self.interp_mask[:, :half] = 1.0 - self.obs_mask[:, :half]
        self.extrap_mask = torch.zeros(n, steps, d)
        self.extrap_mask[:, half:] = 1.0

    def __len__(self) -> int:
        return self.x.shape[0]


def spirals(
    n: int, steps: int = 60, noise: float = 0.05, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Neural ODE paper's toy: noisy 2-D Archimedean spirals, half of them clockwise.

    Each series starts at a random phase of its spiral; time is ``[0, 1]`` on ``steps`` points.

    Returns:
        ``(t [steps], x [n, steps, 2])``.
    """
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, steps)
    start = rng.uniform(0.0, 2.0 * np.pi, size=(n, 1))
    direction = np.where(rng.random((n, 1)) < 0.5, -1.0, 1.0)
    theta = start + direction * 2.0 * np.pi * t[None]
    radius = 0.5 + 0.8 * (theta - start) * direction / (2 * np.pi) + 0.2 * start / np.pi
    x = np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=-1)
    x = x + noise * rng.standard_normal(x.shape)
    return torch.from_numpy(t).float(), torch.from_numpy(x).float()


def membrane_windows(
    steps: int = 60, stride: int = 5, hop: int = 1, blocks: int = 8, test_every: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows of a real neuron membrane-potential recording that ships with matplotlib.

    ``matplotlib``'s sample data ``membrane.dat`` (12,000 float32 samples of a spiking neuron's
    membrane potential) is restricted to its spiking segment, downsampled by ``stride`` and cut
    into ``blocks`` contiguous blocks; every ``test_every``-th block is for testing, the others for
    training, so both sets cover the regular spiking at the start and the irregular bursts near
    the end. Each block is cut into windows of ``steps`` points every ``hop`` points; no window
    crosses a block boundary, so no test value appears in a training window. Values are
    standardised with the training blocks' mean and standard deviation.

    Returns:
        ``(t [steps], x_train [N, steps, 1], x_test [M, steps, 1])``; time runs over ``[0, 1]``.

    Raises:
        ValueError: If a block is shorter than a window, or the blocks are not split between
            training and testing.
    """
    from matplotlib import cbook

    with cbook.get_sample_data("membrane.dat") as f:
        raw = np.frombuffer(f.read(), dtype=np.float32)
    series = raw[1500:10500:stride].astype(np.float64)
    size = len(series) // blocks
    if size < steps or not 2 <= test_every <= blocks:
        raise ValueError(
            f"membrane_windows: {blocks} blocks of {size} points with test_every={test_every}: "
            f"each block must hold a window of {steps} points and 2 <= test_every <= blocks "
            "(some blocks for training, some for testing); use fewer blocks or shorter windows."
        )
    parts = [series[i * size : (i + 1) * size] for i in range(blocks)]
    is_test = [(i + 1) % test_every == 0 for i in range(blocks)]
    train_values = np.concatenate([b for b, test in zip(parts, is_test, strict=True) if not test])
    mean, std = train_values.mean(), train_values.std()

    def windows(test: bool) -> torch.Tensor:
        w = [
            (b[s : s + steps] - mean) / std
            for b, in_test in zip(parts, is_test, strict=True)
            if in_test == test
            for s in range(0, size - steps + 1, hop)
        ]
        return torch.from_numpy(np.stack(w)[..., None]).float()

    t = torch.linspace(0.0, 1.0, steps)
    return t, windows(False), windows(True)


def sample_toy(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points of a 2-D toy density (FFJORD's toys), roughly within ``[-4, 4]^2``.

    Args:
        name: One of :data:`TOYS`.
        n: Number of points.
        rng: NumPy random generator.

    Raises:
        ValueError: On an unknown name.
    """
    if name == "8gaussians":
        angles = 2 * np.pi * np.arange(8) / 8
        centers = 2 * np.sqrt(2) * np.stack([np.cos(angles), np.sin(angles)], 1)
        return centers[rng.integers(0, 8, n)] + 0.5 * rng.standard_normal((n, 2)) / np.sqrt(2)
    if name == "pinwheel":
        radial_std, tangential_std, classes, rate = 0.3, 0.1, 5, 0.25
        rads = np.linspace(0, 2 * np.pi, classes, endpoint=False)
        feats = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
        feats[:, 0] += 1.0
        labels = rng.integers(0, classes, n)
        angles = rads[labels] + rate * np.exp(feats[:, 0])
        rot = np.stack([np.cos(angles), -np.sin(angles), np.sin(angles), np.cos(angles)], 1)
        return 2 * np.einsum("ti,tij->tj", feats, rot.reshape(-1, 2, 2))
    if name == "checkerboard":
        x1 = rng.random(n) * 4 - 2
        x2 = rng.random(n) - rng.integers(0, 2, n) * 2.0 + np.floor(x1) % 2
        return np.stack([x1, x2], 1) * 2
    if name == "2spirals":
        half = (n + 1) // 2
        m = np.sqrt(rng.random((half, 1))) * 540 * (2 * np.pi) / 360
        d1x = -np.cos(m) * m + rng.random((half, 1)) * 0.5
        d1y = np.sin(m) * m + rng.random((half, 1)) * 0.5
        x = np.vstack([np.hstack([d1x, d1y]), np.hstack([-d1x, -d1y])]) / 3
        x = x + 0.1 * rng.standard_normal(x.shape)
        return x[rng.permutation(len(x))[:n]]
    if name == "moons":
        from sklearn.datasets import make_moons

        x, _ = make_moons(n, noise=0.05, random_state=int(rng.integers(0, 2**31 - 1)))
        return (x - np.array([0.5, 0.25])) * 2
    raise ValueError(f"unknown toy density {name!r}; choose one of {TOYS}.")


def digits_density(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits as 64-dimensional integer data (levels 0..16) with the fixed split.

    Returns:
        ``(train [N, 64], test [M, 64])`` as float tensors holding integers in ``0..16``;
        dequantise with :func:`dequantize_logit`.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    xtr, xte = train_test_split(
        d.data.astype(np.float32), test_size=0.2, random_state=seed, stratify=d.target
    )
    return torch.from_numpy(xtr), torch.from_numpy(xte)


LOGIT_ALPHA = 0.05


def dequantize_logit(x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform dequantisation to ``[0, 1)`` then FFJORD's logit transform.

    Args:
        x: Integer levels in ``0..16``, ``[B, D]``.
        noise: Uniform ``[0, 1)`` noise of the same shape.

    Returns:
        ``(y, logdet)``: transformed data and ``log |dy/du|`` per sample, where ``u`` is the
        dequantised value in ``[0, 1)``. Bits per dimension are then
        ``(-(log p(y) + logdet) / D + log(17)) / log(2)``.
    """
    u = (x + noise) / DIGITS_LEVELS
    s = LOGIT_ALPHA + (1 - 2 * LOGIT_ALPHA) * u
    y = torch.log(s) - torch.log1p(-s)
    logdet = (math.log(1 - 2 * LOGIT_ALPHA) - torch.log(s) - torch.log1p(-s)).sum(1)
    return y, logdet
