"""Typed configs, one dataclass per command, read from YAML and overridden by flags (options.py says
how). Imports no torch, so `dreambooth --help` stays fast."""

from .commands import CompareConfig, SelectConfig
from .sampling import (
    DTYPES,
    SCHEDULER_NAMES,
    ZERO_SNR_SCHEDULERS,
    EvaluateConfig,
    GenerateConfig,
    GridConfig,
    SamplingConfig,
)
from .tools import (
    CheckDataConfig,
    DemoConfig,
    ExportConfig,
    LoraBakeConfig,
    LoraExtractConfig,
    LoraMergeConfig,
    LoraResizeConfig,
    SweepConfig,
    TinyModelConfig,
    UIConfig,
)
from .train import LR_SCHEDULERS, MIXED_PRECISION, TrainConfig, saved_config

__all__ = [
    "saved_config",
    "DTYPES",
    "LR_SCHEDULERS",
    "MIXED_PRECISION",
    "SCHEDULER_NAMES",
    "ZERO_SNR_SCHEDULERS",
    "CheckDataConfig",
    "CompareConfig",
    "DemoConfig",
    "ExportConfig",
    "LoraBakeConfig",
    "LoraExtractConfig",
    "LoraMergeConfig",
    "LoraResizeConfig",
    "EvaluateConfig",
    "GenerateConfig",
    "GridConfig",
    "SamplingConfig",
    "SelectConfig",
    "SweepConfig",
    "TinyModelConfig",
    "TrainConfig",
    "UIConfig",
]
