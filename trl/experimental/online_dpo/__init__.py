"""Online DPO under the reference library's 1.x path; the trainer is stable in trl (`trl.OnlineDPOTrainer`)."""

from ...trainer.online_dpo_config import OnlineDPOConfig
from ...trainer.online_dpo_trainer import OnlineDPOTrainer


__all__ = ["OnlineDPOConfig", "OnlineDPOTrainer"]
