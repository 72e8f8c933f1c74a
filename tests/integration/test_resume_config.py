"""Safe resume (issue #13): each checkpoint keeps the config it was written under (config.yaml), and re-running a
run folder compares it with the new config before any tensor is loaded.

  * a change that cannot load (parameter shapes, ZeRO layout, precision, ranks) -> refused before any compute,
    naming each key old -> new and the ways forward; no checkpoint renamed;
  * a change that loads (lr, epochs, ...) -> resumed, each key logged old -> new, and it takes effect;
  * a checkpoint without config.yaml (older weaktok) that does not load -> an error, never set aside as .corrupt;
  * ``train.init_from`` -> a new run (step 0) from a checkpoint's weights; another shape -> an error naming the
    parameters.

Real processes (DeepSpeed over gloo on CPU, 1 rank) for the end-to-end cases; the rest are fast unit checks.
"""

import dataclasses
import json
import shutil
import subprocess
import typing
import zipfile
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import REPO, cpu_env, make_tiny_shards, read_metrics, run, train_cmd
from weaktok.config import Config, ConfigError, load_config, to_dict
from weaktok.train import SHAPE_KEYS, config_changes, load_blockers, unreadable_files

FAST = [
    "lscore.pool_every=0",
    "lscore.val_items=0",
    "data.num_workers=1",
    "metrics.enabled=false",
    "data.samples_per_epoch=8",
    "train.log_every=1",
]  # 2 steps per epoch


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("resume_shards"), n_train=8, n_val=4)


@pytest.fixture(scope="module")
def first_run(shards, tmp_path_factory):
    """One epoch, a checkpoint after each of its 2 steps; later tests copy it, never change it."""
    out = tmp_path_factory.mktemp("first") / "run"
    run(
        _cmd(out, shards, "train.epochs=1", "train.checkpoint_every=1", "train.keep_checkpoints=5"),
        env=cpu_env(),
        cwd=REPO,
    )
    return out


def _cmd(out: Path, shards: Path, *extra: str) -> list[str]:
    return train_cmd(out, shards, *FAST, *extra)


