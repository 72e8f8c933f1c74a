"""How the config reports a user's mistake: :class:`ConfigError`, whose message names the dotted key, and
:class:`MissingExtra`, a feature used without its optional dependency group installed."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-caused config problem; the message names the dotted key."""


class MissingExtra(ConfigError):
    """A feature's optional dependency group (pyproject.toml's optional-dependencies) is not installed."""


def missing_extra(extra: str, feature: str, error: ImportError) -> MissingExtra:
    """The error to raise (``from error``) when importing ``feature``'s optional dependency failed."""
    return MissingExtra(
        f"{feature} needs the optional dependency group [{extra}] ({error}): "
        f"pip install 'weaktok[{extra}]'"
    )


def require(ok: bool, key: str, what: str) -> None:
    """Each section's ``check``: raise ConfigError naming ``key`` and what it allows unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}': {what}")
