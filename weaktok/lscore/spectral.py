"""The frame-level base of the differentiable L-Score (differentiable.py combines the terms): the surrogates' knobs
(``SurrogateParams``), librosa's filterbanks held as constants, frame loudness, and the two terms that are
statistics of spectral frames:

* ``timbral_complexity``: the exact L_T formula (exact.py) in torch; equal to it on the same STFT.
* ``soft_structural``: a fixed chroma filterbank (``librosa.filters.chroma(tuning=0)``) applied to the power, then
  the exact self-similarity with soft frame weights instead of dropping silent frames.

Inputs are ``power = |STFT|^2`` (B, F, T) with its ``sample_rate`` and ``n_fft``; optional ``mask`` (B, T) bool
marks valid frames of a padded batch. The rhythm surrogates built on these pieces are in soft_onsets.py.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import librosa
import numpy as np
import torch

from weaktok.lscore.exact import FRAME_GATE_DB, HOP, SILENCE_DBFS

TINY = 1e-30  # keeps logs and divisions finite where a frame or a clip has no energy


@dataclass(frozen=True)
class SurrogateParams:
    """Knobs of the rhythm/structure surrogates. Times are in seconds so they hold for any hop.

    Defaults mirror librosa's onset_detect where it has a counterpart (windows, delta, 80 dB floor). The rest
    was tuned on the model front end (n_fft 1024, hop 256) against the exact terms on the real sonic-pi loops
    and synthetic clips of calibrate.calibration_set, and checked on held-out synthetic clips (measured in
    docs/results.md). The largest gain was pooling to the hop-512 envelope rate with a 2k-frame box (sustained
    sounds stop producing extra peaks). A smaller tau_peak tracks the exact IOI std more closely; 0.01 keeps more
    frames with useful gradient than 0.005 at a small cost. tau_max barely matters; the 40 dB frame gate helps
    IOI std at tau_peak >= 0.01.
    """

    n_mels: int = 128  # mel bands of the onset envelope (librosa default)
    top_db: float = 80.0  # floor of the mel log-power below its per-clip max (librosa power_to_db)
    # onset envelope frame rate: finer STFTs are average-pooled in time to about this hop (2 frames at hop 256),
    # as librosa's hop-512 envelope sees it
    env_hop_s: float = HOP / 22050
    lag_s: float = 0.0232  # flux lag; one hop of the exact STFT (512 / 22050 s)
    pre_max_s: float = 0.03  # soft local max over this much of the past (librosa pre_max)
    pre_avg_s: float = 0.10  # moving-average threshold window before ... (librosa pre_avg)
    post_avg_s: float = 0.10  # ... and after the frame (librosa post_avg)
    wait_s: float = 0.03  # a peak suppresses soft peaks this long after it (librosa wait)
    delta: float = (
        0.07  # threshold offset over the moving average, envelope in [0, 1] (librosa delta)
    )
    tau_peak: float = 0.01  # temperature of sigmoid((o - thr) / tau_peak)
    tau_max: float = 0.01  # temperature of the soft local-max factor
    silence_dbfs: float = (
        SILENCE_DBFS  # clip gate: peak frame RMS below this -> no onsets, as the exact term
    )
    tau_db: float = 1.0  # temperature (dB) of the RMS gates
    # frames this far below the loudest get no soft peaks; None (the default): no frame gate, as the exact term,
    # whose only gate is the clip's (a 40 dB gate read far fewer onsets than librosa on quiet generated textures)
    frame_gate_db: float | None = None
    chroma_floor_dbfs: float = -100.0  # structure: frames quieter than this count as silent
    tau_merge: float = 0.02  # temperature of the split-peak merge before the IOI recursion
    ioi_eps: float = 1e-6  # soft peaks are clamped into [eps, 1 - eps] inside the IOI recursion


DEFAULT_PARAMS = SurrogateParams()


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa's mel filterbank (n_mels, 1 + n_fft // 2), up to Nyquist."""
    # small n_fft leaves some low mel bands empty: harmless (zero flux)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return librosa.filters.mel(
            sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmax=0.5 * sample_rate
        )


