"""Geometric-Mean Policy Optimization (GMPO, Zhao et al. 2025, arXiv 2507.20673): [`GRPOTrainer`] with the
objective of [`trl.losses.gmpo`].

Sampling, rewards, group-normalised advantages, the reference model, checkpoints and resume are GRPO's; only the
policy term differs: the geometric mean over a completion's tokens of the importance ratios, each clipped in log
space to `[−epsilon, epsilon_high]` on the side of the advantage's sign, times the advantage.
"""

from __future__ import annotations

from typing import Any

import torch

from ...losses.gmpo import gmpo_loss_from_options
from ...trainer.base_trainer import TrainerInputs
from ...trainer.grpo_config import GRPOConfig
from ...trainer.grpo_trainer import GRPOTrainer
from .gmpo_config import GMPOConfig, check_gmpo_options


class GMPOTrainer(GRPOTrainer):
    """Trainer for Geometric-Mean Policy Optimization (GMPO).

    Takes the arguments of [`~trl.GRPOTrainer`] (`model`, `reward_funcs`, `args`, datasets, processing classes,
    callbacks, ...); `args=None` uses `GMPOConfig(output_dir="<model>-GMPO")`; a `GRPOConfig` is used as it is (its
    `epsilon` then read in log space). The loss is [`~trl.losses.gmpo_loss`] with the options of the config; the
    logged metrics are GRPO's (`clip_ratio/*` count the tokens whose log-ratio left the log-space range in the
    advantage's direction).
    """

    _config_class = GMPOConfig
    _name = "GMPO"

    def _resolve_args(self, args: Any, model: Any) -> Any:
        # A GRPOConfig is used as it is, as by the reference (every field GMPO reads is GRPO's); converting it would
        # set its already resolved generation-batch fields twice.
        return args if isinstance(args, GRPOConfig) else super()._resolve_args(args, model)

    def _validate(self, args: GRPOConfig, inputs: TrainerInputs) -> None:
        super()._validate(args, inputs)
        check_gmpo_options(args)

    def _policy_loss(self, *tensors: Any, **kwargs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return gmpo_loss_from_options(*tensors, **kwargs)

    def _derived_quantities(self) -> dict[str, Any]:
        args = self.args
        rows = super()._derived_quantities()
        epsilon_high = args.epsilon if args.epsilon_high is None else args.epsilon_high
        rows["loss"] = f"GMPO geometric mean of clipped token ratios, reduced by {args.loss_type}"
        rows["ratio clip range"] = f"(exp(-{args.epsilon}), exp({epsilon_high}))"
        return rows
