"""``aia train``: the typed run config (:mod:`.config`), the per-task sample streams
(:mod:`.streams`), run set-up (:mod:`.setup`), one optimizer step (:mod:`.step`),
checkpoints and the final save (:mod:`.checkpoint`), the metrics log (:mod:`.metrics`)
and the loop that ties them together (:mod:`.trainer`)."""

from aia.training.config import RunConfig, config_help, load_config
from aia.training.trainer import TrainResult, train

__all__ = ["RunConfig", "TrainResult", "config_help", "load_config", "train"]
