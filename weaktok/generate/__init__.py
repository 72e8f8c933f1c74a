"""Generation from a trained model (docs/generative-model.md).

    sampler.py    the two modes (unconditional, seed-based) for in-painting and flow models
    guidance.py   optional L-Score guidance; the statistics beside the weights (read, or computed and cached)
    run.py        ``weaktok generate``: WAV + PNG with chunk boundaries, generate.json
    export.py     ``weaktok export``: a run as a model folder (weaktok/model/artifact.py) that loads alone

The names below are the package's API; ``weaktok.model.weights`` loads a trained model.
"""

from weaktok.data.prior import PRIOR_COMPONENTS, corpus_spectrum, sample_prior
from weaktok.generate.guidance import (
    GUIDE_TERMS,
    Guidance,
    cached_beside,
    cached_spectrum,
    guide,
    make_guidance,
    surrogate_target,
)
from weaktok.generate.run import GL_BATCH, generate, save_outputs, seed_spectrogram, seed_wave
from weaktok.generate.sampler import (
    MASK_FRACTION,
    MODES,
    STEPS,
    chunk_start_frames,
    is_flow,
    refine,
    seed_based,
    seed_hole,
    seed_hole_start,
    sigmas,
    unconditional,
)
from weaktok.model.weights import Loaded, ModelFileError, load_model, model_path

__all__ = [
    "GL_BATCH",
    "GUIDE_TERMS",
    "MASK_FRACTION",
    "MODES",
    "PRIOR_COMPONENTS",
    "STEPS",
    "Guidance",
    "Loaded",
    "ModelFileError",
    "cached_beside",
    "cached_spectrum",
    "chunk_start_frames",
    "corpus_spectrum",
    "generate",
    "guide",
    "is_flow",
    "load_model",
    "make_guidance",
    "model_path",
    "refine",
    "sample_prior",
    "save_outputs",
    "seed_based",
    "seed_hole",
    "seed_hole_start",
    "seed_spectrogram",
    "seed_wave",
    "sigmas",
    "surrogate_target",
    "unconditional",
]
