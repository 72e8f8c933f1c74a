"""Generation from a tiny trained model: both modes write WAVs + PNGs; unconditional outputs are not silence, not
white noise, not copies of training items; user errors name the file."""

import json
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from tests.helpers import REPO, cpu_env, run, train_cmd, venv_bin
from weaktok.audio import load_audio
from weaktok.data.loader import eval_loader

FAST = ["lscore.pool_every=0", "lscore.val_items=0", "data.num_workers=1"]


class SerialPool:
    """Stands in for the Ray L-Score pool in build_shards (a few items: no cluster start-up)."""

    def map(self, waves, sr):
        from weaktok.lscore.exact import exact_lscore

        return np.stack([exact_lscore(w, sr) for w in waves])


def tiny_model(tmp_path_factory) -> tuple[Path, Path]:
    """(shards, run): 40 loops of the embedded corpus, the tiny config trained for 3 epochs (masked spans filled
    with generation's prior noise). Built once per test
    session and shared by the modules that need a trained model. (The embedded corpus, not make_tiny_shards: half
    of those items are clicks over a white-noise floor, which would make "not white noise" meaningless.)"""
    from weaktok.data.corpus import build_corpus
    from weaktok.data.shards import build_shards

    base = tmp_path_factory.getbasetemp() / "weaktok_tiny_model"
    shards, out = base / "shards", base / "run"
    if not (out / "final" / "model.pt").is_file():
        build_corpus(base / "corpus", n=40, seed=0, progress=False)
        build_shards(base / "corpus", shards, min_shards=2, pool=SerialPool(), progress=False)
        run(
            train_cmd(
                out,
                shards,
                "train.epochs=3",
                "curriculum.warmup_epochs=1",
                "curriculum.anneal_epochs=1",
                "train.corruption.fill=prior",
                "train.corruption.mask_max_fraction=1.0",
                *FAST,
            ),
            env=cpu_env(),
            cwd=REPO,
            timeout=300,
        )
        # training with fill=prior leaves generation's prior beside the weights
        stats = torch.load(out / "final" / "spectrum.pt", weights_only=True)
        assert stats["components"].shape[0] == 16 and (stats["resid_std"] >= 0).all()
    return shards, out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return tiny_model(tmp_path_factory)


def _spec(y: np.ndarray, sr: int) -> np.ndarray:
    """Log-magnitude spectrogram of the clip at a fixed RMS: the distance then compares content, not loudness
    (unnormalised, a quiet output sat near every quiet training item, and the copy check failed on one CI run
    where the outputs were 1.4x a copy's distance; loudness-normalised, 3 training seeds x 2 generation seeds
    gave 3.4-8x a copy's distance, held-out real items 3.5-10x)."""
    y = y / max(float(np.sqrt(np.mean(y**2))), 1e-8) * 0.1
    return np.log1p(np.abs(librosa.stft(y, n_fft=512, hop_length=128)))  # (F, T)


def _flatness(y: np.ndarray) -> float:
    return float(np.mean(librosa.feature.spectral_flatness(y=y, n_fft=512, hop_length=128)))


def _train_specs(shards: Path, sr: int) -> list[np.ndarray]:
    return [
        _spec(a.numpy(), sr) for b in eval_loader(str(shards), "train", 8, 2.0) for a in b["audio"]
    ]


def _nearest(spec: np.ndarray, bank: list[np.ndarray]) -> float:
    T = min(spec.shape[1], *(b.shape[1] for b in bank))
    return min(float(np.abs(spec[:, :T] - b[:, :T]).mean()) for b in bank)


def test_unconditional_outputs_are_music_like_and_new(trained, tmp_path):
    from weaktok.generate import generate

    shards, model_run = trained
    out = tmp_path / "uncond"
    summary = generate(model_run, out, n=3, seed=1)
    assert summary["mode"] == "unconditional" and len(summary["outputs"]) == 3
    assert json.loads((out / "generate.json").read_text())["outputs"] == summary["outputs"]
    sr = 22050
    bank = _train_specs(shards, sr)
    # a copy of a training item, through the same Griffin-Lim round trip: the distance a copy would have
    from weaktok.generate import load_model

    loaded = load_model(model_run, "cpu")
    item = next(iter(eval_loader(str(shards), "train", 1, 2.0)))["audio"]
    copy_wave = loaded.front.inverse(loaded.front(item))[0].numpy()
    copy_dist = _nearest(_spec(copy_wave, sr), bank)
    white = np.random.default_rng(0).standard_normal(sr * 2).astype(np.float32) * 0.3
    for rec in summary["outputs"]:
        assert (out / rec["png"]).stat().st_size > 5000
        y = load_audio(out / rec["wav"], sr, normalize=False)
        assert len(y) == pytest.approx(2.0 * sr, rel=0.02)
        assert np.sqrt(np.mean(y**2)) > 1e-3, "silence"
        assert _flatness(y) < 0.5 * _flatness(white), "white noise"
        assert _nearest(_spec(y, sr), bank) > 2 * copy_dist, "a copy of a training item"


