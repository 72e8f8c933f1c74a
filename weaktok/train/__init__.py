"""The training loop. Rank-agnostic: it reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* from the environment that
whichever launcher started it set (``weaktok train``, the ``deepspeed`` launcher, ``cluster/launch_multinode.sh``
or Ray Train) and never imports a launcher.

    python -m weaktok.train --config tiny --out runs/x data.shards=shards/demo     (what launchers run)

One step: waveforms -> log1p spectrogram (front end, fp32) -> corrupted copy -> model -> reconstruction;
loss = w_recon * L1(recon, clean) + w_L * L-Score distribution loss + w_ratio * chunking ratio loss, with the
curriculum's weights for the current (fractional) epoch. A non-finite loss is skipped on every rank and counted.

Every ``lscore.pool_every`` steps rank 0 inverts a few reconstructions to audio (Griffin-Lim) and submits them to
the Ray L-Score pool; results are logged when they arrive, the step never waits. Each epoch ends with validation
(reconstruction loss, chunk statistics, exact L-Score of a few unconditional and seed-based generations vs the
target) and a checkpoint.

Outputs in ``--out``: config.yaml (resolved), metrics.jsonl (one JSON object per logged step / validation),
checkpoints/<tag>/ (DeepSpeed, with client state, and the config.yaml it was written under; a tag counts only once
it holds COMPLETE), final/model.pt (consolidated fp32 weights + config) and, beside it, final/ as a model folder
(model.safetensors, config, the prior it trained with, a model card: weaktok/model/artifact.py).

Faults (tests/integration/test_faults_train.py): a failed checkpoint write (full disk) raises CheckpointError
naming the folder, the previous checkpoint untouched; ``resume: auto`` skips folders without COMPLETE and falls back
past a COMPLETE one that fails to load because a file in it is damaged (warning, set aside as <tag>.corrupt);
``train.dist_timeout_s`` bounds every collective, so a rank whose peer died exits instead of waiting forever.

Config changes between runs in one folder (tests/integration/test_resume_config.py): before anything is loaded, the
newest checkpoint's config.yaml is compared with the current config. A change its tensors cannot load into (parameter
shapes: ``SHAPE_KEYS``; ZeRO stage 0 / 1-2 / 3; bf16 vs fp32 in effect; for ZeRO the number of ranks) stops the run
with ConfigMismatchError naming each key old -> new; other changes are logged one line per key and apply (the
optimizer's lr, weight decay and betas too). A checkpoint that fails to load with every file intact is never set
aside: CheckpointError. Older checkpoints without config.yaml load as before, with a warning. ``train.init_from``
starts a new run (step 0, fresh optimizer and schedule) from a checkpoint's or final/model.pt's weights; it applies
only when the run has no checkpoint of its own to resume (own checkpoint > init_from).

The package, by stage (every name below is importable from ``weaktok.train``):

    trainer.py      train(), Trainer (setup, train_epoch, train_step, validate, checkpoint, export, fit, close)
    state.py        TrainState: the counters checkpoints store and resume restores
    build.py        setup's pieces: check_data, seed_everything, start_exporter, build_front, build_lscore,
                    load_prior, corpus_prior, build_run_model, epoch_size
    records.py      MetricsLog (metrics.jsonl), LogWindow, train_record, step_line + ConsoleLine (the per-step
                    console line), epoch_line
    tracking.py     Tracker (a TrainHooks: TensorBoard; W&B and MLflow in tracking_services.py), check_tracking,
                    start_reporting
    hooks.py        TrainHooks (no-op base for hooks), HookList, call
    prometheus/     MetricsExporter (a TrainHooks): metric definitions, serving, the exporter
    flops.py        StepFlops (MFU: FlopCounterMode's FLOPs per step, the device's peak), model_flops
    distributed.py  Dist, setup_distributed, all_reduce_sum, broadcast_object, gather_objects
    engine.py       use_bf16, check_precision, deepspeed_config, lr_lambda, build_engine
    step.py         corrupt, compute_loss, Losses, PartsWindow, all_finite, model_dtype
    validation.py   validate, ValClip (a generated clip for the trackers)
    lscore_glue.py  the Ray L-Score pool during training: start_pool, submit_outputs, poll_pool
    checkpoint.py   save_checkpoint, complete_tags, COMPLETE, errors, config comparison (SHAPE_KEYS, config_changes,
                    load_blockers), rng state
    resume.py       resume_plan, load_resume (fall-back past damaged checkpoints), train.init_from
    export.py       master_weights, export_weights (final/model.pt), write_model_folder (final/)
    cli.py          parse_args, main (``python -m weaktok.train``; __main__.py runs it)
"""

