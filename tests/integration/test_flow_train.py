"""A flow model trained for real (``weaktok train``, DeepSpeed on CPU, the Ray pool scoring validation's generations),
then used the way a user would: ``weaktok generate`` in both modes and ``evaluate`` with its bypass ablation."""

import json

import numpy as np
import pytest
import torch

from tests.helpers import read_metrics

pytestmark = pytest.mark.slow


def test_training_logs_the_flow_loss_and_saves_the_normalisation(flow_run):
    from weaktok.model.flow import normaliser_from_prior

    shards, out, _ = flow_run
    records = read_metrics(out)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    assert train and all(np.isfinite(r["flow"]) for r in train)
    assert len(val) == 2 and all(np.isfinite(r["val_flow"]) and r["val_recon"] > 0 for r in val)
    assert (
        "val_gen_uncond_lscore" in val[-1] and "val_gen_seed_lscore" in val[-1]
    )  # generated and scored
    # validation's target: the exact L-Score of training crops of the clip length, not the manifest's whole items
    manifest = json.loads((shards / "manifest.json").read_text())["lscore_target"]
    assert not np.allclose(val[-1]["val_gen_target"], manifest["mean"])
    # the closed loop moved the surrogate target after each validation, and the move is what feedback_step says
    from weaktok.train.lscore_glue import feedback_step

    c1, c2 = val[0]["lscore_target_correction"], val[1]["lscore_target_correction"]
    assert any(abs(c) > 0 for c in c1) and c1 != c2
    base = np.asarray(val[0]["lscore_loss_target"]) - np.asarray(c1)
    vt = {
        "mean": torch.tensor(val[1]["val_gen_target"]),
        "std": torch.tensor(val[1]["val_gen_target_std"]),
    }
    lt = {
        "std": torch.ones(4)
    }  # unknown here: check the direction, term by term, instead of the size
    step = np.asarray(feedback_step([0.0] * 4, val[1], vt, lt, 0.5))
    assert np.all(np.sign(np.asarray(c2) - np.asarray(c1)) == np.sign(step))
    assert np.allclose(np.asarray(val[1]["lscore_loss_target"]) - np.asarray(c2), base, atol=1e-5)
    blob = torch.load(out / "final" / "model.pt", weights_only=True)
    prior = torch.load(out / "final" / "spectrum.pt", weights_only=True)
    mean, std = normaliser_from_prior(prior)
    assert torch.allclose(blob["model"]["spec_mean"], mean) and torch.allclose(
        blob["model"]["spec_std"], std
    )
    assert not torch.allclose(std, torch.ones_like(std))


def test_generate_both_modes_keeps_the_seed(flow_run, tmp_path):
    from weaktok.audio import write_wav
    from weaktok.generate import generate, load_model, seed_spectrogram

    shards, out, _ = flow_run
    t = np.arange(22050 * 2) / 22050
    seed = tmp_path / "seed.wav"
    write_wav(seed, 0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 2 * t) > 0), 22050)
    s = generate(out, tmp_path / "seed", seed_audio=[str(seed)], device="cpu")
    u = generate(out, tmp_path / "uncond", n=2, device="cpu")
    assert s["steps"] == 3 and len(u["outputs"]) == 2
    assert all((tmp_path / "uncond" / r["wav"]).is_file() and r["rms"] > 0 for r in u["outputs"])
    # the known half comes back as the seed (before Griffin-Lim)
    from weaktok.generate import seed_based

    loaded = load_model(out, "cpu")
    spec = seed_spectrogram(seed, loaded, 2.0)
    y, _ = seed_based(loaded.model, spec, {}, gen=torch.Generator().manual_seed(0))
    half = spec.shape[-1] - spec.shape[-1] // 2
    assert torch.allclose(y[..., :half], spec[..., :half], atol=1e-5)
    assert not torch.allclose(y[..., half:], spec[..., half:], atol=1e-2)


def test_evaluate_reports_the_flow_bypass_and_the_cut_models_distances(flow_run, tmp_path):
    from weaktok.evaluation.run import evaluate

    shards, out, _ = flow_run
    t = evaluate(
        out,
        tmp_path / "eval",
        split="test",
        n_gen=3,
        seconds=2.0,
        device="cpu",
        n_boot=100,
        target_items=8,
        rulers=False,
        clips=0,  # the listening clips are tested in tests/unit/evaluation/test_evaluate.py
    )
    bp = t["bypass"]
    assert bp["measure"] == "flow_loss" and "velocity" in bp["definition"]
    assert bp["recon"]["intact"] > 0 and bp["recon"]["cut"] != bp["recon"]["intact"]
    assert 0 < t["chunks"]["generation_boundary_rate"] <= 1
    for m in ("uncond", "seed"):
        assert np.isfinite(t["frechet"][m]["model_cut"]["mean"])
    # the loss's surrogate on the model's own outputs (emitted spectrogram vs the exact score of its Griffin-Lim
    # wave): timbral is the exact formula on the model's STFT, so its offset is the vocoder's and the STFT
    # geometry's (-10 % / -4 % when written); the rhythm and structure terms' offsets on a model this small are
    # large and noisy (3 outputs) and are reported, not bounded (docs/results.md)
    for m in ("uncond", "seed"):
        model = t["surrogate_bias"][m]["model"]
        assert -0.25 <= model["bias"][0] <= 0.25, (m, model["bias"])
        assert all(b is None or np.isfinite(b) for b in model["bias"])
    md = (tmp_path / "eval" / "table1.md").read_text()
    assert "flow loss (velocity MSE)" in md and "chunk path cut" in md
    assert json.loads((tmp_path / "eval" / "table1.json").read_text())["generation"]["flow"] is True
