"""The model card (README.md of a model folder, weaktok/model/artifact.py): data, config, Table 1, license, use.

Built from what the run left behind: the resolved config, the training shards' manifest.json (when the shards
are readable), the source corpus' metadata.json (its items' licenses) and the run's Table 1 (``eval/table1.json``
beside the run folder, weaktok/evaluation/run.py) when it was evaluated.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

from weaktok import __version__
from weaktok.config import Config

TERMS = ("timbral", "density", "irregularity", "structural")
CODE_LICENSE = "Apache-2.0"
RESULTS_DOC = "docs/results.md"
CC0 = "http://creativecommons.org/publicdomain/zero/1.0/"  # as weaktok/data/corpus.py records it


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def find_table1(run: Path) -> Path | None:
    """The run's Table 1: <run>/eval/table1.json or, for a run folder inside a demo (runs/demo/train), the
    sibling <run>/../eval/table1.json."""
    for cand in (run / "eval" / "table1.json", run.parent / "eval" / "table1.json"):
        if cand.is_file():
            return cand
    return None


def data_licenses(manifest: dict | None) -> list[str]:
    """Licenses of the items of the shards' source corpus (its metadata.json, FSLD layout), when readable."""
    src = (manifest or {}).get("source")
    meta = read_json(Path(src) / "metadata.json") if src else None
    if not isinstance(meta, dict):
        return []
    found = {str(v.get("license")) for v in meta.values() if isinstance(v, dict)} - {"None"}
    return sorted(f"CC0 1.0 ({x})" if x == CC0 else x for x in found)


def data_section(cfg: Config, manifest: dict | None) -> list[str]:
    if manifest is None:
        return [
            f"Training shards: `{cfg.data.shards}` (their manifest.json was not readable at export)."
        ]
    splits = ", ".join(
        f"{name} {s.get('count', '?')} items ({s.get('seconds', 0):.0f} s)"
        for name, s in manifest.get("splits", {}).items()
    )
    licenses = data_licenses(manifest)
    return [
        f"Training shards: `{cfg.data.shards}`, built by `{manifest.get('command', '?')}` from "
        f"`{manifest.get('source', '?')}` at {manifest.get('sample_rate', '?')} Hz "
        f"(weaktok {manifest.get('version', '?')}, {manifest.get('created', '?')}).",
        f"Splits: {splits}.",
        "Data license: "
        + (", ".join(licenses) if licenses else "not recorded in the source's metadata.json")
        + " (the embedded corpus is built from Debian's sonic-pi-samples, CC0).",
    ]


def config_section(cfg: Config) -> list[str]:
    m, a = cfg.model, cfg.audio
    return [
        f"- model: `objective: {m.objective}`, dim {m.dim}, channels {list(m.channels)}, Transformer "
        f"layers {m.n_layers} ({m.positions} positions), chunking `{m.chunking.kind}` "
        f"(target ratio {m.chunking.target_ratio}, select {m.chunking.select})",
        f"- audio: {a.sample_rate} Hz, n_fft {a.n_fft}, hop {a.hop_length}, clips of {a.clip_seconds} s",
        f"- training: {cfg.train.epochs} epochs, lr {cfg.train.lr}, precision "
        f"{cfg.train.precision}, seed {cfg.seed}",
        "- the whole resolved config: `config.yaml` (`weaktok train --config config.yaml ...` retrains it)",
    ]


def table1_section(table: dict | None, source: Path | None) -> list[str]:
    if table is None:
        return [
            "Not evaluated: `weaktok evaluate --checkpoint DIR ...` writes Table 1 (docs/evaluation.md)."
        ]
    lines = [
        f"From `{source}` (`{table.get('split')}` split of `{table.get('eval_shards')}`, "
        f"outputs of {table.get('clip_seconds', '?')} s). Relative error of the exact L-Score of generated audio "
        f"vs the training target (goal ±{100 * table.get('goal', 0):.0f} %; met: {table.get('goal_met')}):",
        "",
        "| mode | " + " | ".join(table.get("names", TERMS)) + " |",
        "|---|" + "---|" * len(table.get("names", TERMS)),
    ]
    for mode in ("uncond", "seed"):
        rel = (table.get(mode) or {}).get("rel_err_over_seeds", {}).get("mean") or []
        lines.append(f"| {mode} | " + " | ".join(f"{100 * r:+.1f} %" for r in rel) + " |")
    chunks = table.get("chunks") or {}
    if "chunks_per_s" in chunks:
        lines += ["", f"Chunks per second on real audio: {chunks['chunks_per_s']:.2f}."]
    return lines


USE = """```python
from weaktok import WeakTok

tok = WeakTok.from_pretrained(".")  # this folder
audio = tok.generate(n=2)  # (2, samples) float32 at tok.sample_rate
```

The API: docs/api.md of the weaktok repository. This folder is all it needs."""

LIMITS = f"""A research model for studying weak (content-driven) tokenization of irregular music, not a product.
The models this repository has trained are measured far from real audio (Table 1 above when the run was
evaluated; the repository's {RESULTS_DOC}), and none is evaluated on music outside its training data."""


def model_card(
    cfg: Config,
    manifest: dict | None,
    table: dict | None,
    table_source: Path | None,
    source: str = "",
) -> str:
    """The README.md of a model folder; ``source``: the run it was exported from."""
    made = (
        f" Exported from `{source}` by weaktok {__version__} on {date.today()}." if source else ""
    )
    sections = {
        f"# weaktok model: {cfg.name}": "A dynamically chunked U-Net over log spectrograms (weak "
        "tokenization of audio)." + made,
        "## Use": USE,
        "## Data": "\n".join(data_section(cfg, manifest)),
        "## Config": "\n".join(config_section(cfg)),
        "## Table 1": "\n".join(table1_section(table, table_source)),
        "## License": f"Code: {CODE_LICENSE} (the weaktok repository's LICENSE). The weights are trained on "
        "the data above; its license travels with them.",
        "## Intended use and limitations": LIMITS,
    }
    return "\n\n".join(f"{head}\n\n{body}" for head, body in sections.items()) + "\n"
