"""The L-Score distribution loss (paper eq. 8): match the batch's mean and spread of each term to the corpus'.

    loss = lambda_mu * || (mu_batch - mu_target) / s ||_1 + lambda_sigma * || (sigma_batch - sigma_target) / s ||_1

with s = sigma_target + eps per term when ``standardise`` (terms live on different scales: onsets/s vs
[0, 1]), else s = 1. Targets come from the training split (shard manifest).

sigma_batch is the population std (ddof 0) computed as sqrt(var + eps_var): for B = 1 it is sqrt(eps_var)
(~1e-6, i.e. "0"), and the square root never sees an exact 0, so the gradient stays finite.
"""

from __future__ import annotations

import torch

VAR_EPS = 1e-12  # inside the sqrt of the batch variance
STD_EPS = 1e-6  # added to sigma_target when standardising (a term that never varies in the corpus)


def batch_stats(L_batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L_batch (B, K) -> (mu (K,), sigma (K,)); sigma is the population std, finite-gradient at 0."""
    mu = L_batch.mean(dim=0)
    var = L_batch.var(dim=0, unbiased=False)
    return mu, torch.sqrt(var + VAR_EPS)


def distribution_loss(
    L_batch: torch.Tensor,
    mu_target,
    sigma_target,
    lambda_mu: float = 1.0,
    lambda_sigma: float = 1.0,
    standardise: bool = True,
) -> torch.Tensor:
    """L_batch (B, K), targets (K,) (tensor, array or list) -> scalar loss (eq. 8, optionally standardised)."""
    mu_t = torch.as_tensor(mu_target, dtype=L_batch.dtype, device=L_batch.device)
    sigma_t = torch.as_tensor(sigma_target, dtype=L_batch.dtype, device=L_batch.device)
    mu, sigma = batch_stats(L_batch)  # (K,), (K,)
    scale = sigma_t.abs() + STD_EPS if standardise else torch.ones_like(sigma_t)
    l_mu = ((mu - mu_t) / scale).abs().sum()
    l_sigma = ((sigma - sigma_t) / scale).abs().sum()
    return lambda_mu * l_mu + lambda_sigma * l_sigma
