"""``weaktok`` command line: a thin argparse front end; every subcommand calls one library function.

    __init__.py   build_parser (every subcommand and its options) and main (logging, exit codes)
    commands.py   one handler per subcommand (cmd_train, cmd_generate, ...)

``weaktok`` (the console script) and ``python -m weaktok`` both run ``main``.
"""

from __future__ import annotations

import argparse
import sys

from weaktok import __version__
from weaktok.bench import SECTIONS
from weaktok.cli import commands
from weaktok.config import ConfigError
from weaktok.log import setup_logging


def _device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default=None,
        metavar="DEVICE",
        help="cpu, cuda or cuda:N: where the model, the spectrograms and Griffin-Lim run (default: cuda "
        "when torch sees a GPU, else cpu)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="weaktok",
        description="Weak tokenization of audio: train, sweep, "
        "evaluate and generate with a dynamically chunked U-Net.",
    )
    parser.add_argument("--version", action="version", version=f"weaktok {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "config",
        help="print a resolved config (shipped name or YAML path, plus key=value overrides)",
    )
    p.add_argument("config", help="shipped config name (tiny, demo, paper) or path to a YAML file")
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. model.dim=128"
    )
    p.set_defaults(func=commands.cmd_config)

    p = sub.add_parser(
        "train", help="train on one process (for many: the deepspeed launcher or ray_jobs/train.py)"
    )
    p.add_argument(
        "--config", required=True, help="shipped config name (tiny, demo, paper) or a YAML path"
    )
    p.add_argument(
        "--out", required=True, help="run folder: config.yaml, metrics.jsonl, checkpoints/, final/"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. data.shards=shards/x",
    )
    p.set_defaults(func=commands.cmd_train)

    p = sub.add_parser(
        "sweep", help="Ray Tune sweep (ASHA) over any config keys; results table + best config"
    )
    p.add_argument("--config", required=True, help="base config: shipped name or YAML path")
    p.add_argument(
        "--space", required=True, help="search space YAML (e.g. cluster/sweeps/default.yaml)"
    )
    p.add_argument(
        "--out", required=True, help="sweep folder: tune/, results.csv, best_config.yaml, plot"
    )
    p.add_argument(
        "--num-samples", type=int, default=None, help="trials (default: from the space file)"
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out")
    p.add_argument(
        "--storage-path",
        default=None,
        help="Ray's storage: a folder or a URI (s3://..., gs://...); default ray.storage_path, else --out",
    )
    p.add_argument(
        "--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local one)"
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides applied to every trial"
    )
    p.set_defaults(func=commands.cmd_sweep)

    p = sub.add_parser(
        "shards",
        help="build WebDataset shards (+ manifest with L-Score targets) from an audio folder",
    )
    p.add_argument(
        "--source",
        required=True,
        help="FSLD folder (audio/wav + metadata.json) or any audio folder",
    )
    p.add_argument("--out", required=True, help="output folder, e.g. shards/NAME")
    p.add_argument(
        "--tags", default="", help="comma-separated tag filter, case-insensitive (e.g. idm,glitch)"
    )
    p.add_argument(
        "--sr", type=int, default=22050, help="sample rate of the shards (default 22050)"
    )
    p.add_argument("--shard-size", type=int, default=64, help="max items per shard (default 64)")
    p.add_argument(
        "--min-shards",
        type=int,
        default=4,
        help="at least this many shards per split, >= ranks x loader workers (default 4)",
    )
    p.add_argument(
        "--segment-seconds", type=float, default=10.0, help="longer files become several items"
    )
    p.add_argument(
        "--num-actors", type=int, default=None, help="L-Score actors (default: one per CPU)"
    )
    p.add_argument(
        "--split",
        default=None,
        help="put every item in this split (e.g. eval: a held-out evaluation set) instead of 70/15/15",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=commands.cmd_shards)

    p = sub.add_parser(
        "corpus",
        help="write the embedded default corpus (IDM/glitch loops from sonic-pi-samples, "
        "FSLD layout)",
    )
    p.add_argument(
        "--out", required=True, help="output folder: audio/wav/*.wav, metadata.json, README.txt"
    )
    p.add_argument("--n", type=int, default=300, help="number of loops (default 300)")
    p.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)"
    )
    p.add_argument(
        "--samples-dir",
        default="/usr/share/sonic-pi/samples",  # weaktok.audio.SONIC_PI_SAMPLES, spelled out: --help imports no audio
        help="sonic-pi-samples folder; missing or empty: every sound is synthesised",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=commands.cmd_corpus)

    p = sub.add_parser("bench", help="run benchmarks; prints tables and writes JSON")
    p.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help=f"sections to run (default: all): {', '.join(SECTIONS)}",
    )
    p.add_argument(
        "--out", default="bench_results", help="folder for <section>.json (default: bench_results)"
    )
    p.add_argument(
        "--quick", action="store_true", help="fewer repeats and smaller sizes (smoke test)"
    )
    p.add_argument(
        "--shards",
        default=None,
        help="shard folder for the end-to-end runs (train, gpu; default: a "
        "small set built once under bench_results/)",
    )
    p.add_argument(
        "--compile-backend",
        default="inductor",
        choices=["inductor", "aot_eager", "eager", "cudagraphs"],
        help="torch.compile backend of gpu's compiled bare step (default inductor)",
    )
    p.add_argument(
        "--no-compile", action="store_true", help="gpu: skip the torch.compile'd bare step"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="gpu: config override for the end-to-end run, repeatable (e.g. --set data.batch_size=128)",
    )
    p.set_defaults(func=commands.cmd_bench)

    p = sub.add_parser(
        "generate",
        help="seed-based in-painting or unconditional generation: WAVs + spectrogram PNGs "
        "with chunk boundaries",
    )
    p.add_argument(
        "--checkpoint", required=True, help="run folder (uses final/model.pt) or a model.pt file"
    )
    p.add_argument(
        "--seed-audio", nargs="+", metavar="FILE", help="seed-based: one output per seed audio file"
    )
    p.add_argument(
        "--unconditional",
        action="store_true",
        help="unconditional: refine noise shaped like the corpus",
    )
    p.add_argument("--n", type=int, default=8, help="unconditional outputs (default 8)")
    p.add_argument(
        "--out", required=True, help="output folder: <name>.wav, <name>.png, generate.json"
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="output length (default: the model's clip length)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="refinement passes (default 6) or, for a flow model, ODE steps (default model.flow.steps)",
    )
    p.add_argument(
        "--mask-fraction", type=float, default=0.5, help="seed-based: in-painted share at the end"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--shards",
        default=None,
        help="shards for the corpus spectrum (default: the model's data.shards)",
    )
    p.add_argument(
        "--guidance-steps",
        type=int,
        default=0,
        help="L-Score guidance: Adam steps fitting the outputs' timbral/structural terms to real audio "
        "(default 0 = off; 60 is a good value; see weaktok/generate/guidance.py)",
    )
    _device_argument(p)
    p.set_defaults(func=commands.cmd_generate)

    p = sub.add_parser(
        "export", help="a trained run as a model folder that loads alone (docs/api.md)"
    )
    p.add_argument("run", help="run folder (its final/), a final/ folder or a model.pt file")
    p.add_argument(
        "--out", required=True, help="new model folder (an existing one must be an export)"
    )
    p.add_argument(
        "--shards", default=None, help="training shards (default: the run's data.shards)"
    )
    p.add_argument(
        "--table1", default=None, help="the run's table1.json (default: found beside it)"
    )
    p.set_defaults(func=commands.cmd_export)

    p = sub.add_parser(
        "evaluate",
        help="Table 1 on generated audio with baselines, 95 %% intervals and training "
        "seeds; Fréchet/KID, two-sample test, memorisation, bypass ablation, rulers, plots",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        nargs="+",
        help="run folder(s) (final/model.pt) or model.pt file(s); several = runs of different training "
        "seeds, aggregated (mean ± sd across seeds, pooled intervals)",
    )
    p.add_argument(
        "--split",
        default="test",
        help="split to evaluate (default test; eval for a --split eval build)",
    )
    p.add_argument("--out", required=True, help="output folder: table1.json, table1.md, PNGs")
    p.add_argument(
        "--max-items",
        type=int,
        default=0,
        help="items of the data floor (default 0 = the whole split)",
    )
    p.add_argument(
        "--n-gen",
        type=int,
        default=64,
        help="outputs per mode per checkpoint, on the split's first items (default 64)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="clip and output length (default 8 s or the training crop if longer; see weaktok/evaluation/run.py)",
    )
    p.add_argument(
        "--shards", default=None, help="shards holding --split (default: the model's data.shards)"
    )
    p.add_argument(
        "--train-shards",
        default=None,
        help="training shards behind the target and the memorisation bank (default: data.shards)",
    )
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates (default 2000)")
    p.add_argument("--clips", type=int, default=4, help="clips per set to hear (OUT/audio; 0 none)")
    p.add_argument(
        "--onset",
        choices=("paper", "clicks"),
        default="paper",
        help="onset preset of the exact L-Score (default paper = librosa defaults; clicks: counts fast "
        "click trains right and drones/noise near 0; docs/evaluation.md)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Ray actors for the exact L-Score (default 0 = serial)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--guidance-steps",
        type=int,
        default=0,
        help="also score outputs with L-Score guidance of this many steps (Uncond+G, Seed+G columns; "
        "default 0 = off)",
    )
    _device_argument(p)
    p.set_defaults(func=commands.cmd_evaluate)

    p = sub.add_parser(
        "ablate",
        help="train + evaluate variants: dynamic vs fixed chunking, surrogate vs paper L-Score",
    )
    p.add_argument("--config", required=True, help="base config: shipped name or YAML path")
    p.add_argument(
        "--out", required=True, help="folder: one run per variant, ablation.json, ablation.md"
    )
    p.add_argument(
        "--variants",
        default="",
        help="comma-separated subset of dynamic,fixed,paper (default: all)",
    )
    p.add_argument(
        "--ranks", type=int, default=1, help="DeepSpeed ranks per training run (default 1)"
    )
    p.add_argument("--split", default="test", help="evaluation split (default test)")
    p.add_argument(
        "--max-items", type=int, default=0, help="evaluation items per variant (default 0 = all)"
    )
    p.add_argument(
        "--seconds", type=float, default=None, help="evaluation clip length (default: as evaluate)"
    )
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="overrides applied to every variant"
    )
    p.set_defaults(func=commands.cmd_ablate)

    p = sub.add_parser("report", help="the listening page RUN/index.html: Table 1, audio players")
    p.add_argument("run", metavar="RUN", help="a demo folder or an evaluation folder (table1.json)")
    p.set_defaults(func=commands.cmd_report)

    p = sub.add_parser(
        "demo",
        help="the end-to-end job: corpus, shards, 2-rank training, evaluation, generation, "
        "report (make demo)",
    )
    p.add_argument(
        "--out", default=None, help="demo folder (default runs/demo; --quick: runs/demo-quick)"
    )
    p.add_argument(
        "--corpus", default=None, help="corpus folder (default corpus/demo), reused when present"
    )
    p.add_argument(
        "--shards", default=None, help="shard folder (default shards/demo), reused when present"
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke-test scale: tiny model, 48 loops, 1 epoch"
    )
    p.add_argument(
        "--retrain", action="store_true", help="train again even if a finished run exists"
    )
    p.add_argument(
        "--config",
        default=None,
        help="training config (default demo-flow, the flow model; --quick: tiny); demo: the in-painting model",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides")
    p.set_defaults(func=commands.cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging("[weaktok] " if args.command == "train" else "")
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"weaktok: config error: {e}", file=sys.stderr)
        return 2
