"""Finding the input of ``weaktok shards``: the tracks under a source folder, with their metadata.

    tracks, skipped = discover(Path("corpus"))     # FSLD layout, or any folder of audio files
    tracks = filter_tags(tracks, ["idm", "glitch"])

Sources: the Freesound Loop Dataset layout (``audio/wav/<soundid>_<userid>.wav``, also ``.wav.wav``, and
``metadata.json`` keyed by sound id) or any folder of audio files that soundfile reads (metadata optional: a
``metadata.json`` keyed by file stem or relative path, with ``tags``/``license``/``bpm``, is used when present).
A file that cannot be matched to its metadata is skipped with a reason (``skipped``: [{"path", "reason"}]).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff", ".au")
FSLD_NAME = re.compile(r"^(\d+)_(\d+)\.wav(\.wav)?$", re.IGNORECASE)


@dataclass
class Track:
    path: Path
    track_id: str  # FSLD sound id, or the relative path for a plain folder
    tags: list[str] = field(default_factory=list)
    license: str = ""
    bpm: float | None = None
    username: str = ""


def discover(source: Path) -> tuple[list[Track], list[dict]]:
    """Tracks under ``source`` (FSLD layout if it has metadata.json + audio/wav, else any audio folder)."""
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"source folder not found: {source}")
    metadata = _read_metadata(source / "metadata.json")
    if (source / "audio" / "wav").is_dir() and metadata is not None:
        return _discover_fsld(source, metadata)
    return _discover_folder(source, metadata or {}), []


def _read_metadata(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: metadata is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: metadata must be a JSON object keyed by sound id")
    return data


def _track_from_meta(path: Path, track_id: str, meta: dict) -> Track:
    bpm = (meta.get("annotations") or {}).get("bpm", meta.get("bpm"))
    try:
        bpm = float(bpm) if bpm is not None else None
    except (TypeError, ValueError):
        bpm = None
    tags = [str(t).strip().lower() for t in meta.get("tags") or [] if str(t).strip()]
    return Track(
        path, track_id, tags, str(meta.get("license", "")), bpm, str(meta.get("username", ""))
    )


def _discover_fsld(source: Path, metadata: dict) -> tuple[list[Track], list[dict]]:
    tracks, skipped = [], []
    for path in sorted((source / "audio" / "wav").iterdir()):
        m = FSLD_NAME.match(path.name)
        if not m:
            skipped.append({"path": str(path), "reason": "name: not <soundid>_<userid>.wav"})
            continue
        sound_id = m.group(1)
        if sound_id not in metadata:
            skipped.append(
                {"path": str(path), "reason": f"metadata: no entry for sound id {sound_id}"}
            )
            continue
        tracks.append(_track_from_meta(path, sound_id, metadata[sound_id]))
    return tracks, skipped


def _discover_folder(source: Path, metadata: dict) -> list[Track]:
    tracks = []
    for path in sorted(
        p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
    ):
        rel = str(path.relative_to(source))
        meta = metadata.get(rel) or metadata.get(path.stem) or {}
        tracks.append(_track_from_meta(path, rel, meta))
    return tracks


def filter_tags(tracks: list[Track], tags: list[str] | None) -> list[Track]:
    """Keep tracks with at least one of ``tags`` (case-insensitive); no filter keeps all."""
    if not tags:
        return tracks
    wanted = {t.strip().lower() for t in tags if t.strip()}
    return [t for t in tracks if wanted & set(t.tags)]
