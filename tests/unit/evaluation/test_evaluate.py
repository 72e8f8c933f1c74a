"""Evaluation on a tiny trained model: Table 1 on generated regions with baselines, intervals and seeds; the
distribution metrics, the bypass ablation and the rulers in table1.json; markdown, plots and the CLI's errors."""

import json
import subprocess

import numpy as np
import pytest
import torch

from tests.helpers import REPO, cpu_env, venv_bin
from tests.unit.generate.test_generate import tiny_model

SECONDS = 2.0


def tiny_evaluation(tmp_path_factory):
    """(table, eval folder, shards, run): two checkpoints (the same run, as a folder and as its model.pt: the seed
    aggregation's plumbing; the statistics of real different seeds are tested in test_eval_stats.py). Built once
    per test session, like tiny_model, and shared with tests/unit/experiments/test_page.py (the listening page)."""
    from weaktok.evaluation.run import evaluate

    shards, run = tiny_model(tmp_path_factory)
    out = tmp_path_factory.getbasetemp() / "weaktok_tiny_eval"
    if (out / "audio" / "clips.json").is_file():  # written last but one: the evaluation finished
        return json.loads((out / "table1.json").read_text()), out, shards, run
    t = evaluate(
        [run, run / "final" / "model.pt"],
        out,
        split="test",
        n_gen=3,
        steps=2,
        seconds=SECONDS,
        guidance_steps=2,
        device="cpu",
        n_boot=200,
        target_items=12,
        clips=1,  # each clip is a WAV and a matplotlib PNG: one per set keeps the fixture cheap
    )
    return t, out, shards, run


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    return tiny_evaluation(tmp_path_factory)


def test_table1_json_has_every_field_with_intervals(evaluated):
    table, out, _, _ = evaluated
    t = json.loads((out / "table1.json").read_text())
    assert t["names"] == ["timbral", "density", "irregularity", "structural"]
    assert (
        len(t["seeds"]) == 2
        and t["n_items"]["generated_per_seed"] == 3
        and t["n_items"]["target"] == 12
    )
    for m in ("uncond", "seed"):
        s = t[m]["pooled"]
        assert s["n"] == 6 and len(s["mean"]) == 4 and t[m]["seeds"] == 2
        for j in range(4):
            lo, hi = s["ci95"][j]
            assert lo <= s["mean"][j] <= hi
            lo, hi = s["rel_err_ci95"][j]
            assert lo <= s["rel_err"][j] <= hi
        tgt = np.array(t["target"][m]["mean"])
        assert np.allclose(s["rel_err"], (np.array(s["mean"]) - tgt) / np.abs(tgt))
        assert len(t[m]["sd_over_seeds"]) == 4  # two seeds: an sd across them
        assert len(t[f"{m}_guided"]["pooled"]["mean"]) == 4
        for b in ("data", "data_vocoder", "prior_noise"):
            assert len(t["baselines"][b][m]["rel_err_ci95"]) == 4, (b, m)
        for key in ("frechet", "kid", "two_sample_accuracy", "memorisation"):
            assert {"data", "data_vocoder", "prior_noise", "model"} <= set(t[key][m]), (key, m)
        assert np.isfinite(t["frechet"][m]["model"]["mean"])
        assert t["memorisation"][m]["model"]["per_seed"][0]["ratio"] > 0
    assert "copy_seed" in t["baselines"] and set(t["baselines"]["copy_seed"]) == {"seed"}
    assert t["baselines"]["data"]["uncond"]["n"] == t["n_items"]["data"] == 4  # every test item
    assert t["data_floor_ci_halfwidth"]["seed"][0] > 0
    assert t["goal_met"] == all(all(t["within_goal"][m]) for m in ("uncond", "seed"))
    for w in ("recon", "inpaint"):
        assert t["bypass"][w]["intact"] > 0 and t["bypass"][w]["cut"] > 0
    assert t["bypass"]["mean_spectrum"]["inpaint_l1"] > 0
    c = t["chunks"]  # the tiny model chunks dynamically: a target ratio, no grid stride
    assert c["kind"] == "dynamic" and c["select"] == "threshold" and c["fixed_stride"] is None
    assert "target 1/3, threshold" in (out / "table1.md").read_text()
    p = t["paper"]
    assert p["target"] == [0.4, 0.8, 0.6, 0.5] and p["uncond"] == [0.409, 2.962, 0.739, 0.496]
    assert p["seed"] == [0.502, 6.667, 0.067, 0.571] and "predefined" in p["note"]
    assert {r["name"] for r in t["rulers"]} >= {"silence", "white_noise"}
    assert t["device"] == "cpu" and t["clip_seconds"] == SECONDS
    assert json.loads(json.dumps(table, default=float)) is not None and t["seconds"] > 0


