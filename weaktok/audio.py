"""Audio I/O and the spectrogram front end.

Representation
--------------
The model sees ``log1p(|STFT|)``: a *linear-frequency* magnitude STFT (Hann window,
``center=True``) compressed with ``log1p``. At the defaults (``n_fft=1024``,
``hop_length=256``, 22050 Hz) that is 513 frequency bins at ~86 frames/s
(11.6 ms per frame).

Why linear log1p-magnitude rather than a mel or log-power spectrogram:

* The inverse is plain Griffin-Lim on ``expm1(spec)``: no mel pseudo-inverse, no
  vocoder to train. Griffin-Lim loses the phase, so a round trip is never exact
  (spectral convergence > 0), but it is good enough to listen to.
* The L-Score terms need a linear power spectrum. ``power(spec) = expm1(spec)**2``
  is a differentiable function of the model output, so those terms can be
  computed (and back-propagated) directly from predictions.
* ``log1p`` is 0 at silence and finite everywhere (unlike ``log``), so no epsilon
  floor is needed and the target stays well-conditioned for an MSE/L1 loss.

Audio I/O is soundfile (libsndfile): torchaudio >= 2.9 ``load`` needs
torchcodec/FFmpeg. Bad inputs raise ``AudioError``, a
``ValueError`` carrying the path and a short machine-friendly reason.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn as nn
import torchaudio
import torchaudio.functional as AF


class AudioError(ValueError):
    """A file that cannot be used as training audio.

    ``reason`` is one of "unreadable", "empty", "non-finite", "silent", "unsupported" (a sample rate outside
    ``SUPPORTED_SR`` or a size that does not fit in memory).
    str() reads ``"<path>: <reason>: <detail>"``.
    """

    def __init__(self, path, reason: str, detail: str = ""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}: {detail}")

    def __reduce__(self):
        # keep it picklable (Ray / DataLoader workers ship exceptions between processes)
        return (type(self), (self.path, self.reason, self.detail))


# -----------------------------------------------------------------------------
# I/O and waveform helpers

# Debian's sonic-pi-samples (CC0): the embedded corpus's sounds, the rulers' drone and drum loops
SONIC_PI_SAMPLES = Path("/usr/share/sonic-pi/samples")
# file sample rates accepted (Hz); outside this a header is garbage, not audio
SUPPORTED_SR = (1000, 768_000)
# most samples (channels x frames, before or after resampling) one file may decode to
MAX_SAMPLES = 1 << 30
# headers claiming more samples than this are read in blocks (the claim is not trusted)
_DIRECT_READ = 1 << 24


def read_audio(path, name: str | None = None) -> tuple[np.ndarray, int]:
    """Read any libsndfile-readable file. Returns (y (C, N) float32, sr).

    ``path``: a path, or a binary file object (e.g. ``io.BytesIO`` of a shard member) with ``name`` naming it.
    Every failure is an AudioError naming the file: libsndfile errors, headers that declare an absurd size or
    sample rate, and allocation failures alike (tests/properties/test_audio_fuzz.py)."""
    source = path if hasattr(path, "read") else str(path)
    path = name if name is not None else path
    try:
        with sf.SoundFile(source) as f:
            sr, frames, channels = int(f.samplerate), int(f.frames), int(f.channels)
            if not SUPPORTED_SR[0] <= sr <= SUPPORTED_SR[1]:
                raise AudioError(
                    path,
                    "unsupported",
                    f"sample rate {sr} Hz outside {SUPPORTED_SR[0]}..{SUPPORTED_SR[1]} Hz",
                )
            if channels < 1:
                raise AudioError(path, "unreadable", f"{channels} channels")
            if (
                frames * channels > _DIRECT_READ
            ):  # soundfile allocates the header's claim before reading
                data = _read_blocks(f, channels, max(1, MAX_SAMPLES // channels))
            else:
                data = f.read(dtype="float32", always_2d=True)  # (N, C)
    except AudioError:
        raise
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError, OverflowError, EOFError) as e:
        detail = str(e).replace(repr(source), repr(str(path))) if source is not path else str(e)
        raise AudioError(
            path, "unreadable", f"{type(e).__name__}: {detail}"
        ) from e  # LibsndfileError: RuntimeError
    except MemoryError as e:
        raise AudioError(
            path, "unsupported", f"does not fit in memory ({e or 'MemoryError'})"
        ) from e
    if data.shape[0] == 0:
        raise AudioError(path, "empty", "zero frames")
    return np.ascontiguousarray(data.T), int(sr)


def _read_blocks(f: sf.SoundFile, channels: int, limit: int, block: int = 1 << 18) -> np.ndarray:
    """Read at most ``limit`` frames in blocks (the header's frame count is not trusted)."""
    parts, n = [], 0
    while n < limit:
        part = f.read(min(block, limit - n), dtype="float32", always_2d=True)
        if len(part) == 0:
            break
        parts.append(part)
        n += len(part)
    if n >= limit and len(f.read(1, dtype="float32")):
        raise MemoryError(f"more than {MAX_SAMPLES} samples")
    return np.concatenate(parts) if parts else np.zeros((0, channels), np.float32)


def to_mono(y: np.ndarray) -> np.ndarray:
    """(C, N) -> (N,) by averaging channels (accumulated in float64: float32 sums of loud channels overflow)."""
    if y.shape[0] == 1:
        return y[0]
    return y.mean(axis=0, dtype=np.float64).astype(np.float32)


_SINC_LIMIT = 1 << 22  # torchaudio's resampler above this many kernel-table elements; soxr beyond


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """(N,) at orig_sr -> (M,) at target_sr, M = ceil(N * target_sr / orig_sr)."""
    orig_sr, target_sr = int(orig_sr), int(target_sr)
    if orig_sr == target_sr:
        return y
    g = math.gcd(orig_sr, target_sr)
    if (orig_sr // g) * (target_sr // g) > _SINC_LIMIT:
        # torchaudio's polyphase kernel needs (orig/g) x (target/g) elements: 44101 -> 22050 Hz is ~1e9 (minutes
        # and gigabytes). soxr (a librosa dependency) handles any ratio; its length is round(), ours ceil().
        out = soxr.resample(
            np.ascontiguousarray(y, dtype=np.float32), orig_sr, target_sr, quality="HQ"
        )
        n = math.ceil(len(y) * target_sr / orig_sr)
        return np.pad(out, (0, max(0, n - len(out))))[:n].astype(np.float32, copy=False)
    out = AF.resample(
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)), orig_sr, target_sr
    )
    return out.numpy()


