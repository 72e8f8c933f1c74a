"""A model you can hand to someone (docs/api.md): a trained ``tiny`` run, ``weaktok export``-ed
through the real CLI, copy the folder alone elsewhere, move the training shards away, and in a fresh process
whose cwd is another folder run the docs' Python example on the copy, then generate, continue a real sonic-pi
loop, reconstruct and encode."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

from tests.helpers import REPO, SAMPLES, cpu_env, run, venv_bin
from tests.unit.generate.test_generate import tiny_model

LOOP = SAMPLES / "loop_amen.flac"
DOCS_MODEL = "models/demo"  # the folder the docs' example loads; the test substitutes its copy


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The session's trained tiny model (tests/unit/generate/test_generate.py ``tiny_model``: one real training
    process, shared with the generation and evaluation tests, so this module trains nothing of its own),
    exported through the real CLI."""
    shards, out = tiny_model(tmp_path_factory)
    model = tmp_path_factory.mktemp("export_api") / "model"
    run([venv_bin("weaktok"), "export", str(out), "--out", str(model)], env=cpu_env(), cwd=REPO)
    return shards, out, model


def test_export_holds_the_runs_fp32_weights_config_and_a_model_card(exported):
    shards, out, model = exported
    weights = load_file(str(model / "model.safetensors"))
    trained = torch.load(out / "final" / "model.pt", weights_only=True)
    assert weights.keys() == trained["model"].keys()
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())
    assert all(torch.equal(weights[k], v) for k, v in trained["model"].items())
    # training's own final/ is the same kind of folder, with the same weights
    final = load_file(str(out / "final" / "model.safetensors"))
    assert all(torch.equal(final[k], v) for k, v in weights.items())
    raw = json.loads((model / "config.json").read_text())
    assert raw == yaml.safe_load((model / "config.yaml").read_text()) == trained["config"]
    prior = load_file(str(model / "prior.safetensors"))
    assert prior["mean"].shape == (raw["audio"]["n_fft"] // 2 + 1,)
    assert {p.name for p in model.glob("surrogate_*.safetensors")} == {
        "surrogate_2s.safetensors",
        "surrogate_8s.safetensors",
    }
    card = (model / "README.md").read_text()
    for needle in (
        "# weaktok model: tiny",
        str(shards),
        "train ",
        "CC0",
        "Apache-2.0",
        "docs/results.md",
    ):
        assert needle in card, needle


def test_the_folder_alone_generates_in_a_fresh_process(exported, tmp_path):
    shards, _, model = exported
    copy = tmp_path / "elsewhere" / "my-model"
    shutil.copytree(model, copy)
    files = sorted(p.name for p in copy.iterdir())
    example = re.search(r"```python\n(.*?)```", (REPO / "docs" / "api.md").read_text(), re.S)
    code = example.group(1).replace(DOCS_MODEL, str(copy))
    assert str(copy) in code
    check = f"""
{code}
import json
import numpy as np
import torch
loop, loop_sr = sf.read({str(LOOP)!r}, dtype="float32", always_2d=True)
loop = loop.mean(axis=1)
cont = tok.continue_audio(torch.from_numpy(loop), loop_sr, seconds=2.0, seed=1)
summary = {{
    "sr": tok.sample_rate,
    "shapes": [list(audio.shape), list(more.shape), list(again.shape), list(cont.shape)],
    "finite": all(bool(np.isfinite(x).all()) for x in (audio, more, again, cont, tokens.embeddings)),
    "rms": [float(np.sqrt(np.mean(x ** 2))) for x in (audio[0], audio[1], more, again)],
    "dtypes": sorted({{str(x.dtype) for x in (audio, more, again, tokens.embeddings)}}),
    "boundaries": tokens.boundaries.tolist(),
    "n_chunks": tokens.n_chunks,
    "embeddings": list(tokens.embeddings.shape),
    "duration": tokens.duration,
    "loop_seconds": len(wave) / sr,
    "same_seed": bool(np.array_equal(audio, tok.generate(n=2, seconds=2.0, seed=0))),
    "loaded_from": str(tok.loaded.path),
}}
print("SUMMARY " + json.dumps(summary))
"""
    away = shards.with_name(shards.name + ".away")
    shards.rename(away)  # the training shards are gone: the folder must carry everything
    try:
        work = tmp_path / "cwd"
        work.mkdir()
        env = cpu_env()
        env["PYTHONPATH"] = ""  # weaktok as installed, not the repository checkout
        r = subprocess.run(
            [sys.executable, "-c", check],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        away.rename(shards)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout.split("SUMMARY ", 1)[1])
    sr, hop = s["sr"], json.loads((model / "config.json").read_text())["audio"]["hop_length"]
    n = (2 * sr // hop) * hop
    assert s["shapes"] == [[2, n], [n], [int(s["loop_seconds"] * sr) // hop * hop], [n]]
    assert s["finite"] and s["dtypes"] == ["float32"] and s["same_seed"]
    assert min(s["rms"]) > 1e-3  # not silence
    b = np.asarray(s["boundaries"])
    assert len(b) == s["n_chunks"] >= 1 and b[0] == 0 and np.all(np.diff(b) > 0)
    assert b[-1] <= s["duration"] and abs(s["duration"] - s["loop_seconds"]) < 1e-3
    assert s["embeddings"][0] == s["n_chunks"] and s["embeddings"][1] == 64
    assert s["loaded_from"] == str(copy / "model.safetensors")
    assert (work / "generated.wav").is_file() and sf.info(work / "generated.wav").samplerate == sr
    assert sorted(p.name for p in copy.iterdir()) == files  # nothing had to be computed and cached


def test_the_api_gives_what_weaktok_generate_writes(exported, tmp_path):
    from weaktok import WeakTok
    from weaktok.generate import generate

    _, out, model = exported
    # the run folder: training's final/ is a model folder
    tok = WeakTok.from_pretrained(out, device="cpu")
    assert tok.loaded.path == out / "final" / "model.safetensors"
    audio = WeakTok.from_pretrained(model, device="cpu").generate(n=2, seconds=1.0, seed=3, steps=2)
    generate(model, tmp_path, n=2, seconds=1.0, seed=3, steps=2, device="cpu")
    for i, wave in enumerate(audio):
        written, _ = sf.read(tmp_path / f"uncond_{i:02d}.wav", dtype="float32")
        assert np.abs(written - wave).max() <= 1.5 / 32767  # equal up to the WAV's 16-bit rounding
