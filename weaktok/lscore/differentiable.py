"""Differentiable L-Score on a power spectrogram (B, F, T): an exact timbral twin plus rhythm/structure surrogates.

Everything here is torch ops on ``power = |STFT|^2`` with its ``sample_rate``, ``n_fft`` and ``hop``, so the same
code runs on the model's front end (n_fft 1024, hop 256: ``SpecFrontEnd.power(spec)``) and on the exact
STFT (n_fft 2048, hop 512). Optional ``mask`` (B, T) bool marks valid frames of a padded batch.

* ``timbral_complexity``: the exact L_T formula (exact.py) in torch; equal to it on the same STFT.
* ``soft_onset_density`` / ``soft_ioi_std``: a soft copy of librosa's onset pipeline. Mel log-power spectral
  flux (librosa ``onset_strength``: 80 dB floor, lag, mean over bands, same frame shift) -> per-clip
  [0, 1] normalisation (librosa ``normalize=True``) -> soft peaks
  ``sigmoid((o - movavg - delta) / tau_peak) * sigmoid((o - max of previous frames) / tau_max)``
  with librosa's windows given in seconds -> soft "wait" (a peak suppresses the next frames) -> RMS gates
  (clip: peak RMS below -60 dBFS, as the exact term; frame: 40 dB below the loudest frame, against the
  spurious peaks of quiet tails). A finer STFT is first average-pooled in time to ~the exact hop (512).
  Density = sum of soft peaks / duration; IOI std via a soft time-since-last-onset recursion.
* ``soft_structural``: fixed chroma filterbank (``librosa.filters.chroma(tuning=0)``) applied to the power,
  then the exact self-similarity with soft frame weights instead of dropping silent frames.
* ``differentiable_lscore(..., mode)``: (B, 4). ``mode="paper"`` detaches columns 1-3 (the paper's rhythm and
  structure terms carried no gradient); ``mode="surrogate"`` lets every column carry gradient.

Hand-written here (no library does them differentiably): the spectral entropy, the soft peak picker, the
soft IOI recursion and the weighted self-similarity. The filterbanks are librosa's, held as constants.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import librosa
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FRAME_GATE_DB = 60.0  # same as exact.FRAME_GATE_DB (timbral frame selection)
_TINY = 1e-30


@dataclass(frozen=True)
class SurrogateParams:
    """Knobs of the rhythm/structure surrogates. Times are in seconds so they hold for any hop.

    Defaults mirror librosa's onset_detect where it has a counterpart (windows, delta, 80 dB floor). The rest
    was tuned on the model front end (n_fft 1024, hop 256) against the exact terms on 17 real sonic-pi loops
    + 60 synthetic clips (calibrate.synthetic_set seed 0) and checked on 100 held-out clips (seed 1).
    Untuned (no pooling, tau_peak 0.02, no frame gate) Spearman was density 0.86, IOI std 0.73; the defaults
    give 0.98 / 0.96 there and 0.98 / 0.98 held out. The largest gain was pooling to the hop-512 envelope
    rate with a 2k-frame box (sustained sounds stop producing extra peaks). With pooling, tau_peak 0.005 /
    0.01 / 0.02 gave IOI std 0.98 / 0.96 / 0.91: 0.01 keeps more frames with useful gradient than 0.005 at a
    small cost. tau_max barely matters; the 40 dB frame gate helps IOI std at tau_peak >= 0.01.
    """

    n_mels: int = 128  # mel bands of the onset envelope (librosa default)
    top_db: float = 80.0  # floor of the mel log-power below its per-clip max (librosa power_to_db)
    env_hop_s: float = (
        512 / 22050
    )  # onset envelope frame rate: finer STFTs are average-pooled in time to
    #                                 about this hop (2 frames at hop 256), as librosa's hop-512 envelope sees it
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
        -60.0
    )  # clip gate: peak frame RMS below this -> no onsets (exact.SILENCE_DBFS)
    tau_db: float = 1.0  # temperature (dB) of the RMS gates
    frame_gate_db: float | None = (
        40.0  # frames this far below the loudest get no soft peaks (None: off)
    )
    chroma_floor_dbfs: float = -100.0  # structure: frames quieter than this count as silent
    tau_merge: float = 0.02  # temperature of the split-peak merge before the IOI recursion
    ioi_eps: float = 1e-6  # soft peaks are clamped into [eps, 1 - eps] inside the IOI recursion


def _frames(seconds: float, sample_rate: int, hop: int) -> int:
    """librosa's convention for peak-picking windows: floor(seconds * sr / hop)."""
    return int(seconds * sample_rate // hop)


@functools.lru_cache(maxsize=16)
def _mel_fb(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    with (
        warnings.catch_warnings()
    ):  # small n_fft leaves some low mel bands empty: harmless (zero flux)
        warnings.simplefilter("ignore")
        return librosa.filters.mel(
            sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmax=0.5 * sample_rate
        )


@functools.lru_cache(maxsize=16)
def _chroma_fb(sample_rate: int, n_fft: int) -> np.ndarray:
    return librosa.filters.chroma(sr=sample_rate, n_fft=n_fft, tuning=0.0)


def _const(fb: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(fb, dtype=like.dtype, device=like.device)


def _valid(power: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, T) float mask of valid frames."""
    B, _, T = power.shape
    if mask is None:
        return power.new_ones(B, T)
    return mask.to(power.dtype)


# ----------------------------------------------------------------------------------------------------------
# timbral twin


def timbral_complexity(power: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """power (B, F, T) -> (B,) mean normalised spectral entropy over frames within 60 dB of the loudest.

    Same formula as exact.timbral_exact; the frame selection is a hard (gradient-free) mask, the entropy of
    the selected frames carries the gradient. Clips with no energy give 0.
    """
    B, Fq, T = power.shape
    valid = _valid(power, mask)  # (B, T)
    energy = power.sum(dim=1) * valid  # (B, T)
    peak = energy.amax(dim=1, keepdim=True)  # (B, 1)
    keep = ((energy > 0) & (energy >= peak * 10.0 ** (-FRAME_GATE_DB / 10.0))).to(
        power.dtype
    )  # (B, T)
    p = power / energy.clamp_min(_TINY).unsqueeze(1)  # (B, F, T)
    plogp = p * torch.log(p.clamp_min(_TINY))  # 0 log 0 -> 0 with a finite gradient
    H = -plogp.sum(dim=1) / math.log(Fq)  # (B, T)
    return ((H * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)).clamp(
        0.0, 1.0
    )  # rounding can give 1+1e-16


# ----------------------------------------------------------------------------------------------------------
# shared pieces: loudness, onset envelope, soft peaks


def frame_rms_dbfs(power: torch.Tensor, n_fft: int) -> torch.Tensor:
    """power (B, F, T) one-sided |STFT|^2 of a Hann-windowed frame -> (B, T) RMS in dBFS.

    Parseval with the window's energy (sum w^2 = 3 n_fft / 8) undone, so a stationary signal reads its
    waveform RMS as librosa.feature.rms(y=) does. Hand-written: librosa's rms(S=) keeps the window loss.
    """
    full = 2.0 * power.sum(dim=1) - power[:, 0] - power[:, -1]  # (B, T) two-sided sum
    ms = full / (n_fft * 3.0 * n_fft / 8.0)
    return 10.0 * torch.log10(ms.clamp_min(1e-20))


def onset_envelope(
    power: torch.Tensor,
    sample_rate: int,
    n_fft: int,
    hop: int,
    params: SurrogateParams = SurrogateParams(),
    mask: torch.Tensor | None = None,
    mel_fb: torch.Tensor | None = None,
) -> torch.Tensor:
    """power (B, F, T) -> (B, T) onset strength normalised to [0, 1] per clip (librosa's recipe, in torch)."""
    B, _, T = power.shape
    valid = _valid(power, mask)
    fb = mel_fb if mel_fb is not None else _const(_mel_fb(sample_rate, n_fft, params.n_mels), power)
    mel = torch.einsum("mf,bft->bmt", fb, power)  # (B, M, T)
    db = 10.0 * torch.log10(mel.clamp_min(1e-10))  # (B, M, T)
    floor = (db + (valid.unsqueeze(1) - 1.0) * 1e4).amax(dim=(1, 2), keepdim=True) - params.top_db
    db = torch.maximum(db, floor)
    lag = max(1, round(params.lag_s * sample_rate / hop))
    flux = F.relu(db[..., lag:] - db[..., :-lag]).mean(dim=1)  # (B, T - lag)
    shift = lag + n_fft // (2 * hop)  # librosa's centring compensation
    env = F.pad(flux, (shift, 0))[:, :T] * valid  # (B, T)
    env = (
        env - (env + (1.0 - valid) * 1e4).amin(dim=1, keepdim=True)
    ) * valid  # min over valid frames
    return env / (env.amax(dim=1, keepdim=True) + 1e-12)


def _window_mean(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """x (B, T) -> (B, T) mean of x[n - before : n + after], truncated at the edges (as librosa does)."""
    B, T = x.shape
    cs = F.pad(torch.cumsum(x, dim=1), (1, 0))  # (B, T + 1)
    n = torch.arange(T, device=x.device)
    lo, hi = (n - before).clamp_min(0), (n + after).clamp_max(T)
    return (cs[:, hi] - cs[:, lo]) / (hi - lo).to(x.dtype)


def envelope_pool(sample_rate: int, hop: int, params: SurrogateParams = SurrogateParams()) -> int:
    """How many STFT frames are averaged into one onset-envelope frame (1 for the exact hop-512 STFT)."""
    return max(1, round(params.env_hop_s * sample_rate / hop))


def _pool_time(
    power: torch.Tensor, valid: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """power (B, F, T), valid (B, T) -> (B, F, ceil(T/k)) mean over 2k frames with stride k, and the pooled
    valid mask. Invalid and out-of-range frames count as silence, like the zero padding of a centred STFT. The 2k-frame box (1792 samples at n_fft 1024, hop 256) stands in for the longer
    2048-sample window of the exact STFT; measured on the calibration set it beats k-frame pooling
    (Spearman density 0.98 vs 0.96, IOI std 0.96 vs 0.93) and removes most spurious peaks in drones.
    """
    if k == 1:
        return power, valid
    pad = (k, (-power.shape[-1]) % k)  # frame j covers input frames [j k - k, j k + k)
    p = F.avg_pool1d(F.pad(power * valid.unsqueeze(1), pad), 2 * k, k)  # (B, F, T')
    count = F.avg_pool1d(F.pad(valid, pad).unsqueeze(1), 2 * k, k).squeeze(
        1
    )  # (B, T') valid fraction
    return p, (count > 0).to(power.dtype)


def soft_peaks(
    power: torch.Tensor,
    sample_rate: int,
    n_fft: int,
    hop: int,
    params: SurrogateParams = SurrogateParams(),
    mask: torch.Tensor | None = None,
    mel_fb: torch.Tensor | None = None,
) -> torch.Tensor:
    """power (B, F, T) -> (B, T') soft onset indicators in [0, 1]; their sum is the soft onset count.

    T' = ceil(T / k), k = envelope_pool(...): the envelope runs at ~env_hop_s per frame whatever the STFT hop
    (measured: peak picking on a hop-256 envelope finds spurious extra peaks in sustained sounds).
    """
    k = envelope_pool(sample_rate, hop, params)
    power, valid = _pool_time(power, _valid(power, mask), k)  # (B, F, T'), (B, T')
    hop, T = hop * k, power.shape[-1]
    o = onset_envelope(power, sample_rate, n_fft, hop, params, valid > 0, mel_fb)  # (B, T')
    pre_avg = _frames(params.pre_avg_s, sample_rate, hop)
    post_avg = _frames(params.post_avg_s, sample_rate, hop) + 1
    above = torch.sigmoid((o - _window_mean(o, pre_avg, post_avg) - params.delta) / params.tau_peak)
    pre_max = max(1, _frames(params.pre_max_s, sample_rate, hop))
    prev_max = F.max_pool1d(
        F.pad(o[:, :-1], (pre_max, 0), value=-1.0).unsqueeze(1), pre_max, stride=1
    )
    is_max = torch.sigmoid(
        (o - prev_max.squeeze(1)) / params.tau_max
    )  # (B, T') o >= previous frames
    w = above * is_max
    wait = _frames(params.wait_s, sample_rate, hop)
    for j in range(
        1, wait + 1
    ):  # soft "skip the next `wait` frames": a short fixed loop, not over time
        w = w * (1.0 - F.pad(above * is_max, (j, 0))[:, :T])
    db = frame_rms_dbfs(power, n_fft) + (valid - 1.0) * 1e4  # (B, T') invalid frames -> very quiet
    top = db.amax(dim=1, keepdim=True)  # (B, 1)
    gate = torch.sigmoid(
        (top - params.silence_dbfs) / params.tau_db
    )  # clip loudness gate, as exact
    if params.frame_gate_db is not None:
        gate = gate * torch.sigmoid((db - top + params.frame_gate_db) / params.tau_db)
    return w * gate * valid


def _duration_s(valid: torch.Tensor, sample_rate: int, hop: int) -> torch.Tensor:
    """(B, T) valid frames -> (B,) seconds covered (T frames of a centred STFT span (T - 1) hops)."""
    return (valid.sum(dim=1) - 1.0).clamp_min(1.0) * hop / sample_rate


# ----------------------------------------------------------------------------------------------------------
# rhythm surrogates


def soft_onset_density(
    power: torch.Tensor,
    sample_rate: int,
    n_fft: int,
    hop: int,
    params: SurrogateParams = SurrogateParams(),
    mask: torch.Tensor | None = None,
    peaks: torch.Tensor | None = None,
) -> torch.Tensor:
    """power (B, F, T) -> (B,) soft onsets per second. ``peaks`` (B, T) reuses soft_peaks' output."""
    if peaks is None:
        peaks = soft_peaks(power, sample_rate, n_fft, hop, params, mask)
    return peaks.sum(dim=1) / _duration_s(_valid(power, mask), sample_rate, hop)


def _linear_scan(w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Y_k = sum_{s<=k} w_s f_s prod_{r=s+1..k} (1 - w_r), all k at once; (B, T) float64, w in (0, 1), f > 0.

    This is the recursion Y_k = (1 - w_k) Y_{k-1} + w_k f_k solved in log space with logcumsumexp, so it is
    vectorised over time and stable for long clips.
    """
    g = torch.cumsum(torch.log1p(-w), dim=1)  # (B, T) log prod_{r<=k} (1 - w_r)
    return torch.exp(g + torch.logcumsumexp(torch.log(w) + torch.log(f) - g, dim=1))


def _merge_split_peaks(w: torch.Tensor, tau: float) -> torch.Tensor:
    """w (B, T) -> (B, T), same total mass: each frame sends its mass to the largest of {t-1, t, t+1}
    (softmax with temperature tau). An onset split 0.3 / 0.7 over two frames becomes ~0 / 1; isolated peaks
    stay where they are."""
    left, right = F.pad(w, (1, 0))[:, :-1], F.pad(w, (0, 1))[:, 1:]  # w_{t-1}, w_{t+1}
    a = torch.softmax(
        torch.stack([left, w, right], dim=-1) / tau, dim=-1
    )  # (B, T, 3) where t's mass goes
    to_prev, stay, to_next = (w.unsqueeze(-1) * a).unbind(-1)
    return stay + F.pad(to_next, (1, 0))[:, :-1] + F.pad(to_prev, (0, 1))[:, 1:]


def soft_ioi_std(
    power: torch.Tensor,
    sample_rate: int,
    n_fft: int,
    hop: int,
    params: SurrogateParams = SurrogateParams(),
    mask: torch.Tensor | None = None,
    peaks: torch.Tensor | None = None,
) -> torch.Tensor:
    """power (B, F, T) -> (B,) soft std of inter-onset intervals in seconds.

    Time-since-last-onset recursion over the soft peaks w_t: Z_t = soft P(an onset before t), M_t = soft
    E[time of the last onset before t]; the interval ending at t is I_t = t - M_t / Z_t, weighted by
    v_t = w_t Z_t. Result: sqrt of the v-weighted variance of I_t, faded to 0 below ~2 intervals (exact: 0
    with fewer than 3 onsets).

    The recursion treats frames as independent, so an onset whose mass is split over adjacent frames
    (0.3 / 0.7) would leave a 0.3 x 0.7 chance of "no onset" that reads as one long spurious interval;
    split peaks are therefore merged first (``_merge_split_peaks``).
    """
    if peaks is None:
        peaks = soft_peaks(power, sample_rate, n_fft, hop, params, mask)
    B, T = peaks.shape
    hop = hop * envelope_pool(sample_rate, hop, params)  # peaks run at the envelope rate
    peaks = _merge_split_peaks(peaks.double(), params.tau_merge).clamp_max(1.0)
    w = peaks.clamp(params.ioi_eps, 1.0 - params.ioi_eps)  # (B, T)
    t = torch.arange(1, T + 1, device=w.device, dtype=w.dtype).expand(B, T)  # frame index, from 1
    z = F.pad(_linear_scan(w, torch.ones_like(w)), (1, 0))[:, :T]  # (B, T) strictly before t
    m = F.pad(_linear_scan(w, t), (1, 0))[:, :T]
    ioi = (t - m / z.clamp_min(1e-12)) * (hop / sample_rate)  # (B, T) seconds
    v = peaks * z  # (B, T)
    vs = v.sum(dim=1).clamp_min(1e-12)
    mean = (v * ioi).sum(dim=1) / vs
    var = (v * (ioi - mean.unsqueeze(1)) ** 2).sum(dim=1) / vs
    n_int = v.sum(dim=1)  # soft number of intervals
    std = torch.sqrt(var + 1e-12) * torch.sigmoid((n_int - 1.5) / 0.25)
    return std.to(power.dtype)


# ----------------------------------------------------------------------------------------------------------
# structure surrogate


def soft_structural(
    power: torch.Tensor,
    sample_rate: int,
    n_fft: int,
    hop: int,
    params: SurrogateParams = SurrogateParams(),
    mask: torch.Tensor | None = None,
    chroma_fb: torch.Tensor | None = None,
) -> torch.Tensor:
    """power (B, F, T) -> (B,) 1 - weighted mean off-diagonal cosine similarity of chroma frames."""
    fb = chroma_fb if chroma_fb is not None else _const(_chroma_fb(sample_rate, n_fft), power)
    C = torch.einsum("cf,bft->bct", fb, power)  # (B, 12, T)
    C = C / torch.sqrt((C * C).sum(dim=1, keepdim=True) + _TINY)
    w = torch.sigmoid((frame_rms_dbfs(power, n_fft) - params.chroma_floor_dbfs) / params.tau_db)
    w = w * _valid(power, mask)  # (B, T) soft "not silent"
    S = torch.einsum("bct,bcu->btu", C, C)  # (B, T, T)
    diag = (C * C).sum(dim=1)  # (B, T)
    num = torch.einsum("bt,btu,bu->b", w, S, w) - (w * w * diag).sum(dim=1)
    den = w.sum(dim=1) ** 2 - (w * w).sum(dim=1)
    return torch.where(den > 1e-6, 1.0 - num / den.clamp_min(1e-6), torch.zeros_like(den))


# ----------------------------------------------------------------------------------------------------------
# all four


def differentiable_lscore(
    power: torch.Tensor,
    sample_rate: int,
    n_fft: int,
    hop: int,
    mode: str = "surrogate",
    params: SurrogateParams = SurrogateParams(),
    mask: torch.Tensor | None = None,
    mel_fb: torch.Tensor | None = None,
    chroma_fb: torch.Tensor | None = None,
) -> torch.Tensor:
    """power (B, F, T) -> (B, 4) [timbral, density, irregularity, structural] (LSCORE_NAMES order).

    mode "surrogate": every column is differentiable. mode "paper": only timbral carries gradient; the other
    three are the same surrogate values, detached (what the paper effectively trained with).
    """
    if mode not in ("surrogate", "paper"):
        raise ValueError(f"mode must be 'surrogate' or 'paper', got {mode!r}")
    peaks = soft_peaks(power, sample_rate, n_fft, hop, params, mask, mel_fb)
    rest = torch.stack(
        [
            soft_onset_density(power, sample_rate, n_fft, hop, params, mask, peaks=peaks),
            soft_ioi_std(power, sample_rate, n_fft, hop, params, mask, peaks=peaks),
            soft_structural(power, sample_rate, n_fft, hop, params, mask, chroma_fb),
        ],
        dim=1,
    )  # (B, 3)
    if mode == "paper":
        rest = rest.detach()
    return torch.cat([timbral_complexity(power, mask).unsqueeze(1), rest], dim=1)


class DifferentiableLScore(nn.Module):
    """Module form of differentiable_lscore for one STFT geometry; the mel and chroma filterbanks are
    (non-persistent) buffers, so ``.to(device)`` moves them and checkpoints do not carry them."""

    def __init__(
        self,
        sample_rate: int = 22050,
        n_fft: int = 1024,
        hop: int = 256,
        mode: str = "surrogate",
        params: SurrogateParams = SurrogateParams(),
    ):
        super().__init__()
        self.sample_rate, self.n_fft, self.hop, self.mode, self.params = (
            sample_rate,
            n_fft,
            hop,
            mode,
            params,
        )
        mel = _mel_fb(sample_rate, n_fft, params.n_mels)
        self.register_buffer("mel_fb", torch.as_tensor(mel, dtype=torch.float32), persistent=False)
        chroma = _chroma_fb(sample_rate, n_fft)
        self.register_buffer(
            "chroma_fb", torch.as_tensor(chroma, dtype=torch.float32), persistent=False
        )

    def forward(self, power: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """power (B, F, T) -> (B, 4)."""
        return differentiable_lscore(
            power,
            self.sample_rate,
            self.n_fft,
            self.hop,
            self.mode,
            self.params,
            mask,
            self.mel_fb.to(power.dtype),
            self.chroma_fb.to(power.dtype),
        )
