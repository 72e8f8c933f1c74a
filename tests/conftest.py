"""Test-process settings.

* Tensors in the tests are tiny: one intra-op thread avoids thread thrashing on the 2-core CI machine (measured:
  the ratio-loss test took 12-40 s with 2 threads under load, 0.7 s with 1).
* Hypothesis has two profiles. ``ci`` (the default, what ``make test`` runs) is derandomized: every run draws
  the same examples, so a green CI stays green, and the failures found so far are pinned as ``@example`` cases
  in the property tests. ``explore`` (``make test-explore``, or HYPOTHESIS_PROFILE=explore) draws fresh random
  examples, more of them, and keeps a local example database (.hypothesis/) so a failure found once is
  replayed first next time: developers hunt for new gaps there and pin each one they find as an ``@example``.
"""

import os

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=400, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# librosa's own peak picking as a test reference, immune to a poisoned numba cache on the developer's machine
# (numba issue #10128; weaktok itself uses weaktok/lscore/peaks.py and never calls this kernel).
LIBROSA_SIGNATURES = [  # copied from librosa/util/utils.py; the fixture checks they are the cached kernel's
    "void(float32[:], uint32, uint32, uint32, uint32, float32, uint32, bool_[:])",
    "void(float64[:], uint32, uint32, uint32, uint32, float32, uint32, bool_[:])",
    "void(int32[:], uint32, uint32, uint32, uint32, float32, uint32, bool_[:])",
    "void(int64[:], uint32, uint32, uint32, uint32, float32, uint32, bool_[:])",
]


@pytest.fixture(scope="session")
def librosa_reference():
    """librosa.util.peak_pick / librosa.onset.onset_detect running librosa's kernel compiled here, uncached."""
    import librosa.util.utils  # here, not at the top: only the tests that compare with librosa pay for it
    import numba

    cached = vars(librosa.util.utils)["__peak_pick"]
    fresh = numba.guvectorize(LIBROSA_SIGNATURES, cached.signature, nopython=True, cache=False)(
        cached.__wrapped__
    )
    assert fresh.ufunc.types == cached.ufunc.types
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(librosa.util.utils, "__peak_pick", fresh)
        yield librosa
