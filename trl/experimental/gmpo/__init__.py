"""Geometric-Mean Policy Optimization (GMPO, arXiv 2507.20673): GRPO with the geometric mean of the token-level
importance ratios, clipped per token in log space (see [`trl.losses.gmpo`] and docs/gmpo_trainer.md)."""

from .gmpo_config import GMPOConfig
from .gmpo_trainer import GMPOTrainer


__all__ = ["GMPOConfig", "GMPOTrainer"]