def peak_normalize(y: np.ndarray, peak: float = 0.95) -> np.ndarray:
    """Scale so that max |y| == peak. All-zero input is returned unchanged."""
    m = float(np.max(np.abs(y))) if y.size else 0.0
    if m == 0.0:
        return y
    return (y * (peak / m)).astype(np.float32, copy=False)


def load_audio(
    path,
    sr: int = 22050,
    *,
    normalize: bool = True,
    silence_dbfs: float = -60.0,
    repair_nonfinite: bool = False,
) -> np.ndarray:
    """Read -> check finite -> mono -> check silence -> resample -> peak-normalise.

    Returns float32 (N,) at ``sr``, always finite. Raises AudioError for unreadable, empty,
    non-finite (unless ``repair_nonfinite``, which zeroes NaN/Inf) or silent input
    (raw peak below ``silence_dbfs`` dBFS, measured before any normalisation, and again
    after resampling), and "unsupported" for a sample rate outside ``SUPPORTED_SR`` or
    more than ``MAX_SAMPLES`` samples.
    """
    y, file_sr = read_audio(path)  # (C, N)
    bad = ~np.isfinite(y)
    if bad.any():
        if not repair_nonfinite:
            raise AudioError(
                path, "non-finite", f"{int(bad.sum())} of {y.size} samples are NaN/Inf"
            )
        y = np.where(bad, np.float32(0.0), y)
    y = to_mono(y)  # (N,)
    peak = float(np.max(np.abs(y)))
    if peak < 10.0 ** (silence_dbfs / 20.0):
        dbfs = 20.0 * math.log10(peak) if peak > 0 else -math.inf
        raise AudioError(path, "silent", f"peak {dbfs:.1f} dBFS < {silence_dbfs:.1f} dBFS")
    if len(y) * (sr / file_sr) > MAX_SAMPLES:
        raise AudioError(
            path,
            "unsupported",
            f"{len(y)} samples at {file_sr} Hz resample to more than {MAX_SAMPLES} at {sr} Hz",
        )
    if (
        normalize and peak > 1.0
    ):  # float files may hold huge values: scale first so resampling cannot overflow
        y = (y / np.float32(peak)).astype(np.float32)
    try:
        y = resample(y, file_sr, sr)
    except (RuntimeError, MemoryError) as e:  # torch's allocator failing is a RuntimeError
        raise AudioError(path, "unsupported", f"resampling {file_sr} -> {sr} Hz failed: {e}") from e
    if not np.isfinite(
        y
    ).all():  # un-normalised float input near the float32 limit can overflow in resampling
        raise AudioError(
            path,
            "non-finite",
            f"NaN/Inf after resampling {file_sr} -> {sr} Hz (sample values up to {peak:.3g})",
        )
    after = float(np.max(np.abs(y))) * (peak if normalize and peak > 1.0 else 1.0)
    if after < 10.0 ** (
        silence_dbfs / 20.0
    ):  # e.g. only content above the new Nyquist, or 1 sample at 44101 Hz
        raise AudioError(
            path,
            "silent",
            f"peak {20.0 * math.log10(after) if after > 0 else -math.inf:.1f} dBFS "
            f"after resampling {file_sr} -> {sr} Hz < {silence_dbfs:.1f} dBFS",
        )
    if normalize:
        y = peak_normalize(y)
    return y.astype(np.float32, copy=False)


