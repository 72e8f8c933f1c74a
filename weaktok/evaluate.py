"""Evaluation: the paper's Table 1 (L-Score of unconditional and seed-based outputs vs the dataset target), plus
reconstruction loss and chunk statistics on a split.

    weaktok evaluate --checkpoint runs/demo/train --split test --out runs/demo/eval [--device cuda]

For every item of the split (deterministic crop of ``EVAL_SECONDS`` = 8 s from its start, loop-tiled if shorter):
  * reconstruction: model(spec) -> L1 to spec (the training loss's term), chunk statistics of the eval-mode
    (deterministic) boundaries, and the exact L-Score of its Griffin-Lim waveform (``recon``: what the model +
    vocoder round trip alone does to the L-Score);
  * seed-based output: the item is the seed (``generate.seed_based``: its last half in-painted);
and as many unconditional outputs (``generate.unconditional``). With ``guidance_steps`` > 0 the same outputs are
scored a second time after L-Score guidance (``generate.guide``: Uncond+G, Seed+G), so the table shows what the
model does alone and what generation-time control adds. Exact L-Scores (librosa, ``lscore/exact.py``) of
the Griffin-Lim waveforms, serially or on the Ray pool (``workers``). Target = the training split's mean L-Score
from the shard manifest, as in the paper; ``data`` = the split's own exact L-Scores (from the manifest build), so
its relative error is the sampling noise floor of the comparison.

Device (``device=`` / ``--device``, default cuda when available, else cpu; see ``weaktok.device.resolve_device``):
the spectrograms, the model, refinement, the prior noise, guidance and Griffin-Lim run there, a batch at a time (one
Griffin-Lim call per batch for all the waveforms it scores); only the waveforms go to the CPU, for the exact
L-Score (librosa).

Writes table1.json ({"names", "target", "uncond", "seed", ...: means per term; *_rel_err signed relative errors},
table1.md, lscore_hist.png, examples_*.png (data | seed | unconditional with chunk boundaries),
training_curves.png (when the run's metrics.jsonl is found).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from weaktok import generate as G
from weaktok.report import md_table, pct, plot_lscore_hist, plot_spectrogram_rows, plot_training_curves

GOAL = 0.15  # the research goal: every term within 15 % of the target (issue 8)
# Length of every evaluated clip and output. The manifest's target is measured on whole items (the embedded corpus:
# 4-8 s loops, segments up to 10 s); rhythmic irregularity (the spread of inter-onset intervals) grows with the window,
# so shorter clips score lower whatever made them. Measured on the demo shards, real test audio vs the target: 4 s
# crops -40 % irregularity, 6 s -26 %, 8 s -14 % (sampling noise). Evaluation therefore runs at 8 s (loop-tiled
# where an item is shorter), whatever the training crop; the model is length-agnostic (convolutions, chunk positions
# by start time).
EVAL_SECONDS = 8.0

# The paper's own Table 1, relative error of each term vs the dataset target, as quoted in issue 8 ("the paper
# missed rhythmic density by +270 % unconditional and +733 % seed-based"). We do not have the paper's other cells
# at hand, so they are left out rather than guessed; the tables show them as "—".
PAPER_TABLE1_REL_ERR = {
    "density": {"uncond": 2.70, "seed": 7.33},
}


# ----------------------------------------------------------------------------------------------------------
# Exact L-Score of waveforms


class Scorer:
    """Exact L-Score of waveform batches: serial, or on ``workers`` Ray actors (a private local cluster, started
    once). Scores are computed batch by batch, so no waveform outlives its batch (bounded memory on big splits)."""

    def __init__(self, sr: int, workers: int = 0):
        self.sr, self.pool = sr, None
        if workers > 1:
            from weaktok.lscore.pool import LScorePool

            self.pool = LScorePool(num_actors=workers, address="local", niceness=0)

    def __call__(self, waves) -> np.ndarray:  # (B, N) -> (B, 4)
        if self.pool is not None:
            return self.pool.map(list(waves), self.sr)
        from weaktok.lscore.exact import exact_lscore

        return np.stack([exact_lscore(w, self.sr) for w in waves])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def rel_err(values: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Signed relative error of per-term means: (mean - target) / |target|."""
    return (values - target) / np.maximum(np.abs(target), 1e-9)


# ----------------------------------------------------------------------------------------------------------
# Passes over the split


