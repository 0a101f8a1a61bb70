"""The reference library's experimental path of GKD; trl ships it as a stable trainer (`trl.GKDTrainer`)."""

from ...trainer.gkd_config import GKDConfig
from ...trainer.gkd_trainer import GKDTrainer


__all__ = ["GKDConfig", "GKDTrainer"]
