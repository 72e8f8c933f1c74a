"""The listening page: ``weaktok report RUN`` writes ``RUN/index.html``, one self-contained HTML file (inline CSS,
no scripts, nothing fetched from the network) with Table 1 and its intervals, the baselines, the distances, the
plots, and an ``<audio>`` player beside the spectrogram (with the model's chunk boundaries) of every clip.

    write_page("runs/demo")        # a demo folder: eval/ (weaktok evaluate) and generate/ (weaktok generate)
    write_page("runs/demo/eval")   # an evaluation folder alone

Audio, plots and spectrograms stay where evaluate and generate wrote them; the page links them by relative path,
so the folder opens from disk (file://) or from any static file server, and can be zipped or copied as a whole.
Every text from the run's files is escaped (html.escape); a file the page would link but is missing becomes a
note instead of a broken player.
"""

from __future__ import annotations

import json
import os
import time
from html import escape
from pathlib import Path
from urllib.parse import quote

from weaktok.experiments import page_tables as T

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1280px; padding: 0 1.2em 3em;
       color: #1d1d1f; background: #fafafa; }
h1 { margin-top: .8em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: 13px; background: #fff; }
th, td { border: 1px solid #d0d0d0; padding: .25em .5em; text-align: right; white-space: nowrap; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
.ci { color: #666; font-size: 12px; } .bad { color: #a40000; } .ok { color: #006400; }
.note { color: #555; max-width: 62em; } .missing { color: #a40000; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: .8em; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .5em; }
figure img { width: 100%; display: block; } figcaption { font-size: 13px; margin: .3em 0; }
audio { width: 100%; } .plot { max-width: 100%; border: 1px solid #ddd; background: #fff; margin: .4em 0; }
.wide { overflow-x: auto; }
code { background: #eee; padding: 0 .25em; border-radius: 3px; }
"""

MODE_TITLES = {
    "data": "Held-out data",
    "uncond": "Unconditional",
    "seed": "Seed-based",
}


def find_eval(run: str | Path) -> Path:
    """The evaluation folder of ``run``: run itself (it holds table1.json) or run/eval (a demo folder)."""
    run = Path(run)
    for folder in (run, run / "eval"):
        if (folder / "table1.json").is_file():
            return folder
    raise FileNotFoundError(
        f"{run}: no evaluation found (neither {run / 'table1.json'} nor {run / 'eval' / 'table1.json'}); "
        f"run `weaktok evaluate --out {run / 'eval'} ...` (or `weaktok demo`) first"
    )


class Page:
    """Builds the body of one page whose file lives in ``base``; links are relative to it."""

    def __init__(self, base: Path):
        self.base = base.resolve()
        self.parts: list[str] = []
        self.missing: list[str] = []

    def add(self, *html: str) -> None:
        self.parts.extend(html)

    def url(self, path: Path) -> str:
        """A relative, percent-encoded link to ``path`` (a file the page shows)."""
        return quote(Path(os.path.relpath(Path(path).resolve(), self.base)).as_posix())

    def exists(self, path: Path) -> bool:
        if Path(path).is_file():
            return True
        self.missing.append(str(path))
        return False

    def img(self, path: Path, alt: str, cls: str = "plot") -> str:
        if not self.exists(path):
            return f'<p class="missing">missing: {escape(str(path))}</p>'
        return f'<img class="{cls}" src="{self.url(path)}" alt="{escape(alt)}">'

    def clip(self, wav: Path, png: Path | None, caption: str) -> str:
        """A figure: caption, player, spectrogram."""
        if not self.exists(wav):
            note = f'<p class="missing">missing: {escape(str(wav))}</p>'
            return f"<figure><figcaption>{escape(caption)}</figcaption>{note}</figure>"
        img = self.img(png, caption, "spec") if png is not None else ""
        return (
            f"<figure><figcaption>{escape(caption)}</figcaption>"
            f'<audio controls preload="metadata" src="{self.url(wav)}"></audio>{img}</figure>'
        )


# ----------------------------------------------------------------------------------------------------------
# Sections


def _summary(t: dict, ev: Path) -> str:
    reg, n = t["scored_region"], t["n_items"]
    seeds = ", ".join(
        f"<code>{escape(s['checkpoint'])}</code> (train seed {s['train_seed']})" for s in t["seeds"]
    )
    goal = t["goal_met"]
    return (
        f"<p>Evaluation folder <code>{escape(str(ev))}</code>: split <code>{escape(t['split'])}</code> of "
        f"<code>{escape(t['eval_shards'])}</code>, {n['data']} items (the data floor), "
        f"{n['generated_per_seed']} outputs per mode per checkpoint; checkpoints: {seeds}. "
        f"Clips of {t['clip_seconds']:g} s; unconditional outputs are scored whole, seed-based ones on the "
        f"in-painted last {reg['seed']['seconds']:g} s (from {reg['seed']['start_s']:g} s). "
        f"Research goal (every term within ±{100 * t['goal']:g} % of the target): "
        f'<b class="{"ok" if goal else "bad"}">{"met" if goal else "not met"}</b> by the point estimates, '
        f"{'met' if t['goal_met_ci'] else 'not met'} by the intervals.</p>"
    )


def _plots(page: Page, ev: Path) -> None:
    page.add('<h2 id="plots">Plots</h2>')
    plots = [
        (
            "rel_err.png",
            "relative error vs the target with 95 % intervals, model beside the baselines",
        ),
        ("lscore_hist.png", "exact L-Score histograms: data and model, per mode"),
    ]
    if (ev / "training_curves.png").is_file():  # evaluate draws it only from a run's metrics.jsonl
        plots.append(("training_curves.png", "training curves"))
    for name, alt in plots:
        page.add(f"<p class=note>{escape(alt)}</p>", page.img(ev / name, alt))
    examples = sorted(ev.glob("examples_*.png"))
    if examples:
        page.add(
            "<p class=note>Examples: a data clip with the model's chunk boundaries, a seed-based and an "
            "unconditional output (cyan lines: chunk starts).</p>"
        )
        page.add(*(page.img(p, p.stem) for p in examples))


def _listening(page: Page, ev: Path) -> None:
    """The evaluation's clips (audio/clips.json), grouped by mode, then by set."""
    page.add('<h2 id="listen">Listen: every set Table 1 scores</h2>')
    index_path = ev / "audio" / "clips.json"
    if not index_path.is_file():
        page.add(
            f'<p class="missing">{escape(str(ev))} has no audio/clips.json: this evaluation wrote no clips '
            "(it predates them, or ran with <code>--clips 0</code>); run <code>weaktok evaluate</code> again "
            "to hear every set.</p>"
        )
        return
    idx = json.loads(index_path.read_text())
    page.add(
        f"<p class=note>The first clips of each set, exactly the waveforms Table 1 scored ({idx['clip_seconds']:g} s "
        f"at {idx['sample_rate']} Hz; loud Griffin-Lim outputs are scaled down to peak 0.99). Spectrograms: cyan "
        f"lines are the chunk starts the model formed; in seed-based clips the dashed white line at "
        f"{idx['hole_start_s']:.2f} s is where the in-painted, scored region begins.</p>"
    )
    for mode in ("data", "uncond", "seed"):
        groups = [g for g in idx["groups"] if g["mode"] == mode]
        if not groups:
            continue
        page.add(
            f'<h3 id="listen-{mode}">{escape(MODE_TITLES[mode])}</h3>',
            f"<p class=note>{escape(idx['modes'].get(mode, ''))}</p>",
        )
        for g in groups:
            who = f" (checkpoint {escape(g['checkpoint'])})" if g["checkpoint"] else ""
            page.add(
                f"<h4>{escape(g['set'])}</h4><p class=note>{escape(g['what'])}{who}</p>",
                '<div class="grid">',
            )
            for k, c in enumerate(g["clips"]):
                bits = [c["key"] if c["key"] is not None else f"output {k}", f"{c['seconds']:g} s"]
                if c["chunks"] is not None:
                    bits.append(f"{c['chunks']} chunks")
                if c.get("scaled"):
                    bits.append(f"scaled from peak {c['peak']:g}")
                page.add(
                    page.clip(ev / "audio" / c["wav"], ev / "audio" / c["png"], " · ".join(bits))
                )
            page.add("</div>")


def _seed_file(src: str, folder: Path) -> Path:
    """A seed file: beside the outputs (the demo's generate/seeds/), else the path generate.json recorded
    (relative to where the command ran)."""
    p = Path(src)
    # beside the outputs first: the folder may have moved since
    for cand in (folder.parent / "seeds" / p.name, folder / p.name, p):
        if cand.is_file():
            return cand
    return p


def _generated(page: Page, run: Path) -> None:
    """Outputs of ``weaktok generate`` under run/generate/*/generate.json (a demo folder)."""
    found = (
        sorted((run / "generate").glob("*/generate.json")) if (run / "generate").is_dir() else []
    )
    if not found:
        return
    page.add('<h2 id="generated">Generated with <code>weaktok generate</code></h2>')
    for path in found:
        g, folder = json.loads(path.read_text()), path.parent
        n = len(g["outputs"])
        hole = (
            f", in-painting the last {100 * g['mask_fraction']:g} %"
            if g.get("mask_fraction")
            else ""
        )
        page.add(
            f"<h3>{escape(g['mode'])} ({escape(folder.name)}/)</h3><p class=note>{n} output{'s' * (n != 1)} "
            f"of {g['seconds']:g} s from <code>{escape(g['checkpoint'])}</code>, {g['steps']} steps{hole}.</p>",
            '<div class="grid">',
        )
        seeds = g.get("seed_audio") or []
        for k, r in enumerate(g["outputs"]):
            if k < len(seeds):
                seed = _seed_file(seeds[k], folder)
                page.add(page.clip(seed, None, f"seed: {seed.name}"))
            page.add(
                page.clip(
                    folder / r["wav"], folder / r["png"], f"{r['name']} · {r['chunks']} chunks"
                )
            )
        page.add("</div>")


def write_page(run: str | Path) -> Path:
    """Write ``run``/index.html (run: a demo folder or an evaluation folder); returns its path."""
    run = Path(run)
    ev = find_eval(run)
    try:
        return _write(run, ev, json.loads((ev / "table1.json").read_text()))
    except (KeyError, ValueError) as e:  # a truncated file, or one from an older weaktok evaluate
        raise ValueError(
            f"{ev / 'table1.json'}: unreadable ({type(e).__name__}: {e}); run weaktok evaluate again"
        ) from e


def _write(run: Path, ev: Path, t: dict) -> Path:
    page = Page(run)
    page.add(
        '<nav><a href="#table1">Table 1</a><a href="#listen">Listen</a><a href="#plots">Plots</a>'
        '<a href="#baselines">Baselines</a><a href="#distances">Distances</a><a href="#bypass">Bypass</a></nav>',
        "<h1>weaktok: Table 1 and listening</h1>",
        _summary(t, ev),
        '<h2 id="table1">Table 1: exact L-Score of generated audio vs the training target</h2>',
        T.table1(t),
    )
    _listening(page, ev)
    if ev != run:
        _generated(page, run)
    _plots(page, ev)
    page.add(
        '<h2 id="baselines">Baselines</h2>',
        T.baselines(t),
        '<h2 id="distances">Distances (offline features; reference: held-out real clips)</h2>',
        T.distances(t),
        '<h2 id="bypass">Bypass ablation: is the chunk path load-bearing?</h2>',
        T.bypass(t),
    )
    if page.missing:
        page.add(
            f'<p class="missing">Missing files ({len(page.missing)}): '
            + ", ".join(f"<code>{escape(m)}</code>" for m in page.missing)
            + "</p>"
        )
    page.add(
        f"<p class=note>Written by <code>weaktok report {escape(str(run))}</code> at "
        f"{escape(time.strftime('%Y-%m-%d %H:%M'))} from {escape(str(ev / 'table1.json'))}. Every number is "
        "defined in docs/evaluation.md.</p>"
    )
    html = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request (a file:// page would log a failed load)
        f"<title>weaktok report: {escape(str(run))}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(page.parts)
        + "\n</body></html>\n"
    )
    path = run / "index.html"
    path.write_text(html, encoding="utf-8")
    return path