@torch.no_grad()
def run_items(loaded: G.Loaded, shards: str, split: str, max_items: int, seconds: float, stats: dict,
              gen: torch.Generator, mask_fraction: float, steps: int, score: Scorer, keep: int = 3,
              guidance: G.Guidance | None = None) -> dict:
    """Over the split: reconstruction L1, chunk statistics, seed-based outputs, and the exact L-Score of the data,
    the data through Griffin-Lim, the reconstructions and the seed-based outputs; plus a few examples."""
    from weaktok.data import eval_loader
    from weaktok.manifest import load_manifest

    cfg, front = loaded.cfg, loaded.front
    total = load_manifest(shards)["splits"][split]["count"]
    total = min(total, max_items) if max_items else total
    res = {k: [] for k in ("manifest", "data", "gl", "recon", "seed", "seed_g", "l1", "rate", "chunks_per_s",
                           "examples")}
    res.update(seconds=0.0, chunks=0.0)
    bar = tqdm(total=total, desc=f"evaluate {split}", unit="item")
    for batch in eval_loader(shards, split, 8, seconds):
        take = min(len(batch["keys"]), total - len(res["l1"]))
        if take <= 0:
            break
        audio = batch["audio"][:take]  # (B, N) on the CPU, for the data's exact L-Score
        spec = front(audio.to(loaded.device))  # (B, F, T)
        out = loaded.model(spec)
        y, mo = G.seed_based(loaded.model, spec, stats, mask_fraction, steps, gen)
        clip_s = spec.shape[-1] * front.frame_seconds
        n_chunks = out.chunk.num_chunks.float()  # (B,)
        res["l1"] += (out.recon - spec).abs().mean(dim=(1, 2)).tolist()
        res["rate"] += (out.chunk.boundaries.sum(1) / out.chunk.frame_mask.sum(1)).tolist()
        res["chunks_per_s"] += (n_chunks / clip_s).tolist()
        res["seconds"] += clip_s * take
        res["chunks"] += float(n_chunks.sum())
        res["manifest"] += batch["lscore"][:take].tolist()
        res["data"] += list(score(audio.numpy()))
        kinds = {"gl": spec, "recon": out.recon.clamp_min(0), "seed": y}
        if guidance is not None:
            kinds["seed_g"] = G.guide(y, G.seed_hole(y.shape[-1], mask_fraction), guidance)
        scores = score(front.inverse(torch.cat(list(kinds.values()))).cpu().numpy())  # one Griffin-Lim call
        for j, key in enumerate(kinds):
            res[key] += list(scores[j * take : (j + 1) * take])
        for i in range(min(take, keep - len(res["examples"]))):
            res["examples"].append({"key": batch["keys"][i], "data": spec[i].cpu(), "seed": y[i].cpu(),
                                    "data_starts": G.chunk_start_frames(out, i),
                                    "seed_starts": G.chunk_start_frames(mo, i)})
        bar.update(take)
    bar.close()
    if not res["l1"]:
        raise ValueError(f"split '{split}' of {shards} yielded no items")
    return res


@torch.no_grad()
def run_uncond(loaded: G.Loaded, stats: dict, n: int, seconds: float, steps: int, gen: torch.Generator,
               score: Scorer, batch: int = 8, guidance: G.Guidance | None = None):
    """n unconditional outputs of ``seconds`` -> ((n, 4) exact L-Scores, (n, 4) after guidance or None, a few
    (spec, starts) examples)."""
    frames = loaded.front.num_frames(int(round(seconds * loaded.cfg.audio.sample_rate)))
    scores, guided, examples = [], [], []
    for start in tqdm(range(0, n, batch), desc="unconditional", unit="batch"):
        y, mo = G.unconditional(loaded.model, stats, min(batch, n - start), frames, steps, gen)
        specs = [y] if guidance is None else [y, G.guide(y, torch.ones(frames, dtype=torch.bool), guidance)]
        L = score(loaded.front.inverse(torch.cat(specs)).cpu().numpy())  # one Griffin-Lim call
        scores += list(L[: len(y)])
        guided += list(L[len(y):])
        examples += [(y[i].cpu(), G.chunk_start_frames(mo, i)) for i in range(min(3 - len(examples), len(y)))]
    return np.asarray(scores), (np.asarray(guided) if guided else None), examples


# ----------------------------------------------------------------------------------------------------------
# Table 1


def table1(names, target, target_std, sets: dict[str, np.ndarray]) -> dict:
    """Means, stds and signed relative errors per set; whether every term is within GOAL of the target."""
    t = np.asarray(target)
    table = {"names": list(names), "target": t.tolist(), "target_std": list(target_std)}
    for key, v in sets.items():
        mean = v.mean(0)
        table[key] = mean.tolist()
        table[f"{key}_std"] = v.std(0).tolist()
        table[f"{key}_rel_err"] = rel_err(mean, t).tolist()
        table[f"{key}_n"] = int(len(v))
    kinds = [k for k in ("uncond", "seed", "uncond_g", "seed_g") if k in sets]
    table["within_goal"] = {k: [bool(abs(e) <= GOAL) for e in table[f"{k}_rel_err"]] for k in kinds}
    table["goal_met"] = all(all(table["within_goal"][k]) for k in ("uncond", "seed"))  # the model alone
    if "uncond_g" in sets:
        table["goal_met_guided"] = all(all(table["within_goal"][k]) for k in ("uncond_g", "seed_g"))
    table["goal"] = GOAL
    table["paper_rel_err"] = {n: PAPER_TABLE1_REL_ERR.get(n, {}) for n in names}
    return table


