"""Distribution loss (weaktok/lscore/loss.py)."""

import torch

from weaktok.lscore import batch_stats, distribution_loss


def test_zero_when_batch_stats_equal_targets():
    L = torch.tensor([[0.5, 3.0, 0.1, 0.2], [0.7, 5.0, 0.3, 0.4], [0.6, 4.0, 0.2, 0.3]])
    mu, sigma = L.mean(0), L.std(0, unbiased=False)
    for std in (True, False):
        assert distribution_loss(L, mu, sigma, 1.0, 1.0, standardise=std).item() < 1e-5


def test_value_by_hand():
    L = torch.tensor([[0.0, 2.0], [2.0, 2.0]])  # mu = (1, 2), sigma = (1, 0)
    loss = distribution_loss(
        L, [0.0, 2.0], [0.5, 0.0], lambda_mu=2.0, lambda_sigma=3.0, standardise=False
    )
    assert abs(loss.item() - (2.0 * 1.0 + 3.0 * 0.5)) < 1e-4
    loss = distribution_loss(
        L, [0.0, 2.0], [0.5, 1.0], lambda_mu=1.0, lambda_sigma=1.0, standardise=True
    )
    assert abs(loss.item() - (1.0 / 0.5 + 0.5 / 0.5 + 1.0 / 1.0)) < 1e-4


def test_gradients_flow():
    L = torch.rand(8, 4, requires_grad=True)
    distribution_loss(L, torch.zeros(4), torch.ones(4), 1.0, 1.0).backward()
    assert torch.isfinite(L.grad).all() and L.grad.abs().sum() > 0


def test_batch_of_one_and_constant_batch_are_finite():
    for L in (torch.rand(1, 4, requires_grad=True), torch.ones(5, 4, requires_grad=True)):
        mu, sigma = batch_stats(L)
        assert torch.all(sigma < 1e-5)  # population std of one sample / equal samples is ~0
        loss = distribution_loss(L, torch.zeros(4), torch.ones(4), 1.0, 1.0)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(L.grad).all()


def test_zero_sigma_target_is_guarded():
    L = torch.rand(4, 4, requires_grad=True)
    loss = distribution_loss(L, torch.zeros(4), torch.zeros(4), 1.0, 1.0, standardise=True)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(L.grad).all()