def test_seed_based_keeps_the_seed_and_fills_the_hole(trained, tmp_path):
    from weaktok.audio import write_wav
    from weaktok.generate import generate

    shards, model_run = trained
    item = next(iter(eval_loader(str(shards), "test", 1, 2.0)))["audio"][0].numpy()
    seed = tmp_path / "seed.wav"
    write_wav(seed, item[:22050], 22050)  # 1 s: tiled to the model's 2 s
    out = tmp_path / "seeded"
    summary = generate(model_run, out, seed_audio=[str(seed)], steps=2)
    assert (out / "generate.json").is_file()
    assert summary["mode"] == "seed" and summary["steps"] == 2
    rec = summary["outputs"][0]
    y = load_audio(out / rec["wav"], 22050, normalize=False)
    assert np.sqrt(np.mean(y**2)) > 1e-3
    assert (out / rec["png"]).is_file() and rec["chunks"] >= 1


def _stats(F: int, k: int = 2) -> dict:
    u = torch.linalg.qr(torch.randn(F, k))[0].T  # (k, F) orthonormal shapes
    return {
        "mean": torch.full((F,), 1.0),
        "components": u,
        "comp_std": torch.ones(k),
        "comp_rho": torch.full((k,), 0.9),
        "resid_std": torch.full((F,), 0.1),
    }


def test_refinement_keeps_known_frames_and_fills_the_hole_from_the_prior():
    from types import SimpleNamespace

    from weaktok.generate import seed_based, unconditional

    class Echo(
        torch.nn.Module
    ):  # a "model" returning its input: shows exactly what each pass is fed
        def forward(self, x):
            return SimpleNamespace(recon=x, chunk=None)

    spec = torch.rand(2, 6, 40) + 3.0
    g = torch.Generator().manual_seed(0)
    y, _ = seed_based(Echo(), spec, _stats(6), mask_fraction=0.25, steps=3, gen=g)
    assert torch.equal(y[..., :30], spec[..., :30])  # known frames: the seed, untouched
    hole = y[..., 30:]
    assert (
        hole - 1.0
    ).abs().mean() < 1.0 and hole.std() > 0.05  # prior noise around the corpus mean, not zeros
    u, _ = unconditional(Echo(), _stats(6), n=3, frames=17, steps=2, gen=g)
    assert u.shape == (3, 6, 17) and (u >= 0).all()


def test_guidance_fits_timbral_and_structural_to_real_audio_only_in_the_hole(trained):
    from weaktok.generate import (
        GUIDE_TERMS,
        Guidance,
        cached_spectrum,
        guide,
        load_model,
        make_guidance,
        seed_hole,
        unconditional,
    )
    from weaktok.lscore.loss import distribution_loss

    shards, model_run = trained
    loaded = load_model(model_run, "cpu")
    g = make_guidance(loaded, shards, 2.0, steps=40)
    assert isinstance(g, Guidance) and make_guidance(loaded, shards, 2.0, steps=0) is None
    assert (
        model_run / "final" / "surrogate_2s.safetensors"
    ).is_file()  # the target is cached beside the weights
    frames = loaded.front.num_frames(2 * 22050)
    y, _ = unconditional(
        loaded.model,
        cached_spectrum(loaded, shards),
        4,
        frames,
        steps=2,
        gen=torch.Generator().manual_seed(0),
    )
    terms = list(GUIDE_TERMS)

    def loss(spec):
        with torch.no_grad():
            L = g.lscore(loaded.front.power(spec))[:, terms]
        return float(distribution_loss(L, g.mean[terms], g.std[terms], 1.0, 0.5))

    hole = seed_hole(frames, 0.5)
    y_g = guide(y, hole, g)
    assert (
        torch.equal(y_g[..., ~hole], y[..., ~hole]) and (y_g >= 0).all()
    )  # known frames untouched
    full = guide(y, torch.ones(frames, dtype=torch.bool), g)
    assert loss(full) < 0.5 * loss(y), (
        loss(y),
        loss(full),
    )  # fitted toward real audio's distribution