def table1_markdown(t: dict, extra: dict) -> str:
    rows = []
    for j, name in enumerate(t["names"]):
        paper = t["paper_rel_err"].get(name, {})
        rows.append([name, t["target"][j], t["data"][j], pct(t["data_rel_err"][j]), t["uncond"][j],
                     pct(t["uncond_rel_err"][j]), t["seed"][j], pct(t["seed_rel_err"][j]), pct(paper.get("uncond")),
                     pct(paper.get("seed"))])
    head = ["term", "Target (train mean)", f"Data ({extra['split']} crops)", "rel", "Uncond", "rel", "Seed", "rel",
            "paper Uncond rel", "paper Seed rel"]
    guided = "uncond_g" in t
    if guided:
        for j, row in enumerate(rows):
            row[8:8] = [t["uncond_g"][j], pct(t["uncond_g_rel_err"][j]), t["seed_g"][j], pct(t["seed_g_rel_err"][j])]
        head[8:8] = ["Uncond+G", "rel", "Seed+G", "rel"]
    diag = [[name, t["manifest"][j], pct(t["manifest_rel_err"][j]), t["gl"][j], pct(t["gl_rel_err"][j]),
             t["recon"][j], pct(t["recon_rel_err"][j]), t["target_std"][j], t["data_std"][j], t["uncond_std"][j],
             t["seed_std"][j]] for j, name in enumerate(t["names"])]
    ok = f"**{'met' if t['goal_met'] else 'NOT met'}**"
    if guided:
        ok += (f" by the model alone; with L-Score guidance ({extra['guidance_steps']} steps, +G columns): "
               f"**{'met' if t['goal_met_guided'] else 'NOT met'}**")
    c = extra["chunks"]
    return (f"# Table 1: L-Score of generated outputs vs the dataset target\n\n"
            f"Split `{extra['split']}`: {t['data_n']} items; {t['uncond_n']} unconditional outputs, {t['seed_n']} "
            f"seed-based outputs (last {extra['mask_fraction']:.0%} in-painted). Checkpoint `{extra['checkpoint']}`.\n"
            f"Relative error = (mean − target) / target. Research goal (every term of Uncond and Seed within "
            f"±{GOAL:.0%}): {ok}.\n\n" + md_table(head, rows) +
            "\nPaper columns: the relative errors of the paper's Table 1 as quoted in issue 8 (rhythmic density "
            "only; the other cells are not available to us and are left blank rather than guessed).\n"
            f"`Data` = the exact L-Score of the split's own audio, cropped as the model sees it "
            f"({extra['seconds']:g} s from each item's start, loop-tiled if shorter; every output has that length): "
            "what real audio of that length scores, so its error is the floor of this comparison (sampling noise, "
            "and what is left of the target's length bias: the manifest scores whole items, and rhythmic "
            "irregularity grows with the window; see EVAL_SECONDS in evaluate.py).\n" +
            ("`+G` = the same outputs after L-Score guidance (generate.py: a per-frequency gain on the generated "
             "part fitted so the timbral and structural terms' batch mean and spread match real audio; generation-"
             "time control, not the model).\n" if guided else "") + "\n## Diagnostics\n\n"
            "`Items` = the split's manifest L-Score on whole items. `Data→GL` = the crops' spectrograms through "
            "Griffin-Lim, no model: what the vocoder alone does. `Recon` = the model's reconstructions through "
            "Griffin-Lim. Stds are across items.\n\n" +
            md_table(["term", "Items", "rel", "Data→GL", "rel", "Recon", "rel", "target std", "Data std",
                      "Uncond std", "Seed std"], diag) +
            f"\nReconstruction L1 (log1p spectrogram, {extra['split']}): **{extra['recon_l1']:.4f}**  \n"
            f"Chunks (eval-mode boundaries): boundary rate {c['boundary_rate']:.3f} per bottleneck frame "
            f"(target 1/{extra['target_ratio']:g} = {1 / extra['target_ratio']:.3f}), {c['chunks_per_s']:.2f} "
            f"chunks/s, mean chunk {1000 * c['chunk_s']:.0f} ms\n")


