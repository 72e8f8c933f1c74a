"""The handlers of the ``weaktok`` subcommands: each turns its parsed arguments into one library call and the
user-facing output (or an error line on stderr and exit code 2 for a mistake the user can fix).

The library behind most commands imports torch, librosa, Ray or matplotlib, so each handler imports it when the
command runs: ``weaktok --help`` (and every ``--help``) stays fast and never loads Ray, DeepSpeed or matplotlib.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from weaktok.bench import run_sections
from weaktok.config import ConfigError, load_config, to_dict
from weaktok.data.manifest import ShardsError
from weaktok.launch.local import TrainingFailed
from weaktok.procenv import single_process_env

# errors a user can cause in generate/evaluate/ablate/demo (missing checkpoint, bad audio, missing shards)
USER_ERRORS = (FileNotFoundError, ValueError, ShardsError, TrainingFailed)


def cmd_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    return run_sections(
        args.sections,
        out_dir=args.out,
        quick=args.quick,
        shards=args.shards,
        compile_backend=args.compile_backend,
        no_compile=args.no_compile,
        overrides=args.overrides,
    )


def cmd_corpus(args: argparse.Namespace) -> int:
    from weaktok.data.corpus import build_corpus, print_summary  # noqa: PLC0415 (heavy: see the docstring)

    try:
        summary = build_corpus(
            args.out,
            n=args.n,
            seed=args.seed,
            samples_dir=args.samples_dir,
            progress=not args.quiet,
        )
    except (FileExistsError, ValueError) as e:
        print(f"weaktok corpus: {e}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    from weaktok.data.shards import build_shards, print_summary  # noqa: PLC0415 (heavy)

    tags = [t for t in (args.tags or "").split(",") if t.strip()] or None
    try:
        manifest = build_shards(
            args.source,
            args.out,
            tags=tags,
            sr=args.sr,
            shard_size=args.shard_size,
            min_shards=args.min_shards,
            segment_seconds=args.segment_seconds,
            num_actors=args.num_actors,
            command=" ".join(sys.argv),
            progress=not args.quiet,
            split=args.split,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"weaktok shards: {e}", file=sys.stderr)
        return 2
    print_summary(manifest, Path(args.out))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """One process on this machine: set the environment DeepSpeed reads (no MPI discovery), run the loop."""
    from weaktok.train import CheckpointError, train  # noqa: PLC0415 (heavy)

    cfg = load_config(args.config, args.overrides)  # validated before anything starts
    os.environ.update(single_process_env(os.environ))
    try:
        train(cfg, args.out)
    except (CheckpointError, ShardsError) as e:
        if isinstance(e, ConfigError):  # ConfigMismatchError is a ConfigError too: exit 2 in main()
            raise
        kind = "checkpoint" if isinstance(e, CheckpointError) else "shards"
        print(f"weaktok train: {kind} error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from weaktok.launch.sweep import run_sweep  # noqa: PLC0415 (heavy; Ray once it runs)

    summary = run_sweep(
        args.config,
        args.space,
        args.out,
        args.overrides,
        num_samples=args.num_samples,
        resume=args.resume,
        address=args.address,
        storage_path=args.storage_path,
    )
    print(json.dumps(summary, indent=2, default=str))
    best = summary["best_config"]
    print(f"best config: {best}  (train it: weaktok train --config {best} ...)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from weaktok.generate import generate  # noqa: PLC0415 (heavy)

    if bool(args.seed_audio) == args.unconditional:
        print(
            "weaktok generate: give --seed-audio FILE [FILE ...] or --unconditional (one of the two)",
            file=sys.stderr,
        )
        return 2
    try:
        s = generate(
            args.checkpoint,
            args.out,
            seed_audio=args.seed_audio,
            n=args.n,
            seconds=args.seconds,
            steps=args.steps,
            mask_fraction=args.mask_fraction,
            seed=args.seed,
            shards=args.shards,
            guidance_steps=args.guidance_steps,
            device=args.device,
        )
    except USER_ERRORS as e:
        print(f"weaktok generate: {e}", file=sys.stderr)
        return 2
    n, mode, device = len(s["outputs"]), s["mode"], s["device"]
    print(f"wrote {n} {mode} outputs (WAV + PNG) to {args.out} (device {device})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from weaktok.api import export  # noqa: PLC0415 (heavy)

    try:
        out = export(args.run, args.out, shards=args.shards, table1=args.table1)
    except (*USER_ERRORS, OSError) as e:  # OSError: a file could not be written (disk full)
        print(f"weaktok export: {e}", file=sys.stderr)
        return 2
    print(f"wrote the model folder {out} (load it: WeakTok.from_pretrained({str(out)!r}))")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from weaktok.evaluation.run import evaluate  # noqa: PLC0415 (heavy)

    try:
        evaluate(
            args.checkpoint,
            args.out,
            split=args.split,
            max_items=args.max_items,
            n_gen=args.n_gen,
            seconds=args.seconds,
            shards=args.shards,
            train_shards=args.train_shards,
            workers=args.workers,
            seed=args.seed,
            guidance_steps=args.guidance_steps,
            device=args.device,
            n_boot=args.n_boot,
            onset=args.onset,
            clips=args.clips,
        )
    except USER_ERRORS as e:
        print(f"weaktok evaluate: {e}", file=sys.stderr)
        return 2
    print(Path(args.out, "table1.md").read_text())
    print(
        f"wrote table1.json, table1.md, plots and audio/ to {args.out} (listen: weaktok report {args.out})"
    )
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from weaktok.experiments.ablate import ablate  # noqa: PLC0415 (heavy)

    names = [n for n in (args.variants or "").split(",") if n.strip()] or None
    try:
        ablate(
            args.config,
            args.out,
            args.overrides,
            names=names,
            ranks=args.ranks,
            split=args.split,
            max_items=args.max_items,
            seconds=args.seconds,
        )
    except USER_ERRORS as e:
        print(f"weaktok ablate: {e}", file=sys.stderr)
        return 2
    print(Path(args.out, "ablation.md").read_text())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from weaktok.experiments.page import write_page  # noqa: PLC0415 (see the docstring)

    try:
        path = write_page(args.run)
    except (FileNotFoundError, ValueError) as e:
        print(f"weaktok report: {e}", file=sys.stderr)
        return 2
    print(f"listening page: {path.resolve()} (open it in a browser: file://{path.resolve()})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from weaktok.experiments.demo import demo  # noqa: PLC0415 (heavy; Ray)

    try:
        demo(
            out=args.out,
            corpus=args.corpus,
            shards=args.shards,
            quick=args.quick,
            retrain=args.retrain,
            overrides=args.overrides,
            config=args.config,
        )
    except USER_ERRORS as e:
        print(f"weaktok demo: {e}", file=sys.stderr)
        return 2
    return 0
