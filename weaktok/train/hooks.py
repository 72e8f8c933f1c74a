"""Training hooks: where code outside the loop hears about it (the metrics exporter, the Ray Train and Tune
reporters, tests). A hook is any object with some of the ``TrainHooks`` methods; subclassing ``TrainHooks`` is
optional (it documents the signatures and makes every method a no-op until overridden).

Who calls what: ``on_batch`` and ``on_epoch_end`` on every rank; ``on_log``, ``on_validation``, ``on_val_clips``
and ``on_checkpoint`` on rank 0 only. A hook's exception is not caught: it stops training like any other error.
"""

from __future__ import annotations

from pathlib import Path


class TrainHooks:
    """No-op base for training hooks; override the methods you need."""

    def on_batch(self, batch: dict, state: dict) -> None:
        """Every rank, each micro-batch, before the step uses it (the hook may change ``batch``). ``state``: the
        TrainState's counters as a dict (step, epoch, batch_in_epoch, nan_skipped, corrupt_skipped, samples, and
        lscore_pool_errors once the pool has failed)."""

    def on_log(self, record: dict) -> None:
        """Rank 0: each record written to metrics.jsonl between validations (``kind``: train or lscore_exact)."""

    def on_validation(self, record: dict) -> None:
        """Rank 0, each epoch's end: the validation record (``kind: val``)."""

    def on_val_clips(self, step: int, clips: list) -> None:
        """Rank 0, after ``on_validation``: up to ``tracking.audio_clips`` of the validation's generations per mode
        (validation.ValClip: mode, waveform, spectrogram, chunk starts); for trackers, never in metrics.jsonl."""

    def on_checkpoint(self, path: Path, state: dict) -> None:
        """Rank 0, each complete checkpoint: its folder and the counters it holds (as for ``on_batch``)."""

    def on_epoch_end(self, val_record: dict, checkpoint_path: Path) -> None:
        """Every rank, after the epoch's checkpoint: rank 0's validation record and the checkpoint's folder."""


HOOK_METHODS = tuple(name for name in vars(TrainHooks) if name.startswith("on_"))


def call(hooks, name: str, *args) -> None:
    """``name(*args)`` on each hook that has that method, in order (hooks need not subclass TrainHooks)."""
    if name not in HOOK_METHODS:
        raise AttributeError(f"no training hook {name!r} (hooks: {', '.join(HOOK_METHODS)})")
    for hook in hooks:
        method = getattr(hook, name, None)
        if method is not None:
            method(*args)


class HookList(TrainHooks):
    """Several hooks as one: each method calls that method of every hook that has it, in order."""

    def __init__(self, hooks=()):
        self.hooks = list(hooks)  # a copy: the caller's list stays as it was

    def append(self, hook) -> None:
        self.hooks.append(hook)

    def __iter__(self):
        return iter(self.hooks)

    def __len__(self) -> int:
        return len(self.hooks)

    def on_batch(self, batch: dict, state: dict) -> None:
        call(self.hooks, "on_batch", batch, state)

    def on_log(self, record: dict) -> None:
        call(self.hooks, "on_log", record)

    def on_validation(self, record: dict) -> None:
        call(self.hooks, "on_validation", record)

    def on_val_clips(self, step: int, clips: list) -> None:
        call(self.hooks, "on_val_clips", step, clips)

    def on_checkpoint(self, path: Path, state: dict) -> None:
        call(self.hooks, "on_checkpoint", path, state)

    def on_epoch_end(self, val_record: dict, checkpoint_path: Path) -> None:
        call(self.hooks, "on_epoch_end", val_record, checkpoint_path)