def test_seed_rows_score_only_the_inpainted_region(evaluated):
    """The data floor's seed row is the exact L-Score of each item's hole samples, the uncond row of the whole
    clip: recomputed here from the shards without evaluate's code path."""
    from weaktok.data.loader import eval_loader
    from weaktok.lscore.exact import exact_lscore

    t, _, shards, _ = evaluated
    reg = t["scored_region"]
    assert reg["seed"]["seconds"] == pytest.approx(SECONDS / 2, abs=0.02)
    assert reg["seed"]["start_s"] + reg["seed"]["seconds"] == pytest.approx(SECONDS, abs=1e-3)
    assert reg["uncond"]["seconds"] == pytest.approx(SECONDS, abs=1e-3)
    start = reg["seed"]["start_sample"]
    assert start == pytest.approx(reg["seed"]["start_s"] * 22050, abs=12)
    audio = np.concatenate(
        [b["audio"].numpy() for b in eval_loader(str(shards), "test", 8, SECONDS)]
    )
    whole = np.stack([exact_lscore(a, 22050) for a in audio]).mean(0)
    hole = np.stack([exact_lscore(a[start:], 22050) for a in audio]).mean(0)
    assert np.allclose(t["baselines"]["data"]["uncond"]["mean"], whole, rtol=1e-4)
    assert np.allclose(t["baselines"]["data"]["seed"]["mean"], hole, rtol=1e-4)
    assert not np.allclose(whole, hole)


def test_surrogate_bias_reads_the_losss_surrogate_on_each_sets_region(evaluated):
    """surrogate_bias: the data rows recomputed here (the surrogate on the front end's spectrogram of each item's
    scored region, as training's loss reads it), every baseline and the model per seed, with bias and rho."""
    from weaktok.data.loader import eval_loader
    from weaktok.generate import load_model
    from weaktok.lscore.differentiable import DifferentiableLScore

    t, out, shards, run = evaluated
    sb = t["surrogate_bias"]
    front = load_model(run, "cpu").front  # tiny: n_fft 512, hop 128
    surrogate = DifferentiableLScore(22050, front.n_fft, front.hop_length)
    audio = torch.cat([b["audio"] for b in eval_loader(str(shards), "test", 8, SECONDS)])
    spec = front(audio)
    hole = t["scored_region"]["seed"]["start_sample"] // front.hop_length
    for m, region in (("uncond", spec), ("seed", spec[..., hole:])):
        want = surrogate(front.power(region)).mean(0).numpy()
        assert np.allclose(sb[m]["data"]["surrogate_mean"], want, rtol=1e-4), m
        r = sb[m]["data"]
        e, s = np.array(r["exact_mean"]), np.array(r["surrogate_mean"])
        assert np.allclose(r["bias"], s / e - 1)
        assert {"data", "data_vocoder", "prior_noise"} <= set(sb[m]), m
        assert len(sb[m]["model"]["per_seed"]) == 2 and len(sb[m]["model"]["bias"]) == 4
        assert all(-1 <= c <= 1 for c in sb[m]["model"]["per_seed"][0]["spearman"] if c is not None)
    assert "copy_seed" in sb["seed"] and "copy_seed" not in sb["uncond"]
    assert "## The L-Score loss's surrogate on these clips" in (out / "table1.md").read_text()


