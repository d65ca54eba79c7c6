"""``aia train``: the typed run config (:mod:`.config`), the per-task sample streams
(:mod:`.streams`) and the accelerate trainer (:mod:`.trainer`)."""

from aia.training.config import RunConfig, config_help, load_config
from aia.training.trainer import TrainResult, train

__all__ = ["RunConfig", "TrainResult", "config_help", "load_config", "train"]