def write_wav(path, y, sr: int) -> None:
    """Write 16-bit PCM wav; y is (N,) or (C, N), clipped to [-1, 1]. Creates parent dirs."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.clip(np.asarray(y, dtype=np.float32), -1.0, 1.0)
    if y.ndim == 2:
        y = y.T  # soundfile wants (N, C)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), y, int(sr), subtype="PCM_16")


# -----------------------------------------------------------------------------
# spectrogram front end

# log1p magnitude ceiling for model output: power e^60 ~ 1e26 stays finite in float32
MAX_LOG_MAGNITUDE = 30.0


class SpecFrontEnd(nn.Module):
    """Waveform <-> log1p linear magnitude STFT, shape (B, F=n_fft//2+1, T=N//hop+1)."""

    def __init__(
        self,
        sample_rate: int = 22050,
        n_fft: int = 1024,
        hop_length: int = 256,
        griffin_lim_iters: int = 32,
    ):
        super().__init__()
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        # both hold their Hann window as a buffer, so .to(device) moves them
        self.stft = torchaudio.transforms.Spectrogram(
            n_fft=n_fft, hop_length=hop_length, power=1.0, center=True
        )
        self.griffin_lim = torchaudio.transforms.GriffinLim(
            n_fft=n_fft, hop_length=hop_length, power=1.0, n_iter=griffin_lim_iters
        )

    @classmethod
    def for_config(cls, cfg) -> SpecFrontEnd:
        """A run's front end (``weaktok.config.Config``): ``cfg.audio``'s STFT geometry and
        ``cfg.lscore.griffin_lim_iters``. Training and a loaded model both build it here, so they cannot differ."""
        a = cfg.audio
        return cls(a.sample_rate, a.n_fft, a.hop_length, cfg.lscore.griffin_lim_iters)

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def device(self) -> torch.device:
        """Where the front end runs (its STFT window's device): inputs go there."""
        return self.stft.window.device

    @property
    def frame_seconds(self) -> float:
        return self.hop_length / self.sample_rate

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + 1

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """wave (B, N) or (N,) -> spec (B, F, T); a 1-D input gets B=1."""
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        return torch.log1p(self.stft(wave))  # (B, F, T)

    def magnitude(self, spec: torch.Tensor) -> torch.Tensor:
        """spec (B, F, T) -> linear |STFT| (B, F, T); model output clamps to [0, MAX_LOG_MAGNITUDE].

        Real audio (peak <= 1) stays below log1p(n_fft / 2) <= 9.1 even at n_fft 16384; a diverging model's
        output above ~44 would overflow the float32 power (e^88) into Inf and the L-Score terms into NaN."""
        return torch.expm1(spec.clamp(0.0, MAX_LOG_MAGNITUDE))

    def power(self, spec: torch.Tensor) -> torch.Tensor:
        """spec (B, F, T) -> linear power |STFT|^2 (B, F, T), differentiable."""
        return self.magnitude(spec) ** 2

    def inverse(self, spec: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """spec (B, F, T) or (F, T) -> wave (B, N) by Griffin-Lim; N = length or (T-1)*hop."""
        mag = self.magnitude(spec)
        if mag.dim() == 2:
            mag = mag.unsqueeze(0)
        gl = self.griffin_lim
        # functional call so `length` can vary per call; window is the submodule's buffer
        return AF.griffinlim(
            mag,
            gl.window,
            gl.n_fft,
            gl.hop_length,
            gl.win_length,
            gl.power,
            gl.n_iter,
            gl.momentum,
            length,
            gl.rand_init,
        )


def spectral_convergence(ref_mag, est_mag) -> float:
    """||ref - est||_F / ||ref||_F over magnitudes of equal shape (tensors or arrays)."""
    ref = torch.as_tensor(ref_mag).detach().double()
    est = torch.as_tensor(est_mag).detach().double()
    if ref.shape != est.shape:
        raise ValueError(f"shape mismatch: {tuple(ref.shape)} vs {tuple(est.shape)}")
    return float(
        torch.linalg.vector_norm(ref - est) / torch.linalg.vector_norm(ref).clamp_min(1e-12)
    )
