"""Audio fuzzing (issue #9): whatever bytes a file or a shard's ``.flac`` member holds, decoding ends in an
AudioError naming the file (or, in the loaders, a counted skip naming shard and item) or in finite, normalised
mono audio — never another exception type, never NaN/Inf in the output, never a hang.

Inputs: random bytes under every audio extension; real files of each format (WAV, FLAC, OGG, AIFF, MP3) written by
libsndfile then truncated, bit-flipped or given a garbage body; hand-made WAV headers with random fields (0 or
65535 channels, 0/1/2^31-1 Hz, 0 bits, frame counts up to 2^31); extreme sample values (NaN, Inf, denormals,
+-3e38, int32 full range); and the same through ``weaktok.data.loader``'s shard decode path. The fixed cases in
tests/unit/test_audio.py (zero-byte, text, truncated WAV/FLAC, NaN, silent) are not repeated here.
"""

import io
import json
import logging
import struct

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import deadline, examples
from weaktok.audio import MAX_SAMPLES, SUPPORTED_SR, AudioError, load_audio
from weaktok.data.loader import Tally, decode_samples

EXTS = [".wav", ".flac", ".mp3", ".ogg", ".aiff"]
FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".aiff": ("AIFF", "PCM_16"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
}
FUZZ = settings(
    max_examples=examples(100),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
COUNT = {"load": 0, "decode": 0}  # fuzz inputs run, reported by test_zz_report


def check_load(path, sr: int = 22050):
    """The property: AudioError naming ``path``, or float32 finite mono audio peak-normalised to 0.95."""
    COUNT["load"] += 1
    with deadline(20, "decode"):
        try:
            y = load_audio(path, sr)
        except AudioError as e:
            assert str(path) in str(e) and e.reason in (
                "unreadable",
                "empty",
                "non-finite",
                "silent",
                "unsupported",
            )
            return e
    assert y.dtype == np.float32 and y.ndim == 1 and len(y) >= 1
    assert np.isfinite(y).all() and abs(float(np.abs(y).max()) - 0.95) < 1e-4
    return y


def check_decode(data: bytes, sample_rate: int = 8000):
    """The shard path: the item is yielded finite and mono, or skipped, counted and logged with shard + key."""
    COUNT["decode"] += 1
    tally = Tally()
    sample = {
        "__key__": "item0007",
        "__url__": "/shards/x/train-000003.tar",
        "flac": data,
        "json": json.dumps({"lscore": [0.1, 1.0, 0.0, 0.2]}).encode(),
    }
    with deadline(20, "decode"):
        out = list(decode_samples([sample], tally, sample_rate=sample_rate))
    if out:
        (item,) = out
        assert tally.pending == 0 and item["audio"].ndim == 1 and len(item["audio"]) >= 1
        assert item["audio"].dtype == np.float32 and np.isfinite(item["audio"]).all()
    else:
        assert tally.pending == 1
    return out


def encode(y: np.ndarray, sr: int, ext: str) -> bytes:
    fmt, subtype = FORMATS[ext]
    buf = io.BytesIO()
    sf.write(buf, y, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def sine(n: int, sr: int, channels: int = 1) -> np.ndarray:
    t = np.arange(n) / sr
    y = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.stack([y] * channels, 1) if channels > 1 else y


VALID = {ext: encode(sine(4410, 44100), 44100, ext) for ext in EXTS}


def wav_header(channels: int, sr: int, bits: int, frames: int, fmt: int = 1) -> bytes:
    block = channels * bits // 8
    size = frames * block
    return (
        b"RIFF"
        + struct.pack("<I", (36 + size) & 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack(
            "<IHHIIHH",
            16,
            fmt,
            channels & 0xFFFF,
            sr & 0xFFFFFFFF,
            (sr * block) & 0xFFFFFFFF,
            block & 0xFFFF,
            bits & 0xFFFF,
        )
        + b"data"
        + struct.pack("<I", size & 0xFFFFFFFF)
    )


# ----------------------------------------------------------------------------------------------------------
# random and mangled bytes


@FUZZ
@given(ext=st.sampled_from(EXTS), data=st.binary(min_size=0, max_size=4096))
def test_random_bytes_with_audio_extensions(tmp_path, ext, data):
    p = tmp_path / f"random{ext}"
    p.write_bytes(data)
    check_load(p)
    check_decode(data)


@FUZZ
@given(
    ext=st.sampled_from(EXTS), keep=st.integers(0, 400), body=st.binary(min_size=0, max_size=4096)
)
def test_valid_header_garbage_body(tmp_path, ext, keep, body):
    """A real file's first ``keep`` bytes (its header and maybe some audio) followed by garbage."""
    data = VALID[ext][:keep] + body
    p = tmp_path / f"garbage{ext}"
    p.write_bytes(data)
    check_load(p)
    check_decode(data)


@FUZZ
@given(
    ext=st.sampled_from(EXTS),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8),
)
def test_truncated_and_bit_flipped_real_files(tmp_path, ext, cut, flips):
    data = bytearray(VALID[ext][: int(len(VALID[ext]) * cut)])
    for where, value in flips:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] = value
    p = tmp_path / f"flipped{ext}"
    p.write_bytes(bytes(data))
    check_load(p)
    check_decode(bytes(data))


# ----------------------------------------------------------------------------------------------------------
# headers that lie: channels, sample rates, bit depths, lengths


@FUZZ
@given(
    channels=st.sampled_from([0, 1, 2, 7, 255, 1024, 1025, 65535]),
    sr=st.sampled_from(
        [0, 1, 7, 999, 1000, 3999, 8000, 44101, 192000, 768000, 768001, 2**31 - 1, 2**32 - 1]
    ),
    bits=st.sampled_from([0, 1, 8, 12, 16, 24, 32, 64, 65535]),
    fmt=st.sampled_from([0, 1, 3, 2, 0xFFFE, 77]),
    frames=st.sampled_from([0, 1, 2, 1000, 2**20, 2**31 - 1, 2**32 - 1]),
    body=st.binary(min_size=0, max_size=2048),
)
def test_crafted_wav_headers(tmp_path, channels, sr, bits, fmt, frames, body):
    data = wav_header(channels, sr, bits, frames, fmt) + body
    p = tmp_path / "crafted.wav"
    p.write_bytes(data)
    out = check_load(p)
    if not isinstance(
        out, AudioError
    ):  # accepted: the header had a rate we support and real frames
        assert SUPPORTED_SR[0] <= sr <= SUPPORTED_SR[1]
    check_decode(data)


@pytest.mark.parametrize("sr", [1, 7, 999, 768_001, 2**31 - 1])
def test_unsupported_sample_rates_are_named_not_resampled(tmp_path, sr):
    """Before: 2^31-1 Hz crashed with torch's allocator RuntimeError (8 GB); 1 Hz upsampled 1000 samples to 22 M."""
    p = tmp_path / "rate.wav"
    p.write_bytes(wav_header(1, sr, 16, 1000) + np.full(1000, 8000, "<i2").tobytes())
    e = check_load(p)
    assert (
        isinstance(e, AudioError) and e.reason == "unsupported" and f"sample rate {sr} Hz" in str(e)
    )


@pytest.mark.parametrize("sr", [1000, 4000, 11025, 44101, 96000, 192000])
def test_odd_but_real_sample_rates_resample(tmp_path, sr):
    p = tmp_path / "odd.wav"
    sf.write(p, sine(sr // 2, sr), sr)  # half a second
    y = check_load(p)
    assert abs(len(y) - 11025) <= 1


def test_header_claiming_a_huge_length_reads_only_what_is_there(tmp_path):
    """8 channels x 2^26 frames claimed (2 GiB as float32), 1000 frames present: no giant allocation."""
    p = tmp_path / "liar.wav"
    p.write_bytes(wav_header(8, 22050, 16, 2**26) + np.full(8000, 9000, "<i2").tobytes())
    y = check_load(p)
    assert len(y) == 1000
    assert MAX_SAMPLES >= 2**26


@pytest.mark.parametrize("channels", [2, 6, 64, 1024])
def test_many_channels(tmp_path, channels):
    p = tmp_path / "multi.wav"
    sf.write(p, sine(2205, 22050, channels), 22050, subtype="FLOAT")
    y = check_load(p)
    assert len(y) == 2205
    # the shard path takes mono items only: a multi-channel member is skipped and counted
    buf = io.BytesIO()
    sf.write(buf, sine(800, 8000, channels), 8000, format="WAV", subtype="PCM_16")
    assert check_decode(buf.getvalue()) == []


@pytest.mark.parametrize("n", [0, 1, 2])
def test_zero_one_and_two_sample_files(tmp_path, n):
    for ext in (".wav", ".flac", ".aiff"):
        p = tmp_path / f"short{ext}"
        sf.write(p, np.full(n, 0.5, np.float32), 22050, format=FORMATS[ext][0], subtype="PCM_16")
        out = check_load(p)
        if n == 0:  # libsndfile cannot even reopen the 0-frame FLAC it wrote: "unreadable" there
            assert isinstance(out, AudioError) and out.reason in ("empty", "unreadable")
        else:
            assert len(out) == n
        assert len(check_decode(p.read_bytes(), 22050)) == (n > 0)


# ----------------------------------------------------------------------------------------------------------
# extreme sample values


SPECIAL = st.sampled_from(
    [np.nan, np.inf, -np.inf, 1e-45, -1e-45, 1e-38, 3.4e38, -3.4e38, 1e30, 0.0, 1.0, -1.0]
)


@FUZZ
@given(
    values=st.lists(
        st.one_of(SPECIAL, st.floats(width=32, allow_nan=True, allow_infinity=True)),
        min_size=1,
        max_size=300,
    ),
    channels=st.integers(1, 4),
    subtype=st.sampled_from(["FLOAT", "DOUBLE"]),
)
def test_extreme_float_values(tmp_path, values, channels, subtype):
    y = np.array(values, dtype=np.float64)
    y = np.stack([np.roll(y, c) for c in range(channels)], 1) if channels > 1 else y
    p = tmp_path / "extreme.wav"
    sf.write(p, y, 22050, subtype=subtype)
    out = check_load(p)
    if not np.isfinite(y).all():
        assert isinstance(out, AudioError) and out.reason == "non-finite"
    buf = io.BytesIO()
    sf.write(buf, y, 8000, format="WAV", subtype=subtype)
    decoded = check_decode(buf.getvalue())
    if not np.isfinite(y.astype(np.float32)).all() or channels > 1:
        assert decoded == []


def test_loud_float_channels_do_not_overflow_to_nan(tmp_path):
    """Before: two channels of 3e38 averaged in float32 overflowed to Inf and load_audio returned NaNs."""
    p = tmp_path / "loud.wav"
    sf.write(p, np.full((1000, 2), 3e38, np.float32), 22050, subtype="FLOAT")
    y = check_load(p)
    assert isinstance(y, np.ndarray) and np.allclose(y, 0.95)
    p2 = tmp_path / "loud_resampled.wav"  # same through the resampler (44.1 -> 22.05 kHz)
    sf.write(p2, 3e38 * sine(4410, 44100), 44100, subtype="FLOAT")
    y = check_load(p2)
    assert isinstance(y, np.ndarray) and len(y) == 2205


@FUZZ
@given(
    values=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=300),
    subtype=st.sampled_from(["PCM_32", "PCM_24", "PCM_16", "PCM_U8"]),
)
def test_full_int_ranges(tmp_path, values, subtype):
    y = np.array(values, dtype=np.int32)
    p = tmp_path / "ints.wav"
    sf.write(p, y, 22050, subtype=subtype)
    out = check_load(p)
    if isinstance(out, AudioError):
        assert out.reason == "silent"  # all values quantise to (near) zero at this depth


def test_denormals_are_silent_not_an_error_of_another_kind(tmp_path):
    p = tmp_path / "denormal.wav"
    sf.write(p, np.full(1000, 1e-40, np.float32), 22050, subtype="FLOAT")
    e = check_load(p)
    assert isinstance(e, AudioError) and e.reason == "silent"


# ----------------------------------------------------------------------------------------------------------
# the shard decode path end to end, and the logs name shard and item


def test_fuzzed_members_in_a_real_shard_are_skipped_and_named(tmp_path, caplog):
    from tests.unit.data.test_faults_data import _rewrite_item
    from tests.unit.data.test_loader import make_shards
    from weaktok.data.loader import eval_loader

    shards = make_shards(tmp_path / "s")
    buf = io.BytesIO()
    sf.write(buf, np.full(800, np.nan, np.float32), 8000, format="WAV", subtype="FLOAT")
    nan_wav = buf.getvalue()
    bad = {
        "val0002": VALID[".mp3"][:50] + b"\xff" * 300,
        "val0006": wav_header(1, 2**31 - 1, 16, 100) + b"\0" * 200,
        "val0011": b"",
        "val0015": nan_wav,
    }
    for key, data in bad.items():
        _rewrite_item(shards, "val", key, lambda it, d=data: {**it, "flac": d})
    keys, skipped = [], 0
    with caplog.at_level(logging.WARNING, logger="weaktok.data.loader"):
        for b in eval_loader(str(shards), "val", 4, 0.5):
            keys += b["keys"]
            skipped += b["skipped"]
    assert skipped == 4 and len(keys) == 20 and not set(bad) & set(keys)
    for key in bad:
        line = next(line for line in caplog.text.splitlines() if f"item {key}" in line)
        assert (
            "val-00000" in line
            and ("AudioError" in line or "NaN" in line)
            and "BytesIO" not in line
        )


@FUZZ
@given(top=st.floats(0, 1e6), seed=st.integers(0, 2**16))
def test_extreme_model_output_gives_finite_power_and_lscore(top, seed):
    """A diverging model's spectrogram (values far above any real audio's ~9) must not overflow the front end's
    power into Inf and the differentiable L-Score into NaN (before: NaN from ~44 up)."""
    import torch

    from weaktok.audio import SpecFrontEnd
    from weaktok.lscore.differentiable import DifferentiableLScore

    g = torch.Generator().manual_seed(seed)
    spec = torch.rand(1, 257, 24, generator=g) * top - 1.0
    front = SpecFrontEnd(22050, 512, 128)
    assert torch.isfinite(front.power(spec)).all()
    assert torch.isfinite(DifferentiableLScore(22050, 512, 128)(front.power(spec))).all()


def test_zz_report():
    """Not a check of the code: prints how many fuzz inputs the run above fed to each path."""
    print(f"fuzz inputs: load_audio {COUNT['load']}, shard decode {COUNT['decode']}")
