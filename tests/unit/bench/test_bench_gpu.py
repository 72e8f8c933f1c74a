"""``weaktok bench gpu`` (issue 14) and the sync/op counts of bench train's bare step.

Without CUDA the gpu section reports one "skipped" line and exits 0; with CUDA ``--quick`` runs every measurement.
The bare step's host syncs are counted on CPU: the only one is the training loop's NaN check (``all_finite``)."""

import json

import pytest
import torch

from weaktok.bench.gpu import SKIPPED
from weaktok.bench.train import bare_parts, bare_step, step_counts
from weaktok.cli import main
from weaktok.config import load_config


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip path is for machines without CUDA")
def test_bench_gpu_skips_cleanly_without_cuda(tmp_path, capsys):
    # the gpu options reach run() (unknown keyword arguments would raise) and change nothing without CUDA
    assert (
        main(
            [
                "bench",
                "gpu",
                "--no-compile",
                "--compile-backend",
                "aot_eager",
                "--set",
                "data.batch_size=128",
                "--shards",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert SKIPPED in capsys.readouterr().out
    [result] = json.loads((tmp_path / "gpu.json").read_text())["results"]
    assert result["goal"] == SKIPPED and result["passed"] is None


@pytest.mark.parametrize("bf16", [False, True])
def test_bare_step_host_syncs_are_the_nan_check_only(bf16):
    torch.manual_seed(0)
    cfg = load_config("tiny", [])
    front, lscore_fn, model, opt = bare_parts(cfg, bf16=bf16)
    audio = 0.1 * torch.randn(2, int(cfg.audio.clip_seconds * cfg.audio.sample_rate))
    target = {"mean": torch.zeros(4), "std": torch.ones(4)}
    whole, to_opt = step_counts(bare_step(cfg, front, lscore_fn, model, opt, audio, target))
    # front end + compute_loss + backward + clipping: none; all_finite's .item(): one
    assert to_opt.sync_ops == {"_local_scalar_dense": 1}
    assert whole.ops > to_opt.ops > 100 and whole.kernels > to_opt.kernels


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_gpu_quick_on_cuda(tmp_path):
    assert (
        main(["bench", "gpu", "--quick", "--compile-backend", "aot_eager", "--out", str(tmp_path)])
        == 0
    )
    results = json.loads((tmp_path / "gpu.json").read_text())["results"]
    assert not [r for r in results if r["note"].startswith("failed")], results
    syncs = next(r for r in results if r["name"] == "host syncs per bare step")
    assert syncs["value"] <= 1
