"""The reference library's experimental path of PPO; trl ships it as a stable trainer (`trl.PPOTrainer`)."""

from ...trainer.ppo_config import PPOConfig
from ...trainer.ppo_trainer import PPOTrainer


__all__ = ["PPOConfig", "PPOTrainer"]
