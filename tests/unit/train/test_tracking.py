"""The trackers (weaktok/train/tracking.py) without training: a missing optional backend is a config error naming
its key; TensorBoard off writes nothing; records and clips become TensorBoard data read back with TensorBoard's
own reader; the per-step console line."""

import importlib.util

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator as ea

from weaktok.config import ConfigError, load_config
from weaktok.train.records import step_line
from weaktok.train.tracking import (
    TENSORBOARD_DIR,
    TensorBoard,
    Tracker,
    check_tracking,
    scalars,
    start_reporting,
)
from weaktok.train.validation import ValClip

ALL = {ea.SCALARS: 0, ea.AUDIO: 0, ea.IMAGES: 0, ea.TENSORS: 0}


def read_events(folder) -> ea.EventAccumulator:
    acc = ea.EventAccumulator(str(folder), size_guidance=ALL)
    acc.Reload()
    return acc


@pytest.mark.parametrize("key", ["wandb", "mlflow"])
def test_an_enabled_backend_without_its_package_is_a_config_error_naming_the_key(key):
    if importlib.util.find_spec(key) is not None:
        pytest.skip(f"{key} is installed here")
    cfg = load_config("tiny", [f"tracking.{key}=true"])  # loads: a config is portable
    with pytest.raises(ConfigError, match=rf"'tracking\.{key}'.*pip install 'weaktok\[{key}\]'"):
        check_tracking(cfg)
    check_tracking(load_config("tiny"))  # TensorBoard needs no extra


def test_tensorboard_off_writes_no_event_files(tmp_path):
    cfg = load_config("tiny", ["tracking.tensorboard=false"])
    hooks = start_reporting(cfg, tmp_path, True, 0, 10)
    assert [type(h).__name__ for h in hooks] == ["ConsoleLine"]
    for h in hooks:
        h.on_log({"kind": "train", "step": 1, "epoch": 0, "loss": 1.0, "samples_per_s": 1.0,
                  "audio_s_per_s": 2.0, "step_time_s": 0.5})  # fmt: skip
        h.close()
    assert list(tmp_path.rglob("*")) == []
    assert start_reporting(load_config("tiny"), tmp_path, False, 0, 10) == []  # rank > 0: nothing


def test_scalars_take_numbers_and_name_the_lscore_terms():
    rec = {"kind": "val", "step": 4, "epoch": 1, "val_recon": 0.5, "phase": "anneal",
           "val_gen_uncond_lscore": [1, 2, 3, 4], "val_gen_error": "x", "bad": float("nan"),
           "pool": {"calls": 3}}  # fmt: skip
    assert scalars(rec) == {
        "val/epoch": 1.0,
        "val/val_recon": 0.5,
        "val/val_gen_uncond_lscore/timbral": 1.0,
        "val/val_gen_uncond_lscore/density": 2.0,
        "val/val_gen_uncond_lscore/irregularity": 3.0,
        "val/val_gen_uncond_lscore/structural": 4.0,
        "val/pool/calls": 3.0,
    }


def test_records_and_clips_reach_tensorboard(tmp_path):
    cfg = load_config("tiny")
    sr = cfg.audio.sample_rate
    hooks = start_reporting(cfg, tmp_path, True, 0, 10)
    tracker = next(h for h in hooks if isinstance(h, Tracker))
    for step in (1, 2):
        tracker.on_log({"kind": "train", "step": step, "epoch": 0, "loss": 1.0 / step})
    tracker.on_validation({"kind": "val", "step": 2, "epoch": 1, "val_recon": 0.25})
    rng = np.random.default_rng(0)
    wave = (2.5 * rng.standard_normal(sr // 2)).astype(np.float32)  # over 1: scaled, never clipped
    clip = ValClip("seed", 0, wave, rng.random((65, 40)), np.array([0, 8, 24]), 20)
    tracker.on_val_clips(2, [clip])
    tracker.close()
    acc = read_events(tmp_path / TENSORBOARD_DIR)
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 1.0), (2, 0.5)]
    assert [e.step for e in acc.Scalars("val/val_recon")] == [2]
    (audio,) = acc.Audio("audio/seed/0")
    assert (audio.step, audio.sample_rate, audio.length_frames) == (2, sr, sr // 2)
    (image,) = acc.Images("spectrogram/seed/0")
    assert image.step == 2 and image.width > image.height > 100
    hp = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in hp and "_hparams_/session_start_info" in hp


def test_step_line_has_progress_throughput_and_eta():
    rec = {"step": 10, "epoch": 0, "loss": 0.123456, "samples_per_s": 8.0, "audio_s_per_s": 16.0,
           "step_time_s": 2.0}  # fmt: skip
    line = step_line(rec, total_steps=3610)
    assert line == "step 10/3610 epoch 0: loss 0.1235, 8.0 samples/s, 16.0 audio s/s, ETA 2:00:00"


def test_a_resumed_writer_drops_what_the_killed_run_logged_past_its_checkpoint(tmp_path):
    """Killed after step 3, resumed from the step-1 checkpoint: steps 2 and 3 come from the resumed run only."""
    first = TensorBoard(tmp_path, resumed_step=0)
    first.scalars({"train/loss": 1.0}, 1)
    first.scalars({"train/loss": 2.0}, 2)
    first.scalars({"train/loss": 3.0}, 3)
    first.close()
    resumed = TensorBoard(tmp_path, resumed_step=1)
    for step in (2, 3, 4):
        resumed.scalars({"train/loss": 10.0 * step}, step)
    resumed.close()
    loss = read_events(tmp_path).Scalars("train/loss")
    assert [(e.step, e.value) for e in loss] == [(1, 1.0), (2, 20.0), (3, 30.0), (4, 40.0)]
