"""The shard manifest: what a built dataset contains, read and written in one place.

``shards/<name>/manifest.json`` is written last and atomically by the shard builder, so a manifest that exists
always describes complete shards. Its fields:

    version, created, command           provenance
    source, tags, sample_rate           what was ingested and how
    splits: {train|val|test: {count, seconds, shards: [{file, items, sha256}]}}
    lscore_target: {names: [4], mean: [4], std: [4]}   exact L-Score statistics of the train split
    skipped: [{path, reason}], repaired: [{path, what}]
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")


class ShardsError(RuntimeError):
    """A user-visible problem with a shard folder (missing manifest or shard, checksum mismatch)."""


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Atomic write: a reader sees the old manifest or the new one, never half of one."""
    path = Path(folder) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path)
    return path


_URL = re.compile(
    r"^[A-Za-z][A-Za-z0-9+.-]*:"
)  # pipe:, http:, s3:, file: ... (a scheme, as webdataset reads it)


def check_local_folder(folder: str | Path) -> None:
    """A shard folder is a local directory. ``pipe:cmd`` (webdataset would run it in a shell) and URLs are refused
    with a clear error; a local folder whose name starts like one can be given as ``./name``."""
    text = str(folder)
    if _URL.match(text) and not Path(text).is_absolute():
        raise ShardsError(
            f"shard folder {text!r} looks like a URL or a pipe: command; weaktok reads local shard "
            f"folders only (a local folder of that name: ./{text})"
        )


def load_manifest(folder: str | Path) -> dict:
    check_local_folder(folder)
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ShardsError(
            f"shard folder not found: {folder} (build it with `weaktok shards --out {folder} ...`)"
        )
    if not path.is_file():
        raise ShardsError(
            f"no manifest in {folder}: expected {path}; the build did not finish — re-run "
            "`weaktok shards` for this folder"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ShardsError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits"), dict):
        raise ShardsError(f"{path}: not a weaktok shard manifest (no 'splits' mapping)")
    sr = manifest.get("sample_rate")
    if isinstance(sr, bool) or not isinstance(sr, int) or sr <= 0:
        raise ShardsError(f"{path}: 'sample_rate' must be a positive integer, got {sr!r}")
    return manifest


def _entry_file(folder: Path, split: str, entry) -> Path:
    """A manifest shard entry's file, which must be a plain file name inside ``folder`` (no paths, no URLs)."""
    name = entry.get("file") if isinstance(entry, dict) else None
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or Path(name).name != name
        or "\\" in name
    ):
        raise ShardsError(
            f"{folder / MANIFEST}: split '{split}' lists {name!r} as a shard; entries must be plain "
            "file names inside the shard folder"
        )
    return folder / name


def shard_paths(
    folder: str | Path, split: str, manifest: dict | None = None, verify: bool = False
) -> list[str]:
    """Paths of a split's shards; every one must exist (and match its sha256 when ``verify``)."""
    folder = Path(folder)
    manifest = manifest or load_manifest(folder)
    if split not in manifest["splits"]:
        raise ShardsError(
            f"{folder / MANIFEST}: no split '{split}' (has: {', '.join(manifest['splits'])})"
        )
    info = manifest["splits"][split]
    entries = info.get("shards") if isinstance(info, dict) else None
    if not isinstance(entries, list):
        raise ShardsError(f"{folder / MANIFEST}: split '{split}' has no 'shards' list")
    if not entries:
        raise ShardsError(f"{folder / MANIFEST}: split '{split}' has no items")
    paths = []
    for entry in entries:
        path = _entry_file(folder, split, entry)
        if not path.is_file():
            raise ShardsError(f"shard missing: {path} (listed in {folder / MANIFEST})")
        if verify and sha256_file(path) != entry.get("sha256"):
            raise ShardsError(
                f"shard corrupted: {path} does not match the sha256 in {folder / MANIFEST}"
            )
        paths.append(str(path))
    return paths