def test_missing_checkpoint_and_bad_audio_are_clear_errors(trained, tmp_path):
    _, model_run = trained
    r = _cli(
        [
            "generate",
            "--checkpoint",
            str(tmp_path / "nope"),
            "--unconditional",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert r.returncode == 2 and str(tmp_path / "nope") in r.stderr and "model.pt" in r.stderr
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    r = _cli(
        [
            "generate",
            "--checkpoint",
            str(model_run),
            "--seed-audio",
            str(bad),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert r.returncode == 2 and str(bad) in r.stderr and "unreadable" in r.stderr
    r = _cli(["generate", "--checkpoint", str(model_run), "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and "--unconditional" in r.stderr


def _cli(args, **env):
    import subprocess

    return subprocess.run(
        [venv_bin("weaktok"), *args],
        capture_output=True,
        text=True,
        env=cpu_env(**env),
        cwd=REPO,
        timeout=120,
    )


def test_cli_generate_on_cpu_writes_outputs(trained, tmp_path):
    _, model_run = trained
    out = tmp_path / "cli"
    r = _cli(
        [
            "generate",
            "--checkpoint",
            str(model_run),
            "--unconditional",
            "--n",
            "2",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "device cpu" in r.stdout
    summary = json.loads((out / "generate.json").read_text())
    assert summary["device"] == "cpu" and len(summary["outputs"]) == 2
    for rec in summary["outputs"]:
        y = load_audio(out / rec["wav"], 22050, normalize=False)
        assert len(y) == pytest.approx(2.0 * 22050, rel=0.02) and np.sqrt(np.mean(y**2)) > 1e-3


def test_cli_cuda_without_a_gpu_is_a_clear_error(trained, tmp_path):
    _, model_run = trained
    for cmd in (["generate", "--unconditional"], ["evaluate"]):
        r = _cli(
            [
                *cmd,
                "--checkpoint",
                str(model_run),
                "--device",
                "cuda",
                "--out",
                str(tmp_path / "o"),
            ],
            CUDA_VISIBLE_DEVICES="",
        )  # no GPU, whatever the machine has
        assert r.returncode == 2, r.stderr[-2000:]
        assert (
            "'cuda'" in r.stderr
            and "CUDA is not available" in r.stderr
            and "Traceback" not in r.stderr
        )
    assert not (tmp_path / "o").exists()  # refused before anything was written
    r = _cli(
        [
            "generate",
            "--unconditional",
            "--checkpoint",
            str(model_run),
            "--device",
            "gpu",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert r.returncode == 2 and "unknown device 'gpu'" in r.stderr and "Traceback" not in r.stderr


def test_resolve_device(monkeypatch):
    from weaktok.device import DeviceError, resolve_device

    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(" CPU ") == torch.device(
        "cpu"
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu") and resolve_device("auto") == torch.device(
        "cpu"
    )
    for name in ("cuda", "cuda:0"):
        with pytest.raises(DeviceError, match=f"'{name}' requested but CUDA is not available"):
            resolve_device(name)
    for name in ("gpu", "cuda:x", "mps", "cuda:-1"):
        with pytest.raises(DeviceError, match="unknown device.*cpu, cuda or cuda:N"):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(None) == torch.device("cuda") and resolve_device(
        "cuda:1"
    ) == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="has 2 GPU"):
        resolve_device("cuda:2")


def test_prior_noise_follows_the_stats_device_whatever_the_generator():
    from weaktok.data.prior import sample_prior

    stats = _stats(6)
    a = sample_prior(stats, 2, 9, torch.Generator().manual_seed(3))
    b = sample_prior(stats, 2, 9, torch.Generator().manual_seed(3))
    assert a.shape == (2, 6, 9) and a.device == stats["mean"].device and torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_generate_on_cuda(trained, tmp_path):
    from weaktok.generate import generate, load_model

    _, model_run = trained
    loaded = load_model(model_run, "cuda")
    assert next(loaded.model.parameters()).is_cuda and loaded.front.device.type == "cuda"
    summary = generate(model_run, tmp_path / "gpu", n=3, steps=2, guidance_steps=2, device="cuda")
    assert summary["device"] == "cuda" and len(summary["outputs"]) == 3
    for rec in summary["outputs"]:
        y = load_audio(tmp_path / "gpu" / rec["wav"], 22050, normalize=False)
        assert np.sqrt(np.mean(y**2)) > 1e-3 and (tmp_path / "gpu" / rec["png"]).is_file()
    # statistics cached beside model.pt stay loadable on the CPU
    assert (
        torch.load(model_run / "final" / "spectrum.pt", weights_only=True)["mean"].device.type
        == "cpu"
    )
