"""L-Score: exact librosa terms (no grad), differentiable twin/surrogates, and the distribution loss.

Public names are re-exported lazily (PEP 562), so ``import weaktok.lscore.exact`` (e.g. in a Ray actor that
only computes exact scores) does not pay for importing torch.
"""

import importlib

_EXPORTS = {
    "exact": (
        "LSCORE_NAMES",
        "exact_lscore",
        "timbral_exact",
        "onset_times",
        "density_exact",
        "irregularity_exact",
        "structural_exact",
    ),
    "spectral": ("SurrogateParams", "timbral_complexity", "soft_structural"),
    "soft_onsets": ("onset_envelope", "soft_peaks", "soft_onset_density", "soft_ioi_std"),
    "differentiable": ("DifferentiableLScore", "differentiable_lscore"),
    "loss": ("batch_stats", "distribution_loss"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