@functools.lru_cache(maxsize=16)
def chroma_filterbank(sample_rate: int, n_fft: int) -> np.ndarray:
    """librosa's chroma filterbank (12, 1 + n_fft // 2) at tuning 0."""
    return librosa.filters.chroma(sr=sample_rate, n_fft=n_fft, tuning=0.0)


def filterbank_like(fb: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A filterbank as a tensor of ``like``'s dtype and device."""
    return torch.as_tensor(fb, dtype=like.dtype, device=like.device)


def valid_frames(power: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) float mask of valid frames."""
    B, _, T = power.shape
    if mask is None:
        return power.new_ones(B, T)
    return mask.to(power.dtype)


def frame_rms_dbfs(power: torch.Tensor, n_fft: int) -> torch.Tensor:
    """power (B, F, T) one-sided |STFT|^2 of a Hann-windowed frame -> (B, T) RMS in dBFS.

    Parseval with the window's energy (sum w^2 = 3 n_fft / 8) undone, so a stationary signal reads its
    waveform RMS as librosa.feature.rms(y=) does. Hand-written: librosa's rms(S=) keeps the window loss.
    """
    full = 2.0 * power.sum(dim=1) - power[:, 0] - power[:, -1]  # (B, T) two-sided sum
    ms = full / (n_fft * 3.0 * n_fft / 8.0)
    return 10.0 * torch.log10(ms.clamp_min(1e-20))


# ----------------------------------------------------------------------------------------------------------
# timbral twin


def timbral_complexity(power: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """power (B, F, T) -> (B,) mean normalised spectral entropy over frames within 60 dB of the loudest.

    Same formula as exact.timbral_exact; the frame selection is a hard (gradient-free) mask, the entropy of
    the selected frames carries the gradient. Clips with no energy give 0.
    """
    B, Fq, T = power.shape
    valid = valid_frames(power, mask)  # (B, T)
    energy = power.sum(dim=1) * valid  # (B, T)
    peak = energy.amax(dim=1, keepdim=True)  # (B, 1)
    gate = 10.0 ** (-FRAME_GATE_DB / 10.0)
    keep = ((energy > 0) & (energy >= peak * gate)).to(power.dtype)  # (B, T)
    p = power / energy.clamp_min(TINY).unsqueeze(1)  # (B, F, T)
    plogp = p * torch.log(p.clamp_min(TINY))  # 0 log 0 -> 0 with a finite gradient
    H = -plogp.sum(dim=1) / math.log(Fq)  # (B, T)
    mean = (H * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
    return mean.clamp(0.0, 1.0)  # rounding can give 1+1e-16


# ----------------------------------------------------------------------------------------------------------
# structure surrogate


def soft_structural(
    power: torch.Tensor,
    sample_rate: int,
    n_fft: int,
    hop: int,
    params: SurrogateParams = DEFAULT_PARAMS,
    mask: torch.Tensor | None = None,
    chroma_fb: torch.Tensor | None = None,
) -> torch.Tensor:
    """power (B, F, T) -> (B,) 1 - weighted mean off-diagonal cosine similarity of chroma frames."""
    fb = chroma_fb
    if fb is None:
        fb = filterbank_like(chroma_filterbank(sample_rate, n_fft), power)
    C = torch.einsum("cf,bft->bct", fb, power)  # (B, 12, T)
    C = C / torch.sqrt((C * C).sum(dim=1, keepdim=True) + TINY)
    w = torch.sigmoid((frame_rms_dbfs(power, n_fft) - params.chroma_floor_dbfs) / params.tau_db)
    w = w * valid_frames(power, mask)  # (B, T) soft "not silent"
    S = torch.einsum("bct,bcu->btu", C, C)  # (B, T, T)
    diag = (C * C).sum(dim=1)  # (B, T)
    num = torch.einsum("bt,btu,bu->b", w, S, w) - (w * w * diag).sum(dim=1)
    den = w.sum(dim=1) ** 2 - (w * w).sum(dim=1)
    return torch.where(den > 1e-6, 1.0 - num / den.clamp_min(1e-6), torch.zeros_like(den))
