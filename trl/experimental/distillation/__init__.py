"""The reference library's experimental path of the distillation trainer; it is `trl.DistillationTrainer`."""

from ...trainer.distillation_config import DistillationConfig
from ...trainer.distillation_trainer import DistillationTrainer


__all__ = ["DistillationConfig", "DistillationTrainer"]
