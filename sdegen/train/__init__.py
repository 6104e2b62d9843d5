"""Training score models at scale, and sampling them: configs, the loop, EMA, DDP, run folders.

- :mod:`.config`: the config schema (OmegaConf), presets in ``sdegen/configs``, ``key=value`` overrides;
- :mod:`.batches`: batches and noise as functions of ``(seed, step)``, sharded over processes;
- :mod:`.ema`: the EMA of the trainable weights;
- :mod:`.distributed`: torchrun / process-group set-up;
- :mod:`.runs`: a score model with its SDE and parametrization, built or loaded from checkpoints;
- :mod:`.loop`: :func:`train`;
- :mod:`.sample_job`: the one sampling job (per-sample seeds, shards, resume, lock), for score models and GANs.
"""
from .config import Config, ConfigError, load_config, preset_names
from .ema import EMA
from .loop import NonFiniteLossError, TrainResult, learning_rate, train
from .runs import ScoreModel, load_official, load_run
from .sample_job import JobResult, SamplerOptions, draw, run_job, sample_to_npz, score_job

__all__ = ["Config", "ConfigError", "load_config", "preset_names", "EMA", "NonFiniteLossError", "TrainResult",
           "learning_rate", "train", "ScoreModel", "load_official", "load_run", "SamplerOptions", "draw",
           "sample_to_npz", "run_job", "score_job", "JobResult"]