from weaktok.train.build import (
    build_front,
    build_lscore,
    build_run_model,
    check_data,
    corpus_prior,
    epoch_size,
    load_prior,
    seed_everything,
    start_exporter,
)
from weaktok.train.checkpoint import (
    ABSENT,
    COMPLETE,
    CONFIG_FILE,
    CORRUPT_SUFFIX,
    NOT_COMPARED,
    SHAPE_KEYS,
    CheckpointError,
    ConfigMismatchError,
    complete_tags,
    config_changes,
    load_blockers,
    numpy_rng_globals,
    read_checkpoint_config,
    rng_state,
    save_checkpoint,
    set_rng_state,
    show_value,
    unreadable_files,
)
from weaktok.train.cli import main, parse_args
from weaktok.train.distributed import (
    Dist,
    all_reduce_sum,
    broadcast_object,
    gather_objects,
    setup_distributed,
)
from weaktok.train.engine import (
    build_engine,
    check_precision,
    deepspeed_config,
    lr_lambda,
    use_bf16,
)
from weaktok.train.export import export_weights, master_weights
from weaktok.train.flops import StepFlops, model_flops
from weaktok.train.hooks import HookList, TrainHooks, call
from weaktok.train.lscore_glue import poll_pool, start_pool, submit_outputs
from weaktok.train.prometheus import MetricsExporter, MetricsPortInUse
from weaktok.train.records import (
    ConsoleLine,
    LogWindow,
    MetricsLog,
    epoch_line,
    step_line,
    train_record,
)
from weaktok.train.resume import (
    Candidate,
    apply_optimizer_settings,
    init_from_weights,
    load_init_weights,
    load_resume,
    log_config_changes,
    resume_candidates,
    resume_plan,
)
from weaktok.train.state import TrainState
from weaktok.train.step import Losses, PartsWindow, all_finite, compute_loss, corrupt, model_dtype
from weaktok.train.tracking import Tracker, check_tracking, start_reporting
from weaktok.train.trainer import Trainer, train
from weaktok.train.validation import ValClip, validate

__all__ = [
    "ABSENT",
    "COMPLETE",
    "CONFIG_FILE",
    "CORRUPT_SUFFIX",
    "NOT_COMPARED",
    "SHAPE_KEYS",
    "Candidate",
    "CheckpointError",
    "ConfigMismatchError",
    "ConsoleLine",
    "Dist",
    "HookList",
    "LogWindow",
    "Losses",
    "MetricsExporter",
    "MetricsLog",
    "MetricsPortInUse",
    "PartsWindow",
    "StepFlops",
    "TrainHooks",
    "TrainState",
    "Tracker",
    "Trainer",
    "ValClip",
    "all_finite",
    "all_reduce_sum",
    "apply_optimizer_settings",
    "broadcast_object",
    "build_engine",
    "build_front",
    "build_lscore",
    "build_run_model",
    "call",
    "check_data",
    "check_precision",
    "check_tracking",
    "complete_tags",
    "compute_loss",
    "config_changes",
    "corpus_prior",
    "corrupt",
    "deepspeed_config",
    "epoch_line",
    "epoch_size",
    "export_weights",
    "gather_objects",
    "init_from_weights",
    "load_blockers",
    "load_init_weights",
    "load_prior",
    "load_resume",
    "log_config_changes",
    "lr_lambda",
    "main",
    "master_weights",
    "model_dtype",
    "model_flops",
    "numpy_rng_globals",
    "parse_args",
    "poll_pool",
    "read_checkpoint_config",
    "resume_candidates",
    "resume_plan",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "setup_distributed",
    "show_value",
    "start_exporter",
    "start_pool",
    "start_reporting",
    "step_line",
    "submit_outputs",
    "train",
    "train_record",
    "unreadable_files",
    "use_bf16",
    "validate",
]
