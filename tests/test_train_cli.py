"""``torchmali train``: quick runs of every task, resume after SIGKILL, two-process DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_train_data import write_tiny_cifar
from torchmali.cli import main

PLOTS = {"image": [], "timeseries": ["reconstructions.png"], "density": ["density.png"]}
# Options of the small runs used by the subprocess tests.
RUN = ["--gradient", "mali", "--threads", "1", "--quiet", "--no-plots", "--device", "cpu"]
# A tiny image run (about a second of compute per epoch); per-example augmentation draws are
# the same in 1 or 2 processes and after a resume.
IMAGE = ["image", "--quick", "--limit", "256", "--epochs", "4", "--augment", *RUN]
# The same for the two other tasks, for the resume test: 0.1-0.3 s an epoch, so more epochs
# leave the kill after the first checkpoint a margin of seconds before the run would end.
SMALL = {
    "image": (IMAGE, ("train_loss", "test_accuracy", "test_loss")),
    "timeseries": (
        ["timeseries", "--quick", "--limit", "100", "--epochs", "10", *RUN],
        ("train_loss", "test_mse_interp", "test_mse_extrap"),
    ),
    "density": (
        ["density", "--quick", "--limit", "1000", "--epochs", "16", *RUN],
        ("train_loss", "test_nll"),
    ),
}


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "torchmali", "train", *args]


@pytest.mark.parametrize(
    ("task", "extra"),
    [
        ("image", ["--limit", "300", "--epochs", "3"]),
        ("timeseries", ["--limit", "100", "--epochs", "3", "--lr", "0.02"]),
        ("density", ["--limit", "1000", "--epochs", "3"]),
    ],
)
def test_quick_run_learns_and_writes_files(task: str, extra: list[str], tmp_path: Path) -> None:
    rc = main(
        [
            "train",
            task,
            "--quick",
            "--gradient",
            "mali",
            "--threads",
            "1",
            "--quiet",
            "--out",
            str(tmp_path),
            *extra,
        ]
    )
    assert rc == 0
    m = metrics(tmp_path)
    assert m["complete"] and m["task"] == task and len(m["epochs"]) == 3
    for name in ["checkpoint.pt", "learning_curves.png", *PLOTS[task]]:
        assert (tmp_path / name).stat().st_size > 0, name
    first, last = m["epochs"][0], m["epochs"][-1]
    assert last["train_loss"] < first["train_loss"]
    key = m["metric"]
    better = last[key] > first[key] if key == "test_accuracy" else last[key] < first[key]
    assert better, (key, first[key], last[key])
    final = m["final"]
    for field in ("time_per_epoch_s", "peak_memory_mb", "nfe_forward_per_batch"):
        assert final[field] > 0, field
    assert final["nfe_backward_per_batch"] > 0  # MALI's reverse sweep was counted
    # MALI's checks are recorded per epoch: reconstruction drift and ALF's parasitic mode
    assert 0 < last["drift_max"] < 1e-3 and 0 < last["parasitic_max"] < float("inf")
    if task == "density":  # the 2-D flow's density is checked to integrate to 1
        assert 0.5 < final["test_density_mass"] < 2


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["timeseries"], {"latent_dim": 4, "hidden": 32, "step_size": None, "epochs": 60}),
        (
            ["timeseries", "--dataset", "membrane"],
            {"latent_dim": 16, "hidden": 64, "step_size": 0.02},
        ),
        (["timeseries", "--dataset", "membrane", "--hidden", "8"], {"hidden": 8, "latent_dim": 16}),
        (["timeseries", "--dataset", "membrane", "--step-size", "0"], {"step_size": None}),
        (["timeseries", "--dataset", "membrane", "--quick"], {"latent_dim": 4, "step_size": 0.05}),
        (["density"], {"hidden": 64, "epochs": 150, "batch_size": 500}),
        (["density", "--dataset", "digits"], {"hidden": 256, "epochs": 20, "batch_size": 100}),
        (["density", "--dataset", "2spirals"], {"step_size": 0.05, "hidden": 64}),
        (["density", "--dataset", "moons"], {"step_size": 0.125}),
        (["image"], {"width": 32}),
        (["image", "--data", "somewhere"], {"width": 64}),
        (["image", "--model", "resnet18"], {"width": 64}),
        (["image", "--data", "somewhere", "--quick"], {"width": 8}),
    ],
)
def test_defaults_follow_the_data_set(argv: list[str], expected: dict) -> None:
    """Full runs take the task's defaults updated by those of the data set or preset chosen;
    ``--quick`` takes its own; an option given on the command line always wins."""
    from torchmali.cli import build_parser
    from torchmali.experiments.train import resolve

    args = resolve(build_parser().parse_args(["train", *argv]))
    assert {k: getattr(args, k) for k in expected} == expected


def test_mali_checkpoint_every_bounds_the_drift_at_more_memory(tmp_path: Path) -> None:
    """``--mali-checkpoint-every K`` trains with ``Mali(checkpoint_every=K)``, which stores a
    state every K steps (more solver memory) to restart the reconstruction there."""
    runs = {}
    for k in (None, 2):
        out = tmp_path / f"k{k}"
        extra = [] if k is None else ["--mali-checkpoint-every", str(k)]
        argv = ["train", "timeseries", "--quick", "--limit", "50", "--epochs", "1", *RUN]
        assert main([*argv, "--out", str(out), *extra]) == 0
        runs[k] = metrics(out)["final"]
    assert runs[2]["solver_memory_bytes"] > runs[None]["solver_memory_bytes"]
    assert not list((tmp_path / "k2").glob("checkpoint-epoch*"))  # only with --keep-checkpoints
    assert metrics(tmp_path / "k2")["config"]["mali_checkpoint_every"] == 2
    bad = ["train", "timeseries", "--gradient", "adjoint", "--mali-checkpoint-every", "4"]
    assert main([*bad, "--out", str(tmp_path / "bad")]) == 2


def test_keep_checkpoints_keeps_every_epoch(tmp_path: Path) -> None:
    argv = ["train", "density", "--quick", "--limit", "500", "--epochs", "3", *RUN]
    assert main([*argv, "--out", str(tmp_path), "--keep-checkpoints"]) == 0
    kept = sorted(p.name for p in tmp_path.glob("checkpoint-epoch*.pt"))
    assert kept == [f"checkpoint-epoch{e}.pt" for e in (1, 2, 3)]
    epochs = [torch.load(tmp_path / k, weights_only=False)["epoch"] for k in kept]
    assert epochs == [1, 2, 3]
    last = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["model"]
    third = torch.load(tmp_path / kept[-1], weights_only=False)["model"]
    assert all(torch.equal(last[k], third[k]) for k in last)


def test_cifar10_directory(tmp_path: Path) -> None:
    root = write_tiny_cifar(tmp_path / "cifar", n=8)
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "image",
            "--data",
            str(root),
            "--width",
            "4",
            "--epochs",
            "1",
            "--gradient",
            "checkpoint",
            "--step-size",
            "0.5",
            "--batch-size",
            "20",
            "--augment",
            "--quiet",
            "--no-plots",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and metrics(out)["final"]["epochs"] == 1
    missing = ["train", "image", "--data", str(tmp_path / "missing"), "--out", str(out)]
    assert main(missing) == 2


def test_bad_options_name_the_fix(tmp_path: Path, capsys) -> None:
    argv = ["train", "density", "--gradient", "mali", "--method", "rk4", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "--method alf" in capsys.readouterr().err
    assert main(["train", "image", "--data", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "image", "--gradient", "adjoint", "--mali-checkpoint-every", "4"]) == 2
    assert "needs --gradient mali" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["train", "image", "--quick", "--device", "cuda"]) == 2
        assert "CUDA" in capsys.readouterr().err


@pytest.mark.parametrize("task", sorted(SMALL))
def test_resume_after_sigkill_matches_uninterrupted_run(task: str, tmp_path: Path) -> None:
    args, keys = SMALL[task]
    epochs = int(args[args.index("--epochs") + 1])
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    reference = subprocess.Popen(cli(*args, "--out", str(ref)), stdout=subprocess.DEVNULL)
    proc = subprocess.Popen(cli(*args, "--out", str(killed)), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    interrupted = metrics(killed)
    assert not interrupted["complete"] and len(interrupted["epochs"]) < epochs
    subprocess.run(
        cli(*args, "--out", str(killed), "--resume"), check=True, stdout=subprocess.DEVNULL
    )
    assert reference.wait() == 0
    a, b = metrics(ref), metrics(killed)
    assert b["complete"] and len(b["epochs"]) == epochs
    for ea, eb in zip(a["epochs"], b["epochs"], strict=True):
        for key in keys:
            assert ea[key] == eb[key], (ea["epoch"], key, ea[key], eb[key])


def test_torchrun_two_processes_match_one(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(cli(*IMAGE, "--out", str(one)), check=True, stdout=subprocess.DEVNULL)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "torchmali",
        "train",
        *IMAGE,
        "--out",
        str(two),
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a, b = metrics(one), metrics(two)
    assert b["world_size"] == 2 and b["complete"]
    assert b["final"]["nfe_backward_per_batch"] > 0
    for ea, eb in zip(a["epochs"], b["epochs"], strict=True):
        # The same global batches and all-reduced (averaged) gradients: equal to the
        # single-process run up to float32 round-off, which training amplifies a little.
        assert eb["train_loss"] == pytest.approx(ea["train_loss"], rel=2e-3)
        assert eb["test_loss"] == pytest.approx(ea["test_loss"], rel=2e-3)


# ---------------------------------------------------------------------------------------------
# Files and options the command line refuses with one line (exit 2), never a traceback.


def _one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def test_out_is_an_existing_file(tmp_path: Path, capsys) -> None:
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert main(["train", "density", "--quick", "--out", str(target)]) == 2
    _one_line_error(capsys, str(target), "existing file", "choose another --out")
    assert main(["bench", "--libraries", "torchmali", "--out", str(target)]) == 2
    _one_line_error(capsys, str(target), "existing file")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_out_cannot_be_created(where: str, tmp_path: Path, capsys) -> None:
    if where == "under_a_file":
        (tmp_path / "f").write_text("")
        out = tmp_path / "f" / "bench"
    else:
        out = Path("/proc/torchmali-test/bench")  # not creatable, not even by root
        if not Path("/proc").is_dir():
            pytest.skip("no /proc")
    argv = ["bench", "--workloads", "mlp", "--steps", "2", "--libraries", "torchmali"]
    assert main([*argv, "--gradients", "direct", "--no-adaptive", "--out", str(out)]) == 2
    _one_line_error(capsys, f"cannot create the --out directory {out}", "choose a writable --out")
    assert main(["train", "density", "--quick", "--out", str(out)]) == 2
    _one_line_error(capsys, str(out))


def _checkpoint_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    keys = ("epoch", "model", "optimizer", "scheduler", "rng", "history", "config")
    torch.save({k: {"weights": torch.arange(1000.0)} for k in keys}, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00garbage" * 10, "(corrupt or truncated?): delete it or use a fresh --out"),
        (b"", "(corrupt or truncated?)"),
        (_checkpoint_bytes()[:2000], "(corrupt or truncated?)"),
        (None, "is not a torchmali train checkpoint: delete it or use a fresh --out"),
    ],
    ids=["garbage", "empty", "truncated", "not_a_checkpoint"],
)
def test_resume_from_an_unreadable_checkpoint(content, message, tmp_path: Path, capsys) -> None:
    path = tmp_path / "checkpoint.pt"
    if content is None:
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    argv = ["train", "density", "--quick", "--resume", "--out", str(tmp_path), *RUN]
    assert main(argv) == 2
    _one_line_error(capsys, f"{path}", message)
    assert path.read_bytes() == before  # never overwritten


def test_unreadable_checkpoint_exits_2_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    proc = subprocess.run(
        cli("density", "--quick", "--resume", "--out", str(tmp_path)),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"torchmali train: error: cannot read {tmp_path / 'checkpoint.pt'} (corrupt or "
        "truncated?): delete it or use a fresh --out (UnpicklingError)"
    ]


def test_os_errors_are_one_line(monkeypatch, capsys) -> None:
    import errno

    from torchmali.experiments import train

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device", "OUT/metrics.json")

    monkeypatch.setattr(train, "run_task", full_disk)
    assert main(["train", "density", "--quick"]) == 2
    _one_line_error(capsys, "OUT/metrics.json", "No space left on device")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "timeseries", "--data", "x"],  # used to become --dataset
        ["train", "density", "--quic"],
        ["train", "image", "--grad", "mali"],
        ["bench", "--work", "mlp"],
    ],
)
def test_abbreviated_options_are_refused(argv: list[str], capsys) -> None:
    from torchmali.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
