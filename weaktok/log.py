"""Logging: library code logs to ``logging.getLogger(__name__)`` and never prints; entry points call
``setup_logging`` once.

One handler on the ``weaktok`` logger writes each record as one line on stdout: ``<prefix>message``, with
``WARNING: `` / ``ERROR: `` before the message at those levels. The training process uses the prefix
``[weaktok] `` (launchers and the demo pick its progress lines out of a log by it); the other commands use none.

Rank 0 speaks: below WARNING, a record passes only on rank 0 (``RANK`` unset counts as rank 0), unless it is
logged with ``extra=ALL_RANKS`` (a line every rank must say, such as its own metrics URL). Warnings and errors
pass on every rank.
"""

from __future__ import annotations

import logging
import os
import sys

ALL_RANKS = {"all_ranks": True}  # extra= for an INFO record every rank should emit


class _Stdout(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stdout`` is when a record is emitted (pytest's capture, a redirect)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


class RankZeroFilter(logging.Filter):
    """Pass WARNING and above everywhere; below that, only on rank 0 or when marked ``all_ranks``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or getattr(record, "all_ranks", False):
            return True
        return os.environ.get("RANK", "0") == "0"


class LineFormatter(logging.Formatter):
    """``<prefix>[LEVEL: ]message``."""

    def __init__(self, prefix: str = ""):
        super().__init__("%(message)s")
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname}: " if record.levelno >= logging.WARNING else ""
        return self.prefix + level + super().format(record)


def setup_logging(prefix: str = "", level: int = logging.INFO) -> logging.Logger:
    """Install (or replace) weaktok's one handler; idempotent, so a second call only changes the prefix."""
    root = logging.getLogger("weaktok")
    for h in [h for h in root.handlers if getattr(h, "weaktok", False)]:
        root.removeHandler(h)
    handler = _Stdout()
    handler.weaktok = True
    handler.setFormatter(LineFormatter(prefix))
    handler.addFilter(RankZeroFilter())
    root.addHandler(handler)
    root.setLevel(level)
    return root
