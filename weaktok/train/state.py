"""Where training stands: the typed ``TrainState`` (the counters a checkpoint stores and a resume restores) and its
(de)serialisation into DeepSpeed's client state and the dict hooks receive."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from weaktok.config import Config, to_dict
from weaktok.lscore.exact import LSCORE_NAMES
from weaktok.train.checkpoint import rng_state


@dataclass
class TrainState:
    """Where training stands. Checkpoints store it in DeepSpeed's client state (``to_client_state``), hooks get it
    as a dict (``as_dict``), both with the keys of the dict that held it before it was a class."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs finished
    batch_in_epoch: int = 0  # micro-batches of the current epoch consumed (non-finite ones too)
    nan_skipped: int = 0  # micro-batches skipped on every rank for a non-finite loss
    corrupt_skipped: int = 0  # corrupt items this rank's data loader dropped
    samples: int = 0  # examples stepped on, all ranks together
    # rank 0: L-Score pool failures; stored once non-zero, not restored on resume
    lscore_pool_errors: int = 0
    # the closed loop's correction of the L-Score loss's target (lscore.feedback), one per term
    target_correction: list = field(default_factory=lambda: [0.0] * len(LSCORE_NAMES))

    # what a resume restores
    RESUMED: ClassVar[tuple[str, ...]] = (
        "step",
        "epoch",
        "batch_in_epoch",
        "nan_skipped",
        "corrupt_skipped",
        "samples",
        "target_correction",
    )

    def as_dict(self) -> dict:
        """The counters as a dict (``lscore_pool_errors`` only once non-zero)."""
        d = {k: getattr(self, k) for k in self.RESUMED}
        if self.lscore_pool_errors:
            d["lscore_pool_errors"] = self.lscore_pool_errors
        return d

    def to_client_state(self, cfg: Config, world: int) -> dict:
        """What a checkpoint stores beside the tensors: the counters, this rank's RNG states, the number of ranks
        and the resolved config."""
        return {**self.as_dict(), "rng": rng_state(), "world": world, "config": to_dict(cfg)}

    @classmethod
    def from_client_state(cls, client: dict) -> TrainState:
        """The counters of a loaded checkpoint's client state (any missing one: 0)."""
        return cls(**{k: client[k] for k in cls.RESUMED if k in client})