def _train(out: Path, shards: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        _cmd(out, shards, *extra),
        env=cpu_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    return dest


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run folder, by relative path, with its bytes."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


# ----------------------------------------------------------------------------------------------------------
# end to end


@pytest.mark.slow
def test_shape_change_is_refused_before_compute_and_nothing_is_renamed(first_run, shards, tmp_path):
    out = _copy(first_run, tmp_path / "run")
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step*")) == ["step00000001", "step00000002"]
    assert (ckpts / "step00000002" / "config.yaml").is_file()
    before = _snapshot(out)
    p = _train(out, shards, "train.epochs=2", "model.dim=96")
    log = p.stdout + p.stderr
    assert p.returncode == 2, log[-3000:]
    assert "model.dim: 64 -> 96 (parameter shapes)" in log, log[-3000:]
    assert f"checkpoint {ckpts / 'step00000002'} cannot be resumed" in log
    assert "--out NEW" in log and f"train.init_from={ckpts / 'step00000002'}" in log
    assert (
        "M params" not in log and "resumed from" not in log
    )  # stopped before the engine was built
    assert (
        _snapshot(out) == before
    )  # every checkpoint under its own name, byte for byte; config.yaml and metrics too


@pytest.mark.slow
def test_compatible_change_resumes_logs_the_change_and_takes_effect(first_run, shards, tmp_path):
    out = _copy(first_run, tmp_path / "run")
    r = run(_cmd(out, shards, "train.epochs=2", "train.lr=1e-3"), env=cpu_env(), cwd=REPO)
    ckpt = out / "checkpoints" / "step00000002"
    assert f"resumed from {ckpt}: step 2" in r.stdout, r.stdout[-3000:]
    assert f"config changed since checkpoint {ckpt}" in r.stdout
    assert "[weaktok]   train.lr: 0.002 -> 0.001\n" in r.stdout
    assert "[weaktok]   train.epochs: 1 -> 2\n" in r.stdout
    assert "WARNING" not in r.stdout
    lr = {m["step"]: m["lr"] for m in read_metrics(out) if m["kind"] == "train"}
    # tiny: 4 warm-up steps; the resumed steps use the new base lr (a resume used to restore the old one)
    assert lr[3] == pytest.approx(1e-3) and lr[2] == pytest.approx(2e-3 * 3 / 4), lr
    # the resumed process appends to the same TensorBoard run (docs/tracking.md): the steps continue, once each
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/lr")] == [1, 2, 3, 4]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2


@pytest.mark.slow
def test_checkpoint_without_config_that_does_not_load_is_kept_then_resumes_with_a_warning(
    first_run, shards, tmp_path
):
    """Checkpoints written before config.yaml existed: nothing to compare before loading. A load that fails with
    every file intact is a mismatch, not damage: an error, and the checkpoints stay where they are."""
    out = _copy(first_run, tmp_path / "run")
    ckpts = out / "checkpoints"
    for f in ckpts.glob("step*/config.yaml"):
        f.unlink()
    p = _train(out, shards, "train.epochs=2", "model.dim=96")
    log = p.stdout + p.stderr
    assert p.returncode != 0
    assert (
        f"checkpoint {ckpts / 'step00000002'} is intact but does not load into this job" in log
    ), log[-3000:]
    assert sorted(d.name for d in ckpts.glob("step*")) == [
        "step00000001",
        "step00000002",
    ]  # no .corrupt

    r = run(
        _cmd(out, shards, "train.epochs=2", "train.max_steps=2"), env=cpu_env(), cwd=REPO
    )  # load, no steps
    assert f"WARNING: checkpoint {ckpts / 'step00000002'} holds no config.yaml" in r.stdout, (
        r.stdout[-3000:]
    )
    assert (
        "resumed from" in r.stdout and "[weaktok]   train.epochs: 1 -> 2" in r.stdout
    )  # from its client state


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_the_weights(first_run, shards, tmp_path):
    source = first_run / "final" / "model.pt"  # the weights of step 2, the newest checkpoint
    out = tmp_path / "new"
    # lr ~0 and another seed: after one step the weights are the source's only if training really started from
    # them (ZeRO's fp32 master copy included); a fresh init (seed 1) is far from them
    r = run(
        _cmd(
            out,
            shards,
            f"train.init_from={first_run / 'checkpoints'}",
            "seed=1",
            "train.lr=1e-9",
            "train.max_steps=1",
        ),
        env=cpu_env(),
        cwd=REPO,
    )
    assert (
        f"new run from the weights of {first_run / 'checkpoints' / 'step00000002'}" in r.stdout
    ), r.stdout[-3000:]
    assert [m["step"] for m in read_metrics(out) if m["kind"] == "train"] == [
        1
    ]  # step 0 -> 1: a new run
    assert sorted(p.name for p in (out / "checkpoints").glob("step*")) == ["step00000001"]
    want = torch.load(source, weights_only=True)["model"]
    got = torch.load(out / "final" / "model.pt", weights_only=True)["model"]
    assert max((got[k] - want[k]).abs().max().item() for k in want) < 1e-6

    p = _train(
        tmp_path / "other", shards, f"train.init_from={source}", "model.dim=96", "train.max_steps=1"
    )
    log = p.stdout + p.stderr
    assert p.returncode == 2, log[-3000:]
    assert (
        f"train.init_from={source}: its weights do not fit this model (model.dim: 64 -> 96)" in log
    )
    assert "down3.conv.weight: (64, 64, 4) there, (96, 64, 4) here" in log
    assert not (tmp_path / "other" / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------------------
# fast checks of the pieces


def _other_value(key: str, value, tp):
    """A different valid value for a config key (generic, so keys added later are covered too)."""
    if typing.get_origin(tp) is typing.Literal:
        return next(c for c in typing.get_args(tp) if c != value)
    if tp is bool:
        return not value
    if tp is int:
        return value * 2 or 1
    if tp is float:
        return value * 0.5 or 0.1
    if typing.get_origin(tp) is list:
        return [v * 2 for v in value]
    raise AssertionError(f"no rule for {key} ({tp}): extend _other_value")


def _leaves(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaves(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hints[f.name]


def _shapes(cfg: Config) -> dict:
    from weaktok.audio import SpecFrontEnd
    from weaktok.model.unet import build_model

    front = SpecFrontEnd(cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length)
    return {
        k: tuple(v.shape) for k, v in build_model(cfg.model, front.n_freqs).state_dict().items()
    }


def test_shape_keys_are_exactly_the_keys_that_change_parameter_shapes():
    base = load_config("tiny")
    reference, flow_reference = (
        _shapes(base),
        _shapes(load_config("tiny", ["model.objective=flow"])),
    )
    found = []
    for key, tp in _leaves(Config):
        if not key.startswith(("model.", "audio.")):
            continue
        node = to_dict(base)
        for part in key.split("."):
            node = node[part]
        override = f"{key}={json.dumps(_other_value(key, node, tp))}"
        try:
            changed, ref = load_config("tiny", [override]), reference
        except (
            ConfigError
        ):  # a key only some models take (model.skips: flow models): try it on one of those
            changed, ref = load_config("tiny", ["model.objective=flow", override]), flow_reference
        if _shapes(changed) != ref:
            found.append(key)
    assert sorted(found) == sorted(SHAPE_KEYS)


def test_load_blockers_name_what_cannot_load():
    tiny = to_dict(load_config("tiny"))

    def blockers(overrides, marker=None, world=1, old=tiny):
        cfg = load_config("tiny", overrides)
        return load_blockers(config_changes(old, cfg), marker or {}, cfg, world)

    assert (
        blockers(["train.lr=1e-3", "train.epochs=9", "curriculum.final_w_L=0.5", "model.n_heads=4"])
        == []
    )
    assert blockers(["train.zero_stage=1"]) == []  # ZeRO 1 and 2 store the optimizer state alike
    assert blockers(["model.dim=96", "train.lr=1e-3"]) == ["model.dim: 64 -> 96 (parameter shapes)"]
    assert blockers(["model.chunking.kind=fixed"]) == [
        "model.chunking.kind: 'dynamic' -> 'fixed' (parameter shapes)"
    ]
    assert blockers(["train.zero_stage=3"]) == ["train.zero_stage: 2 -> 3 (optimizer state layout)"]
    assert blockers(["train.zero_stage=0"]) == ["train.zero_stage: 2 -> 0 (optimizer state layout)"]
    assert blockers([], {"bf16": True}) == [
        "train.precision in effect: bf16 -> fp32 (optimizer state layout; train.precision is 'auto')"
    ]
    assert blockers([], {"world": 2}) == [
        "ranks: 2 -> 1 (ZeRO stage 2 partitions the optimizer state by rank)"
    ]
    zero0 = to_dict(load_config("tiny", ["train.zero_stage=0"]))
    assert (
        blockers(["train.zero_stage=0"], {"world": 2}, old=zero0) == []
    )  # ZeRO 0: a full copy, any number of ranks
    assert (
        config_changes(zero0, load_config("tiny", ["train.zero_stage=0", "train.resume=never"]))
        == {}
    )


def test_unreadable_files_finds_damage_without_unpickling(tmp_path):
    torch.save({"w": torch.arange(1000.0)}, tmp_path / "a.pt")
    good = (tmp_path / "a.pt").read_bytes()
    assert unreadable_files(tmp_path) == []
    (tmp_path / "b.pt").write_bytes(good[: len(good) // 2])  # truncated
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    (tmp_path / "c.pt").write_bytes(bytes(flipped))  # one bit rotted: the record's CRC catches it
    assert unreadable_files(tmp_path) == ["b.pt", "c.pt"]
    with zipfile.ZipFile(
        tmp_path / "a.pt"
    ) as z:  # what the check relies on: torch.save writes zip archives
        assert z.testzip() is None


def test_init_from_config_check(tmp_path):
    with pytest.raises(
        ConfigError, match=r"'train.init_from': .*nowhere does not exist; give a checkpoint folder"
    ):
        load_config("tiny", [f"train.init_from={tmp_path / 'nowhere'}"])
    with pytest.raises(
        ConfigError, match=r"'train.init_from': .* is not a checkpoint folder holding COMPLETE"
    ):
        load_config("tiny", [f"train.init_from={tmp_path}"])
    with pytest.raises(ConfigError, match="'train.init_from': must name"):
        load_config("tiny", ["train.init_from=' '"])
    tag = tmp_path / "checkpoints" / "step00000004"
    tag.mkdir(parents=True)
    (tag / "COMPLETE").write_text('{"step": 4, "epoch": 1}')
    (tmp_path / "model.pt").write_bytes(b"")
    for ok in (tag, tag.parent, tmp_path / "model.pt"):
        assert load_config("tiny", [f"train.init_from={ok}"]).train.init_from == str(ok)
