"""One config system: typed dataclasses, YAML files, dotted CLI overrides, validated before any compute.

    cfg = load_config("tiny", ["model.dim=128", "model.chunking.tau=0.5"])

Resolved once, where a command starts (weaktok/cli/, python -m weaktok.train, the launchers); what crosses a
process boundary is the resolved config: a YAML file written with ``save_config`` (a subprocess: ``--config`` that
file) or ``to_dict``'s plain data (a Ray worker: ``from_dict``, the same validation, no file read).

    errors.py   ConfigError (its message names the dotted key) and ``require``, the sections' range check
    model.py    the ``model:`` section: ModelConfig, ChunkingConfig, FlowConfig
    schema.py   the root Config and the other sections: audio, data, train (+ corruption), lscore, curriculum,
                metrics, tracking (TensorBoard, W&B, MLflow), ray (Ray's storage and checkpoint retention)
    load.py     load_config (shipped names, YAML paths, the ``base:`` chain, overrides), from_dict, with_overrides,
                with_values, to_dict, save_config, building and validating, train.init_from's check
"""

from weaktok.config.errors import ConfigError
from weaktok.config.load import (
    CONFIG_DIR,
    INIT_FROM_FORMS,
    build,
    check_init_from,
    from_dict,
    load_config,
    parse_override,
    resolve_config_path,
    save_config,
    shipped_configs,
    to_dict,
    validate,
    with_absolute_paths,
    with_overrides,
    with_values,
)
from weaktok.config.model import ChunkingConfig, FlowConfig, ModelConfig
from weaktok.config.schema import (
    AudioConfig,
    Config,
    CorruptionConfig,
    CurriculumConfig,
    DataConfig,
    LScoreConfig,
    MetricsConfig,
    RayConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "CONFIG_DIR",
    "INIT_FROM_FORMS",
    "AudioConfig",
    "ChunkingConfig",
    "Config",
    "ConfigError",
    "CorruptionConfig",
    "CurriculumConfig",
    "DataConfig",
    "FlowConfig",
    "LScoreConfig",
    "MetricsConfig",
    "ModelConfig",
    "RayConfig",
    "TrackingConfig",
    "TrainConfig",
    "build",
    "check_init_from",
    "from_dict",
    "load_config",
    "parse_override",
    "resolve_config_path",
    "save_config",
    "shipped_configs",
    "to_dict",
    "validate",
    "with_absolute_paths",
    "with_overrides",
    "with_values",
]
