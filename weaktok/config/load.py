"""Resolving a config: YAML files (with a ``base:`` chain), dotted ``key=value`` overrides, building the typed
:class:`~weaktok.config.schema.Config` from plain data and validating it before any compute.

    cfg = load_config("tiny", ["model.dim=128", "model.chunking.tau=0.5"])   # once, at the edge
    save_config(cfg, run / "config.yaml")                                   # a child process: --config that file
    from_dict(to_dict(cfg)) == cfg                                          # a Ray worker: the same validation
    with_values(cfg, {"train.lr": 1e-3})                                    # a sweep trial: its params, applied once

``load_config`` accepts a path to a YAML file or the name of a shipped config (``weaktok/configs/<name>.yaml``).
A YAML file may name a parent with ``base: <name or path>``; its keys override the parent's. Every key is
checked against the dataclass schema: an unknown key, a value of the wrong type or one outside its allowed
range raises :class:`ConfigError` naming the dotted key and what is allowed. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from weaktok.config.errors import ConfigError, require
from weaktok.config.schema import Config

CONFIG_DIR = Path(__file__).parent.parent / "configs"  # weaktok/configs/<name>.yaml (package data)


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a shipped config by name or a YAML path, apply ``key=value`` overrides, validate, return it."""
    raw = _read_yaml_chain(source) if source is not None else {}
    return _applied(raw, map(parse_override, overrides or []))


def from_dict(raw: dict) -> Config:
    """The typed, validated Config of plain data (``to_dict``'s output, or a YAML mapping): build, check every
    section, check ``train.init_from`` — what ``load_config`` does after reading its files."""
    cfg = build(Config, raw, prefix="")
    validate(cfg)
    check_init_from(cfg.train.init_from)
    return cfg


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A new validated Config: ``cfg`` with ``key=value`` overrides (as typed on a command line) applied in order."""
    return _applied(to_dict(cfg), map(parse_override, overrides))


def with_values(cfg: Config, values: Mapping[str, Any]) -> Config:
    """A new validated Config: ``cfg`` with each dotted key set to its value (a sweep trial's params)."""
    return _applied(to_dict(cfg), values.items())


# Config keys naming local files or folders. A launcher whose workers run elsewhere (Ray Tune chdirs each trial
# into its own folder; Ray Train workers may run on other nodes) makes them absolute before handing the config on.
PATH_KEYS = ("data.shards", "train.init_from", "train.deepspeed_config")


def with_absolute_paths(cfg: Config, base: str | Path | None = None) -> Config:
    """``cfg`` with each relative path of ``PATH_KEYS`` (and ``train.resume`` when it is a path) made absolute
    against ``base`` (default: the current directory). Absolute paths and unset keys stay as they are."""
    raw, base = to_dict(cfg), Path(base or Path.cwd())
    keys = PATH_KEYS + (() if cfg.train.resume in ("auto", "never") else ("train.resume",))
    pairs = []
    for key in keys:
        section, name = key.split(".")
        value = raw[section][name]
        if value and not Path(value).is_absolute():
            pairs.append((key, str((base / value).resolve())))
    return _applied(raw, pairs)


def _applied(raw: dict, pairs: Iterable[tuple[str, Any]]) -> Config:
    """``raw`` with each (dotted key, value) set in order, as a validated Config."""
    for key, value in pairs:
        _set_dotted(raw, key, value)
    return from_dict(raw)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------------------------------------
# Sources: shipped names, YAML files and their base: chain


def resolve_config_path(source: str | Path) -> Path:
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        return path
    shipped = CONFIG_DIR / f"{source}.yaml"
    if not shipped.exists():
        names = ", ".join(shipped_configs())
        raise ConfigError(
            f"no config file '{source}' and no shipped config of that name (shipped: {names})"
        )
    return shipped


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _read_yaml_chain(source: str | Path, seen: tuple[Path, ...] = ()) -> dict:
    path = resolve_config_path(source).resolve()
    if path in seen:
        raise ConfigError(f"config 'base' chain loops at {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    base = data.pop("base", None)
    if base is None:
        return data
    parent_source = base if not str(base).endswith((".yaml", ".yml")) else path.parent / base
    parent = _read_yaml_chain(parent_source, seen + (path,))
    return _deep_merge(parent, data)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


# ----------------------------------------------------------------------------------------------------------
# Overrides: dotted keys


def parse_override(item: str) -> tuple[str, Any]:
    """``"model.dim=128"`` -> ("model.dim", 128); the value is parsed as YAML (numbers, lists, bools)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value (e.g. model.dim=128)")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': value is not valid YAML ({e})") from None
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; people mean the number
        try:
            value = (
                float(value)
                if value.strip().lower() not in ("nan", "inf", "-inf", "infinity")
                else value
            )
        except ValueError:
            pass
    return key, value


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{part}' is a value, not a section")
    node[parts[-1]] = value


# ----------------------------------------------------------------------------------------------------------
# Building and validating


def build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a dict, checking keys and types; ``prefix`` is the dotted path so far."""
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{where}': expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            allowed = ", ".join(fields)
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}; allowed here: {allowed}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key + ".")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"config key '{key}': {value!r} is not one of {', '.join(map(str, choices))}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:  # an int beyond float range
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}': must be a finite number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(
        f"config schema type {tp} of '{key}' is not supported"
    )  # a bug in the schema, not user input


def validate(cfg: Any) -> None:
    """Run every section's ``check`` (depth first) so range errors surface before any compute."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value)
    if hasattr(cfg, "check"):
        cfg.check()


# ----------------------------------------------------------------------------------------------------------
# train.init_from


INIT_FROM_FORMS = (
    "a checkpoint folder holding COMPLETE (runs/x/checkpoints/step00000100), a run's checkpoints/ "
    "folder (its newest complete checkpoint) or exported weights (runs/x/final/model.pt)"
)


def check_init_from(path: str | None) -> None:
    """``train.init_from`` must name one of ``INIT_FROM_FORMS``. Checked when a config is loaded to run, not in
    ``TrainConfig.check``: generation rebuilds the config stored with the weights, whose source may be gone."""
    if path is None:
        return
    p = Path(path)
    ok = (
        p.is_file()
        or (p / "COMPLETE").is_file()
        or (
            p.is_dir()
            and any((d / "COMPLETE").is_file() and ".corrupt" not in d.name for d in p.iterdir())
        )
    )
    require(
        ok,
        "train.init_from",
        f"{path} is not {INIT_FROM_FORMS}"
        if p.exists()
        else f"{path} does not exist; give {INIT_FROM_FORMS}",
    )
