"""Training input corruption (weaktok.train.corrupt): zeros or generation's prior noise in the masked spans."""

import pytest
import torch

from weaktok.config import ConfigError, load_config
from weaktok.train import corrupt


def _prior(F: int) -> dict:
    return {
        "mean": torch.full((F,), 2.0),
        "components": torch.zeros(0, F),
        "comp_std": torch.zeros(0),
        "comp_rho": torch.zeros(0),
        "resid_std": torch.full((F,), 0.5),
    }


def _cfg(**corruption):
    return load_config("tiny", [f"train.corruption.{k}={v}" for k, v in corruption.items()])


def test_zero_fill_masks_a_span_inside_the_clip():
    spec = torch.rand(64, 5, 40) + 1.0
    x = corrupt(
        spec,
        _cfg(noise_std=0, mask_prob=1.0, mask_max_fraction=1.0, fill="zeros"),
        torch.Generator(),
    )
    zero = (x == 0).all(dim=1)  # (B, T) masked frames
    assert (
        zero.any(dim=1).float().mean() > 0.9
    )  # nearly every example has a span (length 0 is possible)
    for row in zero:  # one contiguous span
        idx = row.nonzero().flatten()
        assert len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx)
    assert torch.equal(x[~zero[:, None, :].expand_as(x)], spec[~zero[:, None, :].expand_as(x)])


def test_prior_fill_blends_spec_and_prior_noise_at_random_levels():
    torch.manual_seed(0)
    spec = torch.full((256, 5, 40), 6.0)
    cfg = _cfg(noise_std=0, mask_prob=1.0, mask_max_fraction=1.0, fill="prior")
    x = corrupt(spec, cfg, torch.Generator().manual_seed(1), _prior(5))
    changed = (x != spec).any(dim=1)  # (B, T)
    assert changed.any(dim=1).float().mean() > 0.9
    level = (
        1 - (x[changed[:, None, :].expand_as(x)].mean() - 2.0) / 4.0
    )  # E[(1-s)*6 + s*2] = 6 - 4 E[s]
    assert 0.35 < float(1 - level) < 0.65  # s ~ U(0, 1): mean 1/2
    assert (
        changed.float().mean(dim=1) >= 0.95
    ).sum() > 0  # spans up to the whole clip (unconditional's hole)
    assert x.min() >= 0 and torch.isfinite(x).all()


def test_prior_fill_without_statistics_and_bad_fill_are_clear_errors():
    spec = torch.rand(2, 5, 40)
    with pytest.raises(ValueError, match="fill=prior"):
        corrupt(spec, _cfg(mask_prob=1.0, fill="prior"), torch.Generator())
    with pytest.raises(ConfigError, match="train.corruption.fill"):
        _cfg(fill="noise")
