"""The reference library's experimental path of BCO; trl ships it as a stable trainer (`trl.BCOTrainer`)."""

from ...trainer.bco_config import BCOConfig
from ...trainer.bco_trainer import BCOTrainer


__all__ = ["BCOConfig", "BCOTrainer"]
