"""Experiment tracking end to end (docs/tracking.md): the session's tiny flow run (``weaktok train``, one process,
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

from tests.helpers import REPO, deadline, read_metrics, venv_bin
from weaktok.audio import SpecFrontEnd
from weaktok.config import load_config

pytestmark = pytest.mark.slow  # the Ray pool (validation's exact L-Scores)

STEP_LINE = re.compile(
    r"\[weaktok\] step (\d+)/(\d+) epoch \d+: loss [\d.]+, [\d.]+ samples/s, .* ETA \d+:\d\d:\d\d"
)


def events(out) -> ea.EventAccumulator:
    guidance = {ea.SCALARS: 0, ea.AUDIO: 0, ea.IMAGES: 0, ea.TENSORS: 0}
    acc = ea.EventAccumulator(str(out / "tensorboard"), size_guidance=guidance)
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def tracked(flow_run):
    """The session's tiny flow run (tests/integration/conftest.py): tracking as shipped, the pool on."""
    shards, out, log = flow_run
    return shards, out, log


def test_the_run_is_in_tensorboard(tracked):
    shards, out, log = tracked
    assert (
        f"tensorboard --logdir {out / 'tensorboard'}" in log
    )  # what docs/tracking.md tells a user to run
    acc = events(out)
    records = read_metrics(out)  # TensorBoard mirrors metrics.jsonl, step for step
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    val_steps = [r["step"] for r in records if r["kind"] == "val"]
    assert len(train_steps) >= 2 and len(val_steps) == 2
    assert [e.step for e in acc.Scalars("train/loss")] == train_steps
    assert [e.step for e in acc.Scalars("val/val_recon")] == val_steps
    assert "val/val_gen_std_dist_total" in acc.Tags()["scalars"]  # the pool scored the generations
    cfg = load_config("tiny")
    frames = SpecFrontEnd.for_config(cfg).num_frames(
        round(cfg.audio.clip_seconds * cfg.audio.sample_rate)
    )
    for mode in ("uncond", "seed"):
        for i in (0, 1):  # tracking.audio_clips = 2 per mode
            audios = acc.Audio(f"audio/{mode}/{i}")  # one per validation
            assert [a.step for a in audios] == val_steps
            audio = audios[-1]
            assert audio.sample_rate == cfg.audio.sample_rate
            assert audio.length_frames == (frames - 1) * cfg.audio.hop_length
            images = acc.Images(f"spectrogram/{mode}/{i}")
            assert [m.step for m in images] == val_steps and images[-1].width > images[-1].height
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(
        acc.PluginTagToContent("hparams")
    )
    lines = [m.groups() for m in STEP_LINE.finditer(log)]
    total = str(val_steps[-1])
    assert lines == [
        (str(s), total) for s in train_steps
    ]  # every train.log_every steps, of the run's total


def test_the_readme_command_serves_the_run(tracked):
    """A new user's path: the README's tensorboard command, pointed at this run, serves its curves and clips."""
    _, out, _ = tracked
    (logdir,) = re.findall(
        r"`tensorboard --logdir (runs/demo/\S+)`", (REPO / "README.md").read_text()
    )
    logdir = logdir.replace("runs/demo/train", str(out))  # make demo's run folder
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
