"""weaktok/api.py on untrained tiny models of both objectives, written as model folders (the trained path is
tests/integration/test_export_api.py): every method's shapes, the flow branch's inputs, resampling, seeds, and a
replaced export. The prior here is the statistics of a real sonic-pi loop's frames."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.helpers import SAMPLES
from weaktok.api import WeakTok
from weaktok.audio import SpecFrontEnd, resample
from weaktok.config import load_config
from weaktok.model.artifact import PRIOR, read_weights, replace_folder, write_folder
from weaktok.model.unet import build_model


@pytest.fixture(scope="module")
def loop():
    y, sr = sf.read(SAMPLES / "loop_amen.flac", dtype="float32", always_2d=True)
    return y.mean(1), sr


def frame_prior(front: SpecFrontEnd, wave: np.ndarray, k: int = 16) -> dict:
    """Mean, top-k principal shapes and residual of a clip's log1p frames (weaktok/data/prior.py's fields)."""
    x = front(torch.from_numpy(wave))[0].T.double()  # (T, F)
    mean, cov = x.mean(0), torch.cov(x.T)
    var, vecs = torch.linalg.eigh(cov)
    u = vecs[:, -k:].flip(1).T  # (k, F)
    comp_var = var.flip(0)[:k].clamp_min(1e-12)
    resid = (cov.diagonal() - (comp_var[:, None] * u**2).sum(0)).clamp_min(0)
    return {
        "mean": mean.float(),
        "components": u.float(),
        "comp_std": comp_var.sqrt().float(),
        "comp_rho": torch.full((k,), 0.5),
        "resid_std": resid.sqrt().float(),
    }


def folder(tmp_path, loop, objective: str, seed: int = 0):
    cfg = load_config("tiny", [f"model.objective={objective}", "data.shards=/nonexistent"])
    front = SpecFrontEnd.for_config(cfg)
    torch.manual_seed(seed)
    state = build_model(cfg.model, front.n_freqs).state_dict()
    prior = frame_prior(front, resample(loop[0], loop[1], cfg.audio.sample_rate))
    out = tmp_path / f"{objective}{seed}"
    return write_folder(out, state, cfg, {PRIOR: prior}, "# card\n"), state


@pytest.mark.parametrize("objective", ["inpaint", "flow"])
def test_every_method_on_both_objectives(objective, tmp_path, loop):
    path, _ = folder(tmp_path, loop, objective)
    tok = WeakTok.from_pretrained(path, device="cpu")
    sr, hop = tok.sample_rate, tok.loaded.cfg.audio.hop_length
    audio = tok.generate(n=2, seconds=0.5, seed=0, steps=2)
    n = (int(0.5 * sr) // hop) * hop
    assert audio.shape == (2, n) and audio.dtype == np.float32 and np.isfinite(audio).all()
    assert np.array_equal(audio, tok.generate(n=2, seconds=0.5, seed=0, steps=2))
    assert not np.array_equal(audio, tok.generate(n=2, seconds=0.5, seed=1, steps=2))
    wave, wave_sr = loop  # 44.1 kHz: resampled to the model's rate
    more = tok.continue_audio(wave, wave_sr, seconds=0.5, seed=0, steps=2)
    assert more.shape == (n,) and np.isfinite(more).all()
    again = tok.reconstruct(torch.from_numpy(wave), wave_sr)
    assert again.shape == ((len(resample(wave, wave_sr, sr)) // hop) * hop,)
    tokens = tok.encode(wave, wave_sr)
    b = tokens.boundaries
    assert tokens.n_chunks == len(b) == tokens.embeddings.shape[0] >= 1
    assert tokens.embeddings.shape[1] == tok.loaded.cfg.model.dim
    assert b[0] == 0 and np.all(np.diff(b) > 0) and b[-1] <= tokens.duration
    assert abs(tokens.duration - len(wave) / wave_sr) < 1e-3
    with pytest.raises(ValueError, match="mono"):
        tok.encode(np.stack([wave, wave]), wave_sr)


def test_an_export_is_replaced_whole_and_a_failed_one_leaves_it(tmp_path, loop):
    first, _ = folder(tmp_path, loop, "inpaint", seed=0)
    _, second = folder(tmp_path, loop, "inpaint", seed=1)
    cfg = load_config("tiny")
    # a file the new export does not have
    (first / "surrogate_9s.safetensors").write_bytes(b"stale")

    def broken(tmp):
        write_folder(tmp, second, cfg, {}, "")
        raise RuntimeError("the disk filled up")

    before = read_weights(first)[0]
    with pytest.raises(RuntimeError):
        replace_folder(broken, first)
    assert all(torch.equal(read_weights(first)[0][k], v) for k, v in before.items())
    replace_folder(lambda tmp: write_folder(tmp, second, cfg, {}, "# new\n"), first)
    got = read_weights(first)[0]
    assert all(torch.equal(got[k], v) for k, v in second.items())
    assert (
        not (first / "surrogate_9s.safetensors").exists()
        and (first / "README.md").read_text() == "# new\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "inpaint0",
        "inpaint1",
    ]  # no temporaries left
