"""The reference library's experimental path of PRM; trl ships it as a stable trainer (`trl.PRMTrainer`)."""

from ...trainer.prm_config import PRMConfig
from ...trainer.prm_trainer import PRMTrainer


__all__ = ["PRMConfig", "PRMTrainer"]