# ----------------------------------------------------------------------------------------------------------
# The command


def evaluate(checkpoint: str | Path, out: str | Path, split: str = "test", max_items: int = 0, n_uncond: int = 0,
             mask_fraction: float = G.MASK_FRACTION, steps: int = G.STEPS, seconds: float | None = None,
             shards: str | None = None, workers: int = 0, seed: int = 0, guidance_steps: int = 0,
             device: str | torch.device | None = None) -> dict:
    """Table 1 and diagnostics for ``checkpoint`` on ``split``; writes JSON, markdown and PNGs to ``out``.

    ``device``: where the model, the spectrograms and Griffin-Lim run (``weaktok.device.resolve_device``: default
    cuda when available, else cpu; DeviceError when CUDA is asked for and absent)."""
    from weaktok.device import resolve_device
    from weaktok.manifest import load_manifest

    t0 = time.time()
    device = resolve_device(device)  # before anything is loaded or written: a missing GPU fails fast
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = G.load_model(checkpoint, device)
    cfg, sr = loaded.cfg, loaded.cfg.audio.sample_rate
    shards = shards or cfg.data.shards
    target = load_manifest(shards)["lscore_target"]
    torch.manual_seed(seed)  # Griffin-Lim's random phase init draws from the global generator (every device's)
    gen = torch.Generator(device=device).manual_seed(seed)

    stats = G.cached_spectrum(loaded, shards)
    seconds = seconds or max(EVAL_SECONDS, cfg.audio.clip_seconds)
    guidance = G.make_guidance(loaded, shards, seconds, guidance_steps)
    score = Scorer(sr, workers)
    try:
        items = run_items(loaded, shards, split, max_items, seconds, stats, gen, mask_fraction, steps, score,
                          guidance=guidance)
        uncond, uncond_g, uncond_examples = run_uncond(loaded, stats, n_uncond or len(items["l1"]), seconds, steps,
                                                       gen, score, guidance=guidance)
    finally:
        score.close()
    sets = {k: np.asarray(items[k]) for k in ("data", "manifest", "gl", "recon", "seed")}
    sets["uncond"] = uncond
    if guidance is not None:
        sets["uncond_g"], sets["seed_g"] = uncond_g, np.asarray(items["seed_g"])
    t = table1(target["names"], target["mean"], target["std"], sets)
    chunks = {"boundary_rate": float(np.mean(items["rate"])), "chunks_per_s": float(np.mean(items["chunks_per_s"])),
              "chunk_s": items["seconds"] / max(items["chunks"], 1.0)}
    extra = {"split": split, "checkpoint": str(loaded.path), "mask_fraction": mask_fraction,
             "recon_l1": float(np.mean(items["l1"])), "chunks": chunks,
             "target_ratio": cfg.model.chunking.target_ratio, "seconds": seconds, "guidance_steps": guidance_steps}
    t.update({"split": split, "clip_seconds": seconds, "recon_l1": extra["recon_l1"], "chunks": chunks,
              "checkpoint": str(loaded.path), "device": str(device), "chunking": cfg.model.chunking.kind,
              "lscore_mode": cfg.lscore.mode,
              "generation": {"mask_fraction": mask_fraction, "steps": steps, "seed": seed,
                             "guidance_steps": guidance_steps},
              "seconds": round(time.time() - t0, 1)})
    (out / "table1.json").write_text(json.dumps(t, indent=2))
    (out / "table1.md").write_text(table1_markdown(t, extra))
    _plots(loaded, items, uncond_examples, sets, t, out)
    t["seconds"] = round(time.time() - t0, 1)
    (out / "table1.json").write_text(json.dumps(t, indent=2))
    return t


def _plots(loaded, items, uncond_examples, sets, t, out: Path) -> None:
    fs, sr = loaded.front.frame_seconds, loaded.cfg.audio.sample_rate
    plot_lscore_hist(t["names"], {k: sets[k] for k in ("data", "uncond", "seed", "uncond_g", "seed_g") if k in sets},
                     t["target"],
                     out / "lscore_hist.png")
    for i, ex in enumerate(items["examples"]):
        rows = [(ex["data"], ex["data_starts"], f"data {ex['key']} (model's chunks)"),
                (ex["seed"], ex["seed_starts"], "seed-based (last half in-painted)")]
        if i < len(uncond_examples):
            rows.append((*uncond_examples[i], f"unconditional {i}"))
        plot_spectrogram_rows(rows, out / f"examples_{i}.png", fs, sr)
    run = loaded.path.parent.parent if loaded.path.parent.name == "final" else loaded.path.parent
    plot_training_curves(run / "metrics.jsonl", out / "training_curves.png")
