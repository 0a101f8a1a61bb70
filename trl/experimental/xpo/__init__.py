"""XPO under the reference library's experimental path; the trainer is stable in trl (`trl.XPOTrainer`)."""

from ...trainer.xpo_config import XPOConfig
from ...trainer.xpo_trainer import XPOTrainer


__all__ = ["XPOConfig", "XPOTrainer"]