def test_copy_seed_tiles_the_known_part_into_the_hole():
    from weaktok.evaluation.collect import copy_seed

    spec = torch.arange(10.0).repeat(2, 3, 1)  # (2, 3, 10): frame t holds t
    out = copy_seed(spec, hole_frame=4)
    assert out[0, 0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    assert torch.equal(out[..., :4], spec[..., :4])


def test_chunk_path_cut_is_the_identity_bottleneck_and_restores(evaluated):
    from weaktok.generate import load_model
    from weaktok.model.unet import chunk_path_cut

    _, _, _, run = evaluated
    model = load_model(run, "cpu").model
    spec = torch.rand(2, model.in_conv.in_channels, 64)
    with torch.no_grad():
        intact = model(spec).recon
        with chunk_path_cut(model):
            h = torch.randn(2, 8, model.cfg.dim)
            assert torch.equal(model.bottleneck(h, torch.ones(2, 8, dtype=torch.bool))[0], h)
            cut = model(spec).recon
        again = model(spec).recon
    assert not torch.allclose(intact, cut) and torch.equal(intact, again)


def test_markdown_quotes_the_papers_eight_cells_and_plots_exist(evaluated):
    _, out, _, _ = evaluated
    md = (out / "table1.md").read_text()
    for cell in ("0.409", "2.962", "0.739", "0.496", "0.502", "6.667", "0.067", "0.571"):
        assert cell in md, cell
    for section in (
        "## Baselines",
        "copy_seed",
        "prior_noise",
        "## Distributions",
        "## Bypass ablation",
        "predefined",
        "in-painted region only",
        "## What the rulers read",
    ):
        assert section in md, section
    for name in ("rel_err.png", "lscore_hist.png", "examples_0.png", "training_curves.png"):
        assert (out / name).stat().st_size > 5000, name


def test_listening_clips_cover_every_set_with_the_scored_waveforms(evaluated):
    """audio/clips.json lists a clip of every set and mode; WAVs of the clip length, PNGs, chunk counts where a
    model is involved; the data clips are the evaluation items themselves."""
    import soundfile as sf

    _, out, _, _ = evaluated
    idx = json.loads((out / "audio" / "clips.json").read_text())
    groups = {(g["mode"], g["set"]): g for g in idx["groups"]}
    want = {
        ("data", "data"),
        ("data", "data_vocoder"),
        ("uncond", "prior_noise"),
        ("seed", "copy_seed"),
    }
    want |= {
        (m, f"model{i}{x}")
        for m in ("uncond", "seed")
        for i in (0, 1)
        for x in ("", "_cut", "_guided")
    }
    assert want <= set(groups) and ("seed", "data_vocoder") not in groups
    assert [g["mode"] for g in idx["groups"]] == sorted(
        (g["mode"] for g in idx["groups"]), key=("data", "uncond", "seed").index
    )
    for g in idx["groups"]:
        assert len(g["clips"]) == 1, g["set"]
        for c in g["clips"]:
            info = sf.info(str(out / "audio" / c["wav"]))
            assert info.samplerate == idx["sample_rate"] and abs(info.duration - SECONDS) < 0.01
            assert (out / "audio" / c["png"]).stat().st_size > 3000
            assert (c["chunks"] is None) == (
                g["set"] in ("data_vocoder", "prior_noise", "copy_seed")
            )
    assert groups[("uncond", "model1")]["checkpoint"].endswith("model.pt")
    data = groups[("data", "data")]["clips"]
    assert [c["key"] for c in data] == [c["key"] for c in groups[("seed", "model0")]["clips"]]
    assert 0 < idx["hole_start_s"] < SECONDS


def test_cli_missing_checkpoint_names_the_path(tmp_path):
    r = subprocess.run(
        [
            venv_bin("weaktok"),
            "evaluate",
            "--checkpoint",
            str(tmp_path / "no_run"),
            "--out",
            str(tmp_path / "e"),
        ],
        capture_output=True,
        text=True,
        env=cpu_env(),
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 2 and str(tmp_path / "no_run") in r.stderr


def test_unknown_split_names_the_shards(evaluated, tmp_path):
    from weaktok.evaluation.run import evaluate

    _, _, shards, run = evaluated
    with pytest.raises(ValueError, match=r"no split 'eval'.*has: train, val, test"):
        evaluate(run, tmp_path / "e", split="eval", shards=str(shards), device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_evaluate_on_cuda(tmp_path_factory):
    from weaktok.evaluation.run import evaluate

    _, run = tiny_model(tmp_path_factory)
    t = evaluate(
        run,
        tmp_path_factory.mktemp("eval_cuda"),
        split="test",
        n_gen=2,
        steps=2,
        seconds=2.0,
        guidance_steps=2,
        device="cuda",
        n_boot=100,
        target_items=8,
        rulers=False,
    )
    assert t["device"] == "cuda" and t["seed"]["pooled"]["n"] == 2
    assert all(
        np.isfinite(t[m]["pooled"]["mean"]).all() for m in ("uncond", "seed", "uncond_guided")
    )


def test_scorer_onset_presets():
    """--onset clicks scores with the opt-in preset (a 16 Hz click train counted right, where the paper's default
    undercounts); the Ray pool runs only the paper preset, so asking for both is refused up front."""
    from weaktok.evaluation.rulers import reference_signals
    from weaktok.evaluation.scoring import Scorer

    y = reference_signals(seconds=4.0)["click_16hz"]
    paper, clicks = Scorer(22050)([y])[0], Scorer(22050, onset="clicks")([y])[0]
    assert clicks[1] == pytest.approx(16, rel=0.05) and paper[1] < 12
    assert clicks[0] == paper[0] and clicks[3] == paper[3]  # only the onset terms differ
    with pytest.raises(ValueError, match="--onset clicks"):
        Scorer(22050, workers=2, onset="clicks")
