"""The passes of ``weaktok evaluate``: every set Table 1 compares, made and scored batch by batch.

    ref = training_reference(loaded, train_shards, regions, score, max_items)   # the target, the memory bank
    p = evaluation_pass(models, stats, shards, split, regions, ...)            # every set, every mode
    p["col"].get("model0", "seed")                                             # (n, 4) exact L-Scores

The sets (docs/evaluation.md, "Sets and baselines"): ``data`` is the evaluation split itself (every item; its
error vs the target is the floor of the comparison). On the first ``n_gen`` items: ``data_vocoder`` (the item's
spectrogram through Griffin-Lim, no model), ``copy_seed`` (seed rows: the seed's known part copied into the hole,
no model), ``prior_noise`` (the generation prior's noise through the vocoder; in the hole for seed rows), and
each model (per checkpoint = training seed): ``model<i>``, ``model<i>_cut`` (the bypass ablation) and, with
L-Score guidance, ``model<i>_guided``. Every output goes through one Griffin-Lim call per batch.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from weaktok import generate as G
from weaktok.data.loader import eval_loader
from weaktok.evaluation.bypass import bypass_losses
from weaktok.evaluation.clips import ClipKeeper
from weaktok.evaluation.scoring import Regions, Scorer, clip_features
from weaktok.generate.sampler import MODES
from weaktok.model.unet import chunk_path_cut


class Collector:
    """Per-set, per-mode rows of exact L-Scores and features, appended batch by batch, and the differentiable
    L-Score of the same spectrograms (``what="surrogate"``: the surrogate's bias on these sets)."""

    def __init__(self):
        self.lscore: dict[tuple[str, str], list] = {}
        self.feat: dict[tuple[str, str], list] = {}
        self.surrogate: dict[tuple[str, str], list] = {}

    def add(self, name: str, mode: str, L: np.ndarray, F: np.ndarray) -> None:
        self.lscore.setdefault((name, mode), []).extend(L)
        self.feat.setdefault((name, mode), []).extend(F)

    def add_surrogate(self, name: str, mode: str, S: np.ndarray) -> None:
        self.surrogate.setdefault((name, mode), []).extend(S)

    def get(self, name: str, mode: str, what: str = "lscore") -> np.ndarray:
        rows = {"lscore": self.lscore, "feat": self.feat, "surrogate": self.surrogate}[what]
        return np.asarray(rows[(name, mode)])


def surrogate_rows(surrogate, front, spec: torch.Tensor, mode: str, regions: Regions) -> np.ndarray:
    """(B, F, T) log-magnitude spectrograms -> (B, 4) differentiable L-Scores of the mode's scored region, computed
    as training's loss computes them (``surrogate(front.power(spec))``, weaktok/train/step.py): on the spectrogram
    the model emits, not on its Griffin-Lim re-analysis, so set against the exact scores of the waveform it is the
    bias the L-Score loss works with."""
    region = spec if mode == "uncond" else spec[..., regions.hole_frame :]
    return surrogate(front.power(region.float())).cpu().numpy()


def copy_seed(spec: torch.Tensor, hole_frame: int) -> torch.Tensor:
    """(B, F, T) -> the seed's known frames tiled into the hole: the no-model baseline for seed rows (loops repeat,
    so copying the known part is a strong guess)."""
    T = spec.shape[-1]
    src = torch.arange(hole_frame, T, device=spec.device) % max(hole_frame, 1)
    out = spec.clone()
    out[..., hole_frame:] = spec[..., src]
    return out


@torch.no_grad()
def training_reference(
    loaded: G.Loaded,
    shards: str,
    regions: Regions,
    score: Scorer,
    max_items: int,
    onset: str = "paper",
) -> dict:
    """Exact L-Scores and features of the training split's clips, per mode's region: the length-matched target
    and the memorisation bank. Cached beside the first model (reference_<seconds>s_<hole>.pt)."""

    def compute() -> dict:
        rows = {f"{k}_{m}": [] for k in ("lscore", "feat") for m in MODES}
        bar = tqdm(total=max_items, desc="training reference", unit="item")
        for batch in eval_loader(shards, "train", 16, regions.n / regions.sr):
            waves = batch["audio"].numpy()[: max_items - len(rows["lscore_uncond"])]
            for m in MODES:
                cropped = regions.crop(m, waves)
                rows[f"lscore_{m}"] += list(score(cropped))
                rows[f"feat_{m}"] += list(clip_features(cropped, regions.sr))
            bar.update(len(waves))
            if len(rows["lscore_uncond"]) >= max_items:
                break
        bar.close()
        if not rows["lscore_uncond"]:
            raise ValueError(f"no items in the train split of {shards}")
        return {k: torch.tensor(np.asarray(v), dtype=torch.float64) for k, v in rows.items()}

    name = f"reference_{regions.n / regions.sr:g}s_{regions.hole_sample}_{max_items}_{onset}_v2.pt"
    stats = G.cached_beside(loaded, name, compute)
    return {k: v.cpu().numpy() for k, v in stats.items()}


def baseline_spectrograms(spec, stats, hole, regions: Regions, gen) -> dict:
    """The no-model sets of one batch, {(set, mode): (g, F, T)}; ``gen`` draws the prior's noise."""
    g = spec.shape[0]
    return {
        ("data_vocoder", "uncond"): spec,
        ("data_vocoder", "seed"): spec,
        ("copy_seed", "seed"): copy_seed(spec, regions.hole_frame),
        ("prior_noise", "uncond"): G.sample_prior(stats, g, regions.frames, gen),
        ("prior_noise", "seed"): torch.where(
            hole, G.sample_prior(stats, g, regions.frames, gen), spec
        ),
    }


@torch.no_grad()
def evaluation_pass(
    models: list[G.Loaded],
    stats: dict,
    shards: str,
    split: str,
    regions: Regions,
    n_items: int,
    n_gen: int,
    mask_fraction: float,
    steps: int,
    score: Scorer,
    seed: int,
    guidance: G.Guidance | None,
    surrogate,
    keep: int = 3,
    clips: ClipKeeper | None = None,
) -> dict:
    """One pass over the evaluation split: real data on every item; baselines, model outputs (per model) and the
    bypass ablation on the first ``n_gen``. Returns a Collector plus the ablation's L1 rows and examples;
    ``surrogate`` (the loss's DifferentiableLScore) scores the spectrograms of the data, the baselines and the
    model outputs beside the exact scores; ``clips`` keeps the first clips of every set for listening
    (weaktok/evaluation/clips.py)."""
    front, dev, sr = models[0].front, models[0].device, regions.sr
    hole = torch.zeros(regions.frames, dtype=torch.bool, device=dev)
    hole[regions.hole_frame :] = True
    col = Collector()
    l1 = {k: [] for k in ("recon_mean_spectrum", "inpaint_mean_spectrum")}
    for i in range(len(models)):
        for k in (
            "recon_intact",
            "recon_cut",
            "inpaint_intact",
            "inpaint_cut",
            "boundary_rate",
            "chunks_per_s",
            "gen_boundary_rate",
        ):
            l1[f"{i}:{k}"] = []
    examples: list[dict] = []
    seen = 0
    bar = tqdm(total=n_items, desc=f"evaluate {split}", unit="item")
    for b, batch in enumerate(eval_loader(shards, split, 8, regions.n / sr)):
        take = min(len(batch["keys"]), n_items - seen)
        if take <= 0:
            break
        audio = batch["audio"][:take]  # (B, n) CPU
        waves = audio.numpy()
        spec_all = front(audio.to(dev))  # (B, F, T)
        for m in MODES:  # the data floor: every item
            cropped = regions.crop(m, waves)
            col.add("data", m, score(cropped), clip_features(cropped, sr))
            col.add_surrogate("data", m, surrogate_rows(surrogate, front, spec_all, m, regions))
        g = min(take, n_gen - seen)  # items of this batch that also carry outputs
        if g > 0:
            spec = spec_all[:g]  # (g, F, T)
            gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + b)
            mean = stats["mean"][
                None, :, None
            ]  # (1, F, 1) the corpus mean spectrum: the trivial predictor
            l1["recon_mean_spectrum"] += (mean - spec).abs().mean(dim=(1, 2)).tolist()
            l1["inpaint_mean_spectrum"] += (mean - spec[..., hole]).abs().mean(dim=(1, 2)).tolist()
            specs = baseline_spectrograms(spec, stats, hole, regions, gen)
            outs = {}  # (set, mode) -> the ModelOutput whose chunks formed it
            for i, loaded in enumerate(models):
                model = loaded.model
                args = (model, spec, hole, stats, mask_fraction, steps, seed + 7 * b)
                out = bypass_losses(*args)
                with chunk_path_cut(model):
                    cut = bypass_losses(*args)
                for which, r in (("intact", out), ("cut", cut)):
                    l1[f"{i}:recon_{which}"] += r["recon"].tolist()
                    l1[f"{i}:inpaint_{which}"] += r["inpaint"].tolist()
                specs[(f"model{i}_cut", "seed")] = cut["seed"][0]
                specs[(f"model{i}_cut", "uncond")] = cut["uncond"][0]
                outs[(f"model{i}_cut", "seed")], outs[(f"model{i}_cut", "uncond")] = (
                    cut["seed"][1],
                    cut["uncond"][1],
                )
                (y_s, mo_s), (y_u, mo_u), fwd = out["seed"], out["uncond"], out["forward"]
                n_chunks = fwd.chunk.num_chunks.float()
                l1[f"{i}:boundary_rate"] += (
                    fwd.chunk.boundaries.sum(1) / fwd.chunk.frame_mask.sum(1)
                ).tolist()
                for mo in (
                    mo_u,
                    mo_s,
                ):  # the chunks while generating (flow: mean over the ODE's calls; else last)
                    rate = mo.stats.get("sampling_boundary_rate", mo.stats["boundary_rate"])
                    l1[f"{i}:gen_boundary_rate"].append(float(rate))
                l1[f"{i}:chunks_per_s"] += (
                    n_chunks / (regions.frames * front.frame_seconds)
                ).tolist()
                specs[(f"model{i}", "seed")] = y_s
                specs[(f"model{i}", "uncond")] = y_u
                outs[(f"model{i}", "seed")], outs[(f"model{i}", "uncond")] = mo_s, mo_u
                if guidance is not None:
                    specs[(f"model{i}_guided", "seed")] = G.guide(y_s, hole, guidance)
                    specs[(f"model{i}_guided", "uncond")] = G.guide(
                        y_u, torch.ones_like(hole), guidance
                    )
                    outs[(f"model{i}_guided", "seed")] = mo_s
                    outs[(f"model{i}_guided", "uncond")] = mo_u
                if i == 0:
                    outs[("data", "data")] = fwd
                if i == 0:
                    for j in range(min(g, keep - len(examples))):
                        examples.append(
                            {
                                "key": batch["keys"][j],
                                "data": spec[j].cpu(),
                                "seed": y_s[j].cpu(),
                                "uncond": y_u[j].cpu(),
                                "data_starts": G.chunk_start_frames(fwd, j),
                                "seed_starts": G.chunk_start_frames(mo_s, j),
                                "uncond_starts": G.chunk_start_frames(mo_u, j),
                            }
                        )
            unique = list(
                {id(v): v for v in specs.values()}.values()
            )  # data_vocoder serves both modes
            wav = (
                front.inverse(torch.cat(unique), length=regions.n).cpu().numpy()
            )  # one Griffin-Lim call
            at = {id(v): j for j, v in enumerate(unique)}
            for (name, m), v in specs.items():
                j = at[id(v)]
                cropped = regions.crop(m, wav[j * g : (j + 1) * g])
                col.add(name, m, score(cropped), clip_features(cropped, sr))
                if not name.endswith(
                    ("_cut", "_guided")
                ):  # surrogate_bias reports data, baselines, model
                    col.add_surrogate(name, m, surrogate_rows(surrogate, front, v, m, regions))
            if clips is not None:
                keys = batch["keys"][:g]
                clips.add("data", "data", waves[:g], spec, keys, outs[("data", "data")])
                for (name, m), v in specs.items():
                    if name == "data_vocoder" and m == "seed":
                        continue  # the same clip as its uncond row: listed once, under "data"
                    j, mode = at[id(v)], "data" if name == "data_vocoder" else m
                    clips.add(name, mode, wav[j * g : (j + 1) * g], v, keys, outs.get((name, m)))
        seen += take
        bar.update(take)
    bar.close()
    if not seen:
        raise ValueError(f"split '{split}' of {shards} yielded no items")
    return {"col": col, "l1": l1, "examples": examples, "n_items": seen, "n_gen": min(n_gen, seen)}
