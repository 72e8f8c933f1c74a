"""Distributed training with real processes: DeepSpeed over gloo on CPU, 2 ranks in bf16 (ZeRO-2 and ZeRO-3, fp32
master weights exported), 2 simulated nodes, kill -9 and resume, the NaN guard. Kept tiny; each test starts real
launchers."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import REPO, cpu_env, make_tiny_shards, read_metrics, run, train_cmd, venv_bin
from weaktok.procenv import free_port
from weaktok.train.hooks import TrainHooks

pytestmark = pytest.mark.slow
FAST = ["lscore.pool_every=0", "lscore.val_items=0", "data.num_workers=1"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("tiny_shards"))


def _complete(run_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in (run_dir / "checkpoints").glob("*/COMPLETE"))


def _bf16_exact_share(t: torch.Tensor) -> float:
    """Share of the values that survive a round trip through bf16 unchanged (1.0 for bf16-rounded weights)."""
    return float((t.float().to(torch.bfloat16).float() == t.float()).float().mean())


def _assert_fp32_master_weights(out: Path) -> dict:
    """final/model.pt holds whole fp32 tensors that are DeepSpeed's fp32 masters, not the bf16 module copies:
    after some AdamW steps most master values are not representable in bf16."""
    weights = torch.load(out / "final" / "model.pt", weights_only=True)["model"]
    assert weights["chunker.q_proj.weight"].shape == (64, 64)  # whole tensors, not ZeRO partitions
    assert all(w.dtype == torch.float32 for w in weights.values())
    big = [w for w in weights.values() if w.numel() >= 256]
    share = sum(_bf16_exact_share(w) for w in big) / len(big)
    assert share < 0.5, (
        f"{share:.2f} of the exported values are bf16-representable: bf16-rounded, not masters"
    )
    # final/ is also a model folder (weaktok/model/artifact.py): its safetensors hold the same fp32 masters
    folder = load_file(str(out / "final" / "model.safetensors"))
    assert folder.keys() == weights.keys() and all(
        torch.equal(folder[k], w) for k, w in weights.items()
    )
    return weights


def test_two_ranks_zero2_bf16_learns_and_ranks_see_different_samples(shards, tmp_path):
    """bf16 for real (DeepSpeed supports it on CPU): the module computes in bf16, front end and losses in fp32."""
    out = tmp_path / "run"
    r = run(
        [
            venv_bin("deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            "--module",
            "weaktok.train",
            "--config",
            "tiny",
            "--out",
            str(out),
            f"data.shards={shards}",
            "train.epochs=4",
            "train.zero_stage=2",
            "train.precision=bf16",
            "data.log_keys=true",
            "curriculum.warmup_epochs=10",
            *FAST,
        ],
        env=cpu_env(),
        cwd=REPO,
        timeout=400,
    )
    assert "ZeRO 2, bf16" in r.stdout
    m = read_metrics(out)
    vals = [r["val_recon"] for r in m if r["kind"] == "val"]
    assert len(vals) == 4 and vals[-1] < vals[0], vals
    train = [r["recon"] for r in m if r["kind"] == "train"]
    assert all(x == x for x in train) and sum(train[-3:]) < sum(train[:3]), train
    keys = [(out / "samples" / f"rank{r}.txt").read_text().split("\n") for r in (0, 1)]
    assert len(keys[0]) == len(keys[1])  # equal batch counts per rank (resampled shards)
    assert keys[0] != keys[1]
    assert _complete(out) and (out / "config.yaml").is_file()
    _assert_fp32_master_weights(out)


def test_two_simulated_nodes_form_one_job(shards, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    out = tmp_path / "run"
    port = free_port()
    env = cpu_env(
        HOSTFILE=hostfile,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=port,
        DEEPSPEED=venv_bin("deepspeed"),
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )
    args = ["--config", "tiny", "--out", str(out), f"data.shards={shards}", "train.epochs=1", *FAST]
    procs = [
        subprocess.Popen(
            ["bash", str(REPO / "cluster" / "launch_multinode.sh"), *args],
            cwd=REPO,
            env={**env, "NODE_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    logs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert "world 2" in logs[0]
    assert [r["kind"] for r in read_metrics(out)].count("val") == 1


def test_kill9_mid_epoch_then_resume_auto(shards, tmp_path):
    out = tmp_path / "run"
    args = train_cmd(
        out,
        shards,
        "train.epochs=3",
        "train.checkpoint_every=3",
        "train.keep_checkpoints=5",
        "data.samples_per_epoch=48",
        *FAST,
    )
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        env=cpu_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 300
    # steps_per_epoch = 12: checkpoints at 3, 6, 9 fall inside epoch 0; kill after step 6's
    while time.time() < deadline and not [t for t in _complete(out) if int(t[4:]) >= 6]:
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(int(t[4:]) for t in _complete(out))
    assert killed_at < 12, "the kill must land mid-epoch"
    r = run(args, env=cpu_env(), cwd=REPO, timeout=400)
    assert f"resumed from {out / 'checkpoints' / f'step{killed_at:08d}'}" in r.stdout, r.stdout[
        -2000:
    ]
    m = read_metrics(out)
    vals = [v for v in m if v["kind"] == "val"]
    assert [v["epoch"] for v in vals][-3:] == [1, 2, 3]
    assert vals[-1]["step"] == 36  # 3 epochs x 12 steps: nothing lost, nothing repeated
    after = [x for x in m if x["kind"] == "train" and x["step"] > killed_at]
    assert after and after[0]["step"] <= killed_at + 2  # continues right after the checkpoint
    for x in after:  # curriculum weights follow progress exactly (warm-up 1 epoch, anneal 1 epoch)
        expect = 0.0 if x["progress"] < 1 else min(1.0, x["progress"] - 1) * 0.1
        assert x["w_L"] == pytest.approx(expect, abs=1e-4)  # progress is logged rounded to 1e-4


def test_two_ranks_zero3_bf16_learns_and_exports_fp32_master_weights(shards, tmp_path):
    out = tmp_path / "run"
    r = run(
        [
            venv_bin("deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            "--module",
            "weaktok.train",
            "--config",
            "tiny",
            "--out",
            str(out),
            f"data.shards={shards}",
            "train.epochs=3",
            "train.zero_stage=3",
            "train.precision=bf16",
            "curriculum.warmup_epochs=10",
            *FAST,
        ],
        env=cpu_env(),
        cwd=REPO,
        timeout=400,
    )
    assert "ZeRO 3, bf16" in r.stdout
    vals = [x["val_recon"] for x in read_metrics(out) if x["kind"] == "val"]
    assert len(vals) == 3 and vals[-1] < vals[0], vals
    _assert_fp32_master_weights(out)  # gathered from the ZeRO-3 partitions by zero_to_fp32


class PoisonHook(TrainHooks):
    """Makes the batches of the given steps non-finite (a real NaN reaching the loss)."""

    def __init__(self, batches):
        self.batches, self.seen = set(batches), 0

    def on_batch(self, batch: dict, state: dict) -> None:
        if self.seen in self.batches:
            batch["audio"][0, :100] = float("nan")
        self.seen += 1


def _nan_run(shards, out):
    from weaktok.config import load_config
    from weaktok.procenv import single_process_env
    from weaktok.train import train

    os.environ.update(single_process_env(os.environ))
    cfg = load_config(
        "tiny", [f"data.shards={shards}", "train.epochs=1", "data.samples_per_epoch=24", *FAST]
    )
    train(cfg, out, hooks=[PoisonHook({1, 4})])


def test_nan_loss_steps_are_skipped_and_counted(shards, tmp_path):
    out = tmp_path / "run"
    os.environ.update({k: v for k, v in cpu_env().items() if k == "DS_ACCELERATOR"})
    p = mp.get_context("spawn").Process(target=_nan_run, args=(str(shards), str(out)))
    p.start()
    p.join(300)
    assert p.exitcode == 0
    m = read_metrics(out)
    train = [r for r in m if r["kind"] == "train"]
    assert train[-1]["nan_skipped"] == 2
    assert all(
        r["loss"] == r["loss"] for r in train
    )  # no NaN was ever applied or logged as the step loss
    val = [r for r in m if r["kind"] == "val"][-1]
    assert (
        val["step"] == 4 and val["val_recon"] == val["val_recon"]
    )  # 6 batches - 2 skipped = 4 steps, finite


def test_compiled_training_runs_through_deepspeed(shards, tmp_path):
    """train.compile=true: the model is compiled by DeepSpeed's engine.compile and trains, checkpoints and exports.
    aot_eager traces the same graphs inductor would compile (inductor's C++ build takes minutes on 2 cores); the
    graph-level properties (no graph break, no recompile across batches) are checked in
    tests/unit/model/test_compile.py."""
    out = tmp_path / "run"
    run(
        [
            venv_bin("weaktok"),
            "train",
            "--config",
            "tiny",
            "--out",
            str(out),
            f"data.shards={shards}",
            "train.epochs=1",
            "data.samples_per_epoch=16",
            "train.compile=true",
            "train.compile_backend=aot_eager",
            *FAST,
        ],
        env=cpu_env(),
        cwd=REPO,
    )
    train = [r for r in read_metrics(out) if r["kind"] == "train"]
    assert train and all(r["loss"] == r["loss"] for r in train)
    weights = torch.load(out / "final" / "model.pt", weights_only=True)["model"]
    assert "chunker.q_proj.weight" in weights  # compiling in place keeps the parameter names
