"""``torchmali train timeseries``: latent ODE on irregularly sampled series.

Data: noisy 2-D spirals (the Neural ODE paper's toy, default) or windows of the neuron
membrane-potential recording shipped with matplotlib (``--dataset membrane``). Each series is
observed at a random ~half of the first half of its grid: the encoder sees those values, the
model predicts the whole grid; interpolation MSE is scored on the hidden first-half values,
extrapolation MSE on the second half.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from torchmali.experiments import data
from torchmali.experiments._train_common import Task
from torchmali.experiments.distributed import DistEnv
from torchmali.nn import LatentODE

__all__ = ["DEFAULTS", "QUICK", "TimeSeriesTask", "add_arguments", "specific_defaults"]

DEFAULTS = {
    "epochs": 60,  # the test MSE still halves between epochs 30 and 60
    "batch_size": 50,
    "lr": 1e-2,
    "method": "alf",
    "step_size": None,
    "rtol": 1e-3,
    "atol": 1e-4,
    "limit": None,
    "latent_dim": 4,
    "hidden": 32,
}
QUICK = {
    "epochs": 6,
    "batch_size": 25,
    "lr": 1e-2,
    "method": "alf",
    "step_size": 0.05,
    "rtol": 1e-2,
    "atol": 1e-3,
    "limit": 200,
    "latent_dim": 4,
    "hidden": 32,
}
# The membrane recording: sharp spikes need a wider model; a fixed ALF step because adaptive
# ALF's steps collapse when a training transient makes the latent dynamics dissipative.
MEMBRANE = {"latent_dim": 16, "hidden": 64, "step_size": 0.02}


def specific_defaults(args: argparse.Namespace) -> dict:
    """Defaults of the data set chosen (``--dataset membrane``: :data:`MEMBRANE`)."""
    return MEMBRANE if args.dataset == "membrane" else {}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The time-series task's own options."""
    p.add_argument("--dataset", choices=("spirals", "membrane"), default="spirals")
    p.add_argument(
        "--encoder",
        choices=("gru", "odernn"),
        default="gru",
        help="recognition network run backwards over the observations",
    )
    p.add_argument("--latent-dim", type=int, default=None, help="default 4 (membrane 16)")
    p.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="width of the ODE / GRU / decoder: 32 (membrane 64)",
    )
    p.add_argument(
        "--obs-frac",
        type=float,
        default=0.5,
        help="fraction of the first-half grid points the encoder sees",
    )


class TimeSeriesTask(Task):
    """Latent-ODE training; metric: test MSE on the second half (extrapolation)."""

    name = "timeseries"
    metric = "test_mse_extrap"
    higher_is_better = False

    def __init__(self, args: argparse.Namespace, env: DistEnv) -> None:
        super().__init__(args, env)
        if args.dataset == "spirals":
            n_train = args.limit or 500
            t, x = data.spirals(n_train + 100, steps=40, seed=args.seed)
            xtr, xte = x[:n_train], x[n_train:]
        else:
            t, xtr, xte = data.membrane_windows()
            if args.limit:
                xtr = xtr[: args.limit]
        self.train = data.TimeSeries(t, xtr, args.obs_frac, seed=args.seed)
        self.test = data.TimeSeries(t, xte, args.obs_frac, seed=args.seed + 1)
        for ds in (self.train, self.test):
            for name in ("t", "x", "obs_mask", "interp_mask", "extrap_mask"):
                setattr(ds, name, getattr(ds, name).to(env.device))

    def build(self) -> nn.Module:
        a = self.args
        return LatentODE(
            self.train.x.shape[-1],
            latent_dim=a.latent_dim,
            rec_hidden=a.hidden,
            ode_hidden=a.hidden,
            dec_hidden=a.hidden,
            encoder=a.encoder,
            **self.ode_kwargs(),
        )

    def num_train(self) -> int:
        return len(self.train)

    def batch_loss(self, model: nn.Module, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        d = self.train
        target = d.obs_mask[idx] + d.extrap_mask[idx]
        kl_weight = min(1.0, epoch / 10.0)
        return model(d.t, d.x[idx], d.obs_mask[idx], target, kl_weight=kl_weight).loss

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        d = self.test
        pred = model.predict(d.t, d.x, d.obs_mask)
        err = (pred - d.x) ** 2
        out = {}
        for name, m in (("interp", d.interp_mask), ("extrap", d.extrap_mask)):
            out[f"test_mse_{name}"] = ((err * m).sum() / m.sum().clamp_min(1)).item()
        return out

    def plot(self, model: nn.Module, out: Path) -> list[str]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        d = self.test
        k = min(4, len(d))
        # spread over the test set: consecutive membrane windows overlap almost entirely
        pick = torch.linspace(0, len(d) - 1, k).round().long().to(d.x.device)
        t_fine = torch.linspace(0.0, float(d.t[-1]), 200, device=d.t.device)
        pred = model.predict(d.t, d.x[pick], d.obs_mask[pick], t_fine).cpu()
        x, obs = d.x[pick].cpu(), d.obs_mask[pick].cpu()
        t, tf, half = d.t.cpu(), t_fine.cpu(), d.t[len(d.t) // 2].item()
        fig, axes = plt.subplots(1, k, figsize=(3 * k, 3), squeeze=False)
        for i, ax in enumerate(axes[0]):
            seen = obs[i, :, 0] > 0
            if x.shape[-1] >= 2:
                ax.plot(x[i, :, 0], x[i, :, 1], ".", color="0.7", label="truth")
                ax.plot(x[i, seen, 0], x[i, seen, 1], "o", color="C0", ms=4, label="observed")
                early = tf <= half
                ax.plot(pred[i, early, 0], pred[i, early, 1], "-", color="C2", label="recon.")
                ax.plot(pred[i, ~early, 0], pred[i, ~early, 1], "-", color="C3", label="extrap.")
                ax.set_aspect("equal")
            else:
                ax.plot(t, x[i, :, 0], ".", color="0.7", label="truth")
                ax.plot(t[seen], x[i, seen, 0], "o", color="C0", ms=4, label="observed")
                ax.plot(tf, pred[i, :, 0], "-", color="C3", label="prediction")
                ax.axvline(half, color="k", lw=0.5, ls="--")
                ax.set_xlabel("t")
            ax.set_title(f"test series {int(pick[i])}")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "reconstructions.png", dpi=80)
        plt.close(fig)
        return ["reconstructions.png"]
