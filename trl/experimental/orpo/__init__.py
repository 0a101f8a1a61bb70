"""The reference library's experimental path of ORPO; trl ships it as a stable trainer (`trl.ORPOTrainer`)."""

from ...trainer.orpo_config import ORPOConfig
from ...trainer.orpo_trainer import ORPOTrainer


__all__ = ["ORPOConfig", "ORPOTrainer"]
