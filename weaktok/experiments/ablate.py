"""Ablations: the same data and budget, one change at a time, each a real training run and then evaluation.

    weaktok ablate --config demo --out runs/ablate [key=value ...]

Variants (``variants``), all trained from the same config + overrides with the same seed, epochs and batch size:
  dynamic   the config as given (dynamic chunking, its lscore.mode)                 -- the reference
  fixed     model.chunking.kind=fixed, fixed_stride = round(target_ratio): a fixed grid at the compression the
            ratio loss drives dynamic chunking to (the paper's core hypothesis, which it never tested)
  paper     lscore.mode=paper: only the timbral term carries gradient (the paper's loss) vs our surrogates
            (does the surrogate fix rhythm control?)
The base config is resolved once; each variant is that config with its overrides applied, written to
``<out>/<name>/config.yaml`` and trained from that file by ``weaktok train`` (or the deepspeed launcher with
``ranks > 1``) in a subprocess (weaktok/launch/local.py), then evaluated on the split. Writes ``ablation.json``
and ``ablation.md`` (two comparison tables) in ``--out``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from weaktok.config import Config, load_config, to_dict, with_overrides
from weaktok.evaluation.run import evaluate
from weaktok.launch.local import train_subprocess
from weaktok.plots import md_table, pct

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------
# Variants


def variants(cfg: Config) -> dict[str, dict]:
    """name -> {"what": a line for the tables, "overrides": what the variant changes in ``cfg``}."""
    stride = max(1, int(round(cfg.model.chunking.target_ratio)))
    return {
        "dynamic": {
            "what": f"dynamic chunking (target ratio {cfg.model.chunking.target_ratio:g}), "
            f"lscore.mode={cfg.lscore.mode}",
            "overrides": [],
        },
        "fixed": {
            "what": f"fixed grid, stride {stride}, lscore.mode={cfg.lscore.mode}",
            "overrides": ["model.chunking.kind=fixed", f"model.chunking.fixed_stride={stride}"],
        },
        "paper": {
            "what": "dynamic chunking, lscore.mode=paper (timbral gradient only)",
            "overrides": ["lscore.mode=paper"]
            if cfg.lscore.mode != "paper"
            else ["lscore.mode=surrogate"],
        },
    }


def ablate(
    config: str,
    out: str | Path,
    overrides: list[str] | None = None,
    names: list[str] | None = None,
    ranks: int = 1,
    split: str = "test",
    max_items: int = 0,
    seconds: float | None = None,
    target_items: int | None = None,
) -> dict:
    """Train and evaluate each variant in ``out/<name>``; a variant with final weights is not retrained."""
    out, overrides = Path(out), list(overrides or [])
    base = load_config(config, overrides)  # resolved and validated once, before anything starts
    all_variants = variants(base)
    names = names or list(all_variants)
    unknown = sorted(set(names) - set(all_variants))
    if unknown:
        raise ValueError(
            f"unknown ablation variant(s) {', '.join(unknown)}; known: {', '.join(all_variants)}"
        )
    configs = {name: with_overrides(base, all_variants[name]["overrides"]) for name in names}
    results = {}
    for i, name in enumerate(names, 1):
        v = all_variants[name]
        run = out / name
        log.info("[ablate %d/%d] %s: %s", i, len(names), name, v["what"])
        train_s = 0.0
        if not (run / "final" / "model.pt").is_file():
            train_s = train_subprocess(configs[name], run, ranks)
        t0 = time.time()
        extra = {"target_items": target_items} if target_items else {}
        table = evaluate(
            run,
            run / "eval",
            split=split,
            max_items=max_items,
            seconds=seconds,
            rulers=False,
            clips=0,  # no listening clips per variant (weaktok evaluate on a variant's run writes them)
            **extra,
        )
        results[name] = {
            **v,
            "train_seconds": round(train_s, 1),
            "eval_seconds": round(time.time() - t0, 1),
            "table1": table,
        }
    summary = {
        "config": config,
        "overrides": overrides,
        "resolved": to_dict(base),
        "split": split,
        "variants": {**_earlier(out / "ablation.json", config, overrides, split), **results},
    }
    (out / "ablation.json").write_text(json.dumps(summary, indent=2))
    (out / "ablation.md").write_text(ablation_markdown(summary))
    return summary


def _earlier(path: Path, config: str, overrides: list[str], split: str) -> dict:
    """Variant results of an earlier call with the same config, overrides and split (so subsets accumulate)."""
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    same = (old.get("config"), old.get("overrides"), old.get("split")) == (config, overrides, split)
    return old.get("variants", {}) if same else {}


def _row(name: str, r: dict) -> list:
    t = r["table1"]
    err = {
        m: t[m]["pooled"]["rel_err"] for m in ("uncond", "seed")
    }  # evaluate.py: relative error vs the target
    mean_abs = lambda k: float(np.mean(np.abs(err[k])))  # noqa: E731
    return [
        name,
        r["what"],
        t["bypass"]["recon"]["intact"],
        t["chunks"]["boundary_rate"],
        f"{t['chunks']['chunks_per_s']:.2f}",
        f"{100 * mean_abs('uncond'):.1f} %",
        f"{100 * mean_abs('seed'):.1f} %",
        *[f"{pct(u)} / {pct(s)}" for u, s in zip(err["uncond"], err["seed"])],
    ]


def ablation_markdown(summary: dict) -> str:
    res = summary["variants"]
    any_t = next(iter(res.values()))["table1"]
    head = [
        "variant",
        "what",
        "recon L1",
        "boundary rate",
        "chunks/s",
        "mean abs err Uncond",
        "mean abs err Seed",
        *[f"{n} Uncond / Seed" for n in any_t["names"]],
    ]
    text = (
        f"# Ablations\n\nConfig `{summary['config']}` {' '.join(summary['overrides'])}; same data, seed and "
        f"budget for every variant; evaluated on `{summary['split']}`. Errors are relative to the train-split "
        "target L-Score (signed per term; the mean is over the absolute values).\n\n"
    )
    for title, pair in (
        ("Dynamic vs fixed-grid chunking (same compression)", ("dynamic", "fixed")),
        ("L-Score loss: surrogate vs paper (timbral-only gradient)", ("dynamic", "paper")),
    ):
        rows = [_row(n, res[n]) for n in pair if n in res]
        if len(rows) == 2:
            text += f"## {title}\n\n" + md_table(head, rows) + "\n"
    text += (
        "Training seconds: "
        + ", ".join(f"{n} {r['train_seconds']:.0f} s" for n, r in res.items())
        + "\n"
    )
    return text
