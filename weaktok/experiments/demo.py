"""The end-to-end demo (``make demo`` -> ``weaktok demo``): corpus -> shards -> 2-rank DeepSpeed training ->
evaluation (Table 1) -> generation -> runs/demo/report.md and the listening page runs/demo/index.html, with the
time each stage took.

Evaluation runs on a separate held-out set: a second corpus (another seed, ``eval_n`` items) sharded as one ``eval``
split, large enough that the data floor's 95 % intervals are narrow (docs/evaluation.md). The training shards' own
test split stays for the loop's quick checks.

    weaktok demo                 # the full job: config demo-flow, 2 CPU ranks, ZeRO-2 (~10-15 min on 2 cores)
    weaktok demo --config demo   # the same with the in-painting model
    weaktok demo --quick         # smoke-test scale: 48 loops, the tiny config, 1 epoch (~2 min)

Idempotent-ish: an existing corpus (metadata.json) and shard folder (manifest.json) are reused, and so is a
finished training run whose config.yaml equals the one this demo would train (``--retrain`` forces a new run;
a run with a different config is moved aside and retrained). Evaluation, generation and the report always run.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from weaktok.audio import write_wav
from weaktok.config import Config, load_config, to_dict
from weaktok.data import corpus as corpus_build
from weaktok.data import shards as shards_build
from weaktok.data.loader import eval_loader
from weaktok.data.manifest import load_manifest
from weaktok.evaluation.run import evaluate
from weaktok.experiments.page import write_page
from weaktok.experiments.report import write_demo_report
from weaktok.generate import generate
from weaktok.launch.local import train_subprocess

log = logging.getLogger(__name__)

DEMO_CONFIG = "demo-flow"  # the main job trains the flow model (docs/generative-model.md); --config demo: in-painting


@dataclass
class Plan:
    out: Path
    corpus: Path
    shards: Path
    config: str
    corpus_n: int
    ranks: int
    overrides: list[str]
    eval_corpus: Path | None = (
        None  # the held-out evaluation corpus (a different seed) and its shards
    )
    eval_shards: Path | None = None
    eval_n: int = 640  # items in the evaluation corpus
    max_items: int = 0  # evaluation items of the data floor (0 = the whole eval split)
    n_gen: int = 64  # outputs per mode scored in Table 1
    eval_seconds: float | None = (
        None  # clip length of the evaluation (None: weaktok.evaluation.run.EVAL_SECONDS)
    )
    clips: int = 4  # clips per set and mode that evaluate writes for the listening page
    n_uncond: int = 8
    n_seeds: int = 3
    guidance_steps: int = (
        0  # > 0: evaluate also scores the outputs after L-Score guidance (generate.guide)
    )
    cfg: Config | None = (
        None  # the training config, resolved once (config + train_overrides) by demo()
    )
    timings: dict = field(default_factory=dict)
    notes: dict = field(default_factory=dict)
    earlier: dict = field(
        default_factory=dict
    )  # timings of the run that built what this one reuses

    def reuse(self, stage_name: str) -> None:
        took = self.earlier.get(stage_name)
        self.notes[stage_name] = f"reused (built in {took:.0f} s)" if took else "reused"


def make_plan(
    out: str | None,
    corpus: str | None,
    shards: str | None,
    quick: bool,
    overrides: list[str] | None,
    config: str | None = None,
) -> Plan:
    if quick:  # smoke-test scale: everything under one folder, the tiny model, one epoch, no Ray in training
        root = Path(out or "runs/demo-quick")
        return Plan(
            root,
            Path(corpus or root / "corpus"),
            Path(shards or root / "shards"),
            config or "tiny",
            48,
            2,
            [
                "train.epochs=1",
                "data.samples_per_epoch=16",
                "lscore.pool_every=0",
                "lscore.val_items=0",
                *(overrides or []),
            ],
            eval_corpus=root / "corpus-eval",
            eval_shards=root / "shards-eval",
            eval_n=24,
            n_gen=4,
            eval_seconds=4.0,
            clips=2,
            n_uncond=2,
            n_seeds=1,
            guidance_steps=0,
        )
    corpus_dir, shards_dir = Path(corpus or "corpus/demo"), Path(shards or "shards/demo")
    return Plan(
        Path(out or "runs/demo"),
        corpus_dir,
        shards_dir,
        config or DEMO_CONFIG,
        300,
        2,
        list(overrides or []),
        eval_corpus=corpus_dir.with_name(corpus_dir.name + "-eval"),
        eval_shards=shards_dir.with_name(shards_dir.name + "-eval"),
    )


@contextmanager
def stage(plan: Plan, k: int, n: int, name: str):
    """Log a banner around the stage and record its wall time in plan.timings."""
    log.info("\n=== [%d/%d] %s ===", k, n, name)
    t0 = time.time()
    yield
    plan.timings[name] = round(time.time() - t0, 1)
    log.info("=== %s: %.1f s ===", name, plan.timings[name])


# ----------------------------------------------------------------------------------------------------------
# Stages


def stage_corpus(plan: Plan) -> None:
    """The training corpus (seed 0) and the held-out evaluation corpus (seed 1)."""
    built = False
    for folder, n, seed in ((plan.corpus, plan.corpus_n, 0), (plan.eval_corpus, plan.eval_n, 1)):
        if (folder / "metadata.json").is_file():
            log.info("reusing the corpus in %s (delete it to rebuild)", folder)
            continue
        corpus_build.print_summary(corpus_build.build_corpus(folder, n=n, seed=seed))
        built = True
    if not built:
        plan.reuse("corpus")


def stage_shards(plan: Plan) -> None:
    """Training shards (70/15/15 split) and the evaluation shards (every item in split ``eval``)."""
    todo = [(plan.corpus, plan.shards, None), (plan.eval_corpus, plan.eval_shards, "eval")]
    for source, folder, split in list(todo):
        if (folder / "manifest.json").is_file():
            log.info("reusing the shards in %s (delete the folder to rebuild)", folder)
            shards_build.print_summary(load_manifest(folder), folder)
            todo.remove((source, folder, split))
    if not todo:
        plan.reuse("shards")
        return
    from weaktok.lscore.pool import LScorePool  # noqa: PLC0415 (imports Ray: only a shard build needs it)

    # Ray as weaktok/ray_cluster.py says: RAY_ADDRESS if it names a cluster, else our own local one
    with LScorePool(niceness=0) as pool:
        for source, folder, split in todo:
            manifest = shards_build.build_shards(
                source, folder, min_shards=4, command="weaktok demo", pool=pool, split=split
            )
            shards_build.print_summary(manifest, folder)


def train_overrides(plan: Plan) -> list[str]:
    return [f"data.shards={plan.shards}", "metrics.port_fallback=true", *plan.overrides]


def stage_train(plan: Plan, retrain: bool) -> Path:
    run = plan.out / "train"
    wanted = to_dict(plan.cfg)
    if run.exists():
        saved = (
            yaml.safe_load((run / "config.yaml").read_text())
            if (run / "config.yaml").is_file()
            else None
        )
        if not retrain and saved == wanted and (run / "final" / "model.pt").is_file():
            log.info("reusing the finished run in %s (--retrain to train again)", run)
            plan.reuse("train")
            return run
        old = run.with_name(f"train.old-{time.strftime('%Y%m%d-%H%M%S')}")
        log.info("moving the previous run aside to %s", old)
        run.rename(old)

    def watch(line: str) -> None:
        if "[weaktok] metrics at" in line:
            url = line.split("metrics at", 1)[1].split()[0]
            plan.notes["metrics_url"] = url
            log.info(
                "\n  >>> Prometheus metrics live at %s (scrape it, or curl it while training runs)\n",
                url,
            )

    log.info(
        "%d DeepSpeed ranks, config %s %s; log: %s",
        plan.ranks,
        plan.config,
        " ".join(train_overrides(plan)),
        run / "train.log",
    )
    train_subprocess(plan.cfg, run, ranks=plan.ranks, on_line=watch)
    return run


def stage_evaluate(plan: Plan, run: Path) -> dict:
    t = evaluate(
        run,
        plan.out / "eval",
        split="eval",
        shards=str(plan.eval_shards),
        max_items=plan.max_items,
        n_gen=plan.n_gen,
        guidance_steps=plan.guidance_steps,
        seconds=plan.eval_seconds,
        clips=plan.clips,
    )
    log.info("%s", (plan.out / "eval" / "table1.md").read_text())
    return t


def stage_generate(plan: Plan, run: Path) -> dict:
    """Unconditional outputs, and seed-based ones from the first test items (written out as seed WAVs)."""
    gen_dir = plan.out / "generate"
    cfg = plan.cfg
    uncond = generate(run, gen_dir / "unconditional", n=plan.n_uncond)
    seeds = []
    for batch in eval_loader(str(plan.shards), "test", plan.n_seeds, cfg.audio.clip_seconds):
        for key, audio in zip(batch["keys"], batch["audio"]):
            seeds.append(gen_dir / "seeds" / f"{key}.wav")
            write_wav(seeds[-1], audio.numpy(), cfg.audio.sample_rate)
        break
    seeded = generate(run, gen_dir / "seed", seed_audio=[str(p) for p in seeds])
    log.info(
        "wrote %d unconditional and %d seed-based outputs (WAV + PNG) under %s",
        len(uncond["outputs"]),
        len(seeded["outputs"]),
        gen_dir,
    )
    return {"unconditional": uncond, "seed": seeded, "seeds": [str(p) for p in seeds]}


# ----------------------------------------------------------------------------------------------------------
# The job


def demo(
    out: str | None = None,
    corpus: str | None = None,
    shards: str | None = None,
    quick: bool = False,
    retrain: bool = False,
    overrides: list[str] | None = None,
    config: str | None = None,
) -> Path:
    """Run every stage; returns the path of report.md. ``config``: the training config (default ``DEMO_CONFIG``;
    --quick: tiny)."""
    plan = make_plan(out, corpus, shards, quick, overrides, config)
    plan.cfg = load_config(
        plan.config, train_overrides(plan)
    )  # once; a bad override fails here, first
    plan.out.mkdir(parents=True, exist_ok=True)
    plan.earlier = _earlier_timings(plan.out / "timings.json")
    t0 = time.time()
    n = 6
    with stage(plan, 1, n, "corpus"):
        stage_corpus(plan)
    with stage(plan, 2, n, "shards"):
        stage_shards(plan)
    with stage(plan, 3, n, "train"):
        run = stage_train(plan, retrain)
    with stage(plan, 4, n, "evaluate"):
        table = stage_evaluate(plan, run)
    with stage(plan, 5, n, "generate"):
        gens = stage_generate(plan, run)
    with stage(plan, 6, n, "report"):
        plan.timings["total"] = round(time.time() - t0, 1)
        report = write_demo_report(plan, run, table, gens)
        page = write_page(plan.out)
    plan.timings["total"] = round(time.time() - t0, 1)
    built = {
        k: (plan.earlier.get(k, v) if "reused" in plan.notes.get(k, "") else v)
        for k, v in plan.timings.items()
    }
    (plan.out / "timings.json").write_text(
        json.dumps({"timings": plan.timings, "notes": plan.notes, "built": built}, indent=2)
    )
    log.info("\nweaktok demo finished in %.1f min. Report: %s", plan.timings["total"] / 60, report)
    log.info("Listening page (open it in a browser): %s", page.resolve())
    return report


def _earlier_timings(path: Path) -> dict:
    """What each stage took when it last ran for real (``built`` in an earlier timings.json)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data.get("built", data.get("timings", {}))
