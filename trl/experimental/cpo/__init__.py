"""The reference library's experimental path of CPO; trl ships it as a stable trainer (`trl.CPOTrainer`)."""

from ...trainer.cpo_config import CPOConfig
from ...trainer.cpo_trainer import CPOTrainer


__all__ = ["CPOConfig", "CPOTrainer"]
