"""How the config reports a user's mistake: :class:`ConfigError`, whose message names the dotted key."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-caused config problem; the message names the dotted key."""


def require(ok: bool, key: str, what: str) -> None:
    """Each section's ``check``: raise ConfigError naming ``key`` and what it allows unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}': {what}")
