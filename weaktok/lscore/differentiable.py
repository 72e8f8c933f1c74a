"""Differentiable L-Score on a power spectrogram (B, F, T): an exact timbral twin plus rhythm/structure surrogates,
combined into the (B, 4) score the training loss and generation's guidance use.

Everything is torch ops on ``power = |STFT|^2`` with its ``sample_rate``, ``n_fft`` and ``hop``, so the same code
runs on the model's front end (n_fft 1024, hop 256: ``SpecFrontEnd.power(spec)``) and on the exact STFT (n_fft 2048,
hop 512). Optional ``mask`` (B, T) bool marks valid frames of a padded batch.

    spectral.py     SurrogateParams, filterbanks, frame loudness; timbral_complexity (the exact L_T formula in
                    torch) and soft_structural (chroma self-similarity with soft frame weights)
    soft_onsets.py  the soft onset pipeline: onset_envelope, soft_peaks, soft_onset_density, soft_ioi_std
    (this file)     differentiable_lscore(..., mode) and its module form DifferentiableLScore

``mode="paper"`` detaches columns 1-3 (the paper's rhythm and structure terms carried no gradient);
``mode="surrogate"`` lets every column carry gradient. The filterbanks are librosa's, held as constants.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from weaktok.lscore.soft_onsets import soft_ioi_std, soft_onset_density, soft_peaks
from weaktok.lscore.spectral import (
    DEFAULT_PARAMS,
    SurrogateParams,
    chroma_filterbank,
    mel_filterbank,
    soft_structural,
    timbral_complexity,
)


def differentiable_lscore(
    power: torch.Tensor,
    sample_rate: int,
    n_fft: int,
    hop: int,
    mode: str = "surrogate",
    params: SurrogateParams = DEFAULT_PARAMS,
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
        params: SurrogateParams = DEFAULT_PARAMS,
    ):
        super().__init__()
        self.sample_rate, self.n_fft, self.hop = sample_rate, n_fft, hop
        self.mode, self.params = mode, params
        mel = torch.as_tensor(
            mel_filterbank(sample_rate, n_fft, params.n_mels), dtype=torch.float32
        )
        self.register_buffer("mel_fb", mel, persistent=False)
        chroma = torch.as_tensor(chroma_filterbank(sample_rate, n_fft), dtype=torch.float32)
        self.register_buffer("chroma_fb", chroma, persistent=False)

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
