import pytest

from weaktok.config import CurriculumConfig
from weaktok.train.curriculum import weights_at

PAPER = CurriculumConfig(
    warmup_epochs=10, anneal_epochs=40, final_w_L=1.0, final_w_recon=0.1, ratio_weight=0.03
)


def test_phase1_is_reconstruction_only():
    for p in (0, 0.5, 5, 9.999):
        w = weights_at(p, PAPER)
        assert (w.w_recon, w.w_L, w.phase) == (1.0, 0.0, 1)


def test_phase2_anneals_linearly():
    assert weights_at(10, PAPER).w_L == pytest.approx(0.0)
    w = weights_at(30, PAPER)  # halfway through the anneal
    assert w.phase == 2 and w.w_L == pytest.approx(0.5) and w.w_recon == pytest.approx(0.55)
    a, b, c = (weights_at(p, PAPER).w_L for p in (20, 25, 30))
    assert b - a == pytest.approx(c - b)  # linear
    assert weights_at(49.99, PAPER).w_L == pytest.approx(1.0, abs=1e-3)


def test_after_anneal_holds_final_weights():
    for p in (50, 51, 1e6):
        w = weights_at(p, PAPER)
        assert (w.w_recon, w.w_L, w.phase) == (pytest.approx(0.1), 1.0, 3)


def test_zero_length_phases():
    cfg = CurriculumConfig(warmup_epochs=0, anneal_epochs=0, final_w_L=2.0, final_w_recon=0.5)
    assert weights_at(0, cfg).w_L == 2.0 and weights_at(0, cfg).w_recon == 0.5
    cfg = CurriculumConfig(warmup_epochs=3, anneal_epochs=0, final_w_L=2.0)
    assert weights_at(2.9, cfg).w_L == 0 and weights_at(3, cfg).w_L == 2.0


def test_ratio_weight_constant():
    assert {weights_at(p, PAPER).w_ratio for p in (0, 15, 60)} == {0.03}
