"""Experiment tracking end to end (docs/tracking.md): a real tiny training run (``weaktok train``, one process,
DeepSpeed on CPU, the Ray pool scoring validation's generations) with tracking as shipped (TensorBoard on), its event
files read back with TensorBoard's own reader, and the console's per-step line in its log. A resumed run continuing
the same TensorBoard run: tests/integration/test_resume_config.py (across processes) and
tests/unit/train/test_tracking.py (purge_step)."""

import json
import re
import subprocess
import urllib.request

import pytest
from tensorboard.backend.event_processing import event_accumulator as ea

from tests.helpers import REPO, cpu_env, deadline, make_tiny_shards, run, venv_bin
from weaktok.audio import SpecFrontEnd
from weaktok.config import load_config

pytestmark = pytest.mark.slow  # the Ray pool (validation's exact L-Scores)

FAST = [
    "lscore.pool_every=0",
    "lscore.pool_actors=1",
    "data.num_workers=1",
    "metrics.enabled=false",
    "data.samples_per_epoch=8",  # 2 steps per epoch
    "train.log_every=1",
]
STEP_LINE = re.compile(
    r"\[weaktok\] step (\d+)/(\d+) epoch \d+: loss [\d.]+, [\d.]+ samples/s, .* ETA \d+:\d\d:\d\d"
)


def train(out, shards, *extra):
    cmd = [
        venv_bin("weaktok"),
        "train",
        "--config",
        "tiny",
        "--out",
        str(out),
        f"data.shards={shards}",
    ]
    return run([*cmd, *FAST, *extra], env=cpu_env(), cwd=REPO, timeout=300).stdout


def events(out) -> ea.EventAccumulator:
    guidance = {ea.SCALARS: 0, ea.AUDIO: 0, ea.IMAGES: 0, ea.TENSORS: 0}
    acc = ea.EventAccumulator(str(out / "tensorboard"), size_guidance=guidance)
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    shards = make_tiny_shards(
        tmp_path_factory.mktemp("track_shards"), n_train=8, n_val=4, seconds=2.0
    )
    out = tmp_path_factory.mktemp("tracked") / "run"
    log = train(out, shards, "train.epochs=1", "lscore.val_items=2")
    return shards, out, log


def test_the_run_is_in_tensorboard(tracked):
    shards, out, log = tracked
    assert (
        f"tensorboard --logdir {out / 'tensorboard'}" in log
    )  # what docs/tracking.md tells a user to run
    acc = events(out)
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    assert [e.step for e in acc.Scalars("val/val_recon")] == [2]
    assert "val/val_gen_std_dist_total" in acc.Tags()["scalars"]  # the pool scored the generations
    cfg = load_config("tiny")
    frames = SpecFrontEnd.for_config(cfg).num_frames(
        round(cfg.audio.clip_seconds * cfg.audio.sample_rate)
    )
    for mode in ("uncond", "seed"):
        for i in (0, 1):  # tracking.audio_clips = 2 per mode
            (audio,) = acc.Audio(f"audio/{mode}/{i}")
            assert audio.step == 2 and audio.sample_rate == cfg.audio.sample_rate
            assert audio.length_frames == (frames - 1) * cfg.audio.hop_length
            (image,) = acc.Images(f"spectrogram/{mode}/{i}")
            assert image.step == 2 and image.width > image.height
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(
        acc.PluginTagToContent("hparams")
    )
    lines = [m.groups() for m in STEP_LINE.finditer(log)]
    assert lines == [("1", "2"), ("2", "2")]  # every train.log_every steps, of the run's total


def test_the_readme_command_serves_the_run(tracked):
    """A new user's path: the README's tensorboard command, pointed at this run, serves its curves and clips."""
    _, out, _ = tracked
    (logdir,) = re.findall(
        r"`tensorboard --logdir (runs/demo/\S+)`", (REPO / "README.md").read_text()
    )
    logdir = logdir.replace("runs/demo", str(out))
    cmd = [venv_bin("tensorboard"), "--logdir", logdir, "--port", "0"]
    tb = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with deadline(60, "tensorboard's start"):
            url = next(
                m[0] for line in tb.stdout if (m := re.search(r"http://localhost:\d+/", line))
            )

        def tags(plugin: str) -> dict:
            with urllib.request.urlopen(f"{url}data/plugin/{plugin}/tags", timeout=30) as r:
                return json.load(r)["."]

        assert "train/loss" in tags("scalars") and "val/val_recon" in tags("scalars")
        assert "audio/seed/0" in tags("audio") and "spectrogram/seed/0" in tags("images")
    finally:
        tb.terminate()
        tb.wait(timeout=30)
