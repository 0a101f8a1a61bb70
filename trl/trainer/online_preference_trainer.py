"""The base of the online preference trainers (Online DPO, Nash-MD, XPO): two completions per prompt, compared.

On top of [`~trl.trainer.rollout.OnlineTrainer`] (prompts, generation, scoring, reference log-probs, buffer,
resume state), [`OnlinePreferenceTrainer`] adds what the three methods share:

- **Scoring by exactly one of** reward functions / reward models (weighted sum, `missing_eos_penalty` on completions
  without EOS) **or a pairwise judge** ([`~trl.trainer.judge_scoring.JudgeScorer`]: the preferred completion scores 1,
  or `p` and `1 − p` with probabilities; conversations rendered with a neutral template).
- **Pairs**: the rollout repeats each prompt twice; the second completion comes from the policy (Online DPO), the
  geometric mixture (Nash-MD) or the reference (XPO) through the rollout's `pair_backend`. Pairs stay together in
  the micro-batches. The per-row "advantages" of the rollout are the completions' scores; a pair with a failed
  judgement (NaN scores) is left out of the loss.
- **Reference**: an explicit `ref_model` (id, path or model), else a frozen copy of the policy, else (PEFT) the base
  model with its adapters disabled.
- Per-epoch coefficients (`beta`, `mixture_coef`, `alpha`: a list gives one value per epoch, the last one reused).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ..generation.transformers_backend import TransformersBackend, unwrap_model_for_generation
from ..losses import aggregate_rewards, sequence_logps
from .base_trainer import TrainerInputs
from .judge_scoring import JudgeScorer
from .reward_scoring import RewardScorer
from .rollout import OnlineTrainer
from .rollout_engine import Rollout, RolloutBatch


class OnlinePreferenceTrainer(OnlineTrainer):
    """Shared machinery of [`OnlineDPOTrainer`], [`NashMDTrainer`] and [`XPOTrainer`] (see the module docstring).

    A subclass sets `_config_class` and `_name` (tags and paper follow), implements `compute_loss` and
    `_log_scores(scores_P_2, mode)`, and may set `_judge_scores = True` (judge probabilities) and implement
    `_pair_model(policy)` (what samples the second completion of each pair; `None`: the policy itself).
    """

    _buffer_group_size = 2
    _judge_scores = False

    def __init__(
        self,
        model: Any,
        ref_model: Any = None,
        reward_funcs: Any = None,
        judge: Any = None,
        args: Any = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_processing_classes: Any = None,
        peft_config: Any = None,
        compute_metrics: Any = None,
        callbacks: list | None = None,
        optimizers: tuple = (None, None),
        preprocess_logits_for_metrics: Any = None,
        reward_model: Any = None,
        reward_processing_class: Any = None,
    ):
        reward_funcs = _alias(reward_funcs, reward_model, "reward_model", "reward_funcs")
        reward_processing_classes = _alias(
            reward_processing_classes, reward_processing_class, "reward_processing_class", "reward_processing_classes"
        )
        for name, value in (("compute_metrics", compute_metrics), ("preprocess_logits_for_metrics",
                                                                   preprocess_logits_for_metrics)):  # fmt: skip
            if value is not None:
                raise ValueError(
                    f"{type(self).__name__} does not use {name}: evaluation generates pairs and reports the loss and "
                    "the method's metrics (eval_*). Remove it, or score completions with a callback."
                )
        self._judge, self._data_collator_given = judge, data_collator is not None
        super().__init__(
            model, reward_funcs, args, train_dataset, eval_dataset, processing_class, reward_processing_classes,
            callbacks, optimizers, None, peft_config, ref_model=ref_model,
        )  # fmt: skip

    # ------------------------------------------------------------------------------------- skeleton steps
    def _validate(self, args: Any, inputs: TrainerInputs) -> None:
        super()._validate(args, inputs)
        if self._data_collator_given:
            raise ValueError(
                f"{type(self).__name__} tokenizes the prompts itself (the rollout renders and pads them): remove "
                "data_collator."
            )
        if inputs.ref_model is not None and not isinstance(inputs.ref_model, str) and inputs.ref_model is inputs.model:
            raise ValueError(
                "`model` and `ref_model` are the same object, so the reference would move with every update. Pass "
                "ref_model=None (a frozen copy is made, or the adapters are disabled under PEFT), or a separate model."
            )

    def _validate_scoring(self, args: Any) -> None:
        name = type(self).__name__
        if self._reward_funcs is None and self._judge is None:
            if args.judge is not None:
                self._judge = _judge_by_name(args)
            else:
                self._reward_funcs = args.reward_model_path
        if (self._reward_funcs is None) == (self._judge is None):
            raise ValueError(
                f"{name} needs exactly one way to compare completions: pass either `judge` (a pairwise judge) or "
                f"`reward_funcs` (reward functions or reward models); got {'both' if self._judge else 'neither'}."
            )
        if self._judge is not None and args.missing_eos_penalty is not None:
            raise ValueError(
                "missing_eos_penalty changes reward scores, but a judge gives preferences: unset missing_eos_penalty, "
                "or score with reward_funcs."
            )
        if self._judge is not None and args.reward_weights is not None:
            raise ValueError("reward_weights weigh reward functions; a judge was given. Unset reward_weights.")

    def _setup_auxiliary_models(self, model: Any, args: Any, inputs: TrainerInputs) -> dict[str, Any]:
        if self._judge is not None:
            scorer = JudgeScorer(self._judge, return_scores=self._judge_scores)
        else:
            scorer = RewardScorer(
                self._reward_funcs, self._reward_processing_classes, args.reward_weights, args.model_init_kwargs
            )
        return {"ref_model": self._setup_ref(model, args, inputs.ref_model), "reward_scorer": scorer}

    def _setup_rollout(self) -> Rollout:
        rollout = super()._setup_rollout()
        if self._has_pair_model:
            eos = rollout._eos_token_ids(self.model)
            context = self._pair_generation_context
            rollout.pair_backend = TransformersBackend(
                self.model, self.accelerator, self.pad_token_id, eos, unwrap_context=context
            )
        return rollout

    _has_pair_model = False

    @contextlib.contextmanager
    def _pair_generation_context(self, model: Any, accelerator: Any) -> Iterator[Any]:
        """Yields what samples the second completion of each pair, from the (wrapped) policy."""
        gather = self.args.ds3_gather_for_generation
        with unwrap_model_for_generation(model, accelerator, gather) as policy, self._pair_model(policy) as sampler:
            yield sampler

    def _pair_model(self, policy: Any) -> contextlib.AbstractContextManager:
        """A context manager yielding the model (with `generate`) that samples each pair's second completion."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ data loading
    def _get_dataloader(self, dataset: Any, description: str, batch_size: int, *args: Any, **kwargs: Any) -> Any:
        # `per_device_train_batch_size` / `per_device_eval_batch_size` count prompts (as in the reference library);
        # the sampler yields each prompt twice in a row, so a dataloader batch holds two rows per counted prompt.
        return super()._get_dataloader(dataset, description, batch_size * 2, *args, **kwargs)

    # ------------------------------------------------------------------------------------------- scoring
    def _compute_advantages(self, rewards_B_F: torch.Tensor, rollout: RolloutBatch, mode: str) -> torch.Tensor:
        """The score of every completion `[B_global]` (NaN where a judgement failed): the weighted reward minus
        `missing_eos_penalty` without EOS, or the judge's 1 / 0 (or probabilities)."""
        weights = self.reward_scorer.weights.to(rewards_B_F.device)
        scores_B = aggregate_rewards(rewards_B_F, weights)
        truncated_B = self._gather_flags(rollout.truncated, rewards_B_F.device)
        if self.args.missing_eos_penalty is not None:
            scores_B = scores_B - self.args.missing_eos_penalty * truncated_B.float()
        self._log_scores(scores_B.view(-1, 2), mode)
        self._log_eos(truncated_B.view(-1, 2), mode)
        return scores_B

    def _gather_flags(self, flags: list[bool], device: Any) -> torch.Tensor:
        return self.accelerator.gather(torch.tensor(flags, dtype=torch.bool, device=self.accelerator.device)).to(
            device
        )

    def _log_scores(self, scores_P_2: torch.Tensor, mode: str) -> None:
        raise NotImplementedError

    def _log_eos(self, truncated_P_2: torch.Tensor, mode: str) -> None:
        """`val/contain_eos_token` when both completions come from the policy (Online DPO), else
        `val/model_contain_eos_token` and `val/ref_contain_eos_token` (the first and second of each pair)."""
        contains_P_2 = (~truncated_P_2).float()
        if not self._has_pair_model:
            self.log_metric("val/contain_eos_token", contains_P_2.mean(), mode)
            return
        self.log_metric("val/model_contain_eos_token", contains_P_2[:, 0].mean(), mode)
        self.log_metric("val/ref_contain_eos_token", contains_P_2[:, 1].mean(), mode)

    # ------------------------------------------------------------------------------------------ loss helpers
    def _coefficient(self, values: list[float]) -> float:
        """The value of a per-epoch list for the current epoch (the last one after the list runs out)."""
        epoch = int(self.state.epoch or 0) if getattr(self, "state", None) is not None else 0
        return values[min(epoch, len(values) - 1)]

    @property
    def beta(self) -> float:
        """β of the current epoch."""
        return self._coefficient(self.args.beta)

    def _sequence_logps(self, model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Summed policy log-probs `[B]` and per-token log-probs `[B, C]` of the micro-batch's completions."""
        logps_B_C, _, outputs = self._completion_logps(model, inputs)
        return sequence_logps(logps_B_C, inputs["completion_mask"]), logps_B_C, outputs

    @staticmethod
    def _pairs(values_B: torch.Tensor) -> torch.Tensor:
        """`[B] -> [P, 2]`: the two completions of each pair side by side."""
        if values_B.shape[0] % 2:
            raise ValueError(f"Expected whole pairs of rows, got {values_B.shape[0]} rows.")
        return values_B.view(-1, 2, *values_B.shape[1:])

    @staticmethod
    def _chosen_rejected(values_P_2: torch.Tensor, first_chosen_P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The values of the chosen and of the rejected completion of each pair."""
        first, second = values_P_2[:, 0], values_P_2[:, 1]
        return torch.where(first_chosen_P, first, second), torch.where(first_chosen_P, second, first)

    @staticmethod
    def _valid_pairs(scores_P_2: torch.Tensor) -> torch.Tensor:
        """Pairs whose both completions were scored (a failed judgement leaves NaN)."""
        return ~torch.isnan(scores_P_2).any(dim=1)

    def _mean_over_pairs(self, losses_P: torch.Tensor, valid_P: torch.Tensor, mode: str) -> torch.Tensor:
        """The mean loss over the valid pairs of the micro-batch, scaled for gradient accumulation."""
        loss = torch.where(valid_P, losses_P, torch.zeros_like(losses_P)).sum() / valid_P.sum().clamp(min=1)
        return self._scale_loss(loss, False, mode)

    def _log_means(self, metrics: dict[str, torch.Tensor], mode: str) -> None:
        """Log the mean of each tensor over every process (scalars as they are)."""
        for name, value in metrics.items():
            value = value.detach().float().reshape(-1)
            totals = torch.stack([value.sum(), torch.tensor(float(value.numel()), device=value.device)])
            totals = self.accelerator.gather(totals.reshape(1, 2)).sum(dim=0)
            self.log_metric(name, totals[0] / totals[1].clamp(min=1), mode)

    def _derived_quantities(self) -> dict[str, Any]:
        args = self.args
        rows = super()._derived_quantities()
        # The batch sizes count prompts; every prompt is sampled as a pair of completions.
        prompts = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        rows = {
            **{key: rows.pop(key) for key in ("processes",) if key in rows},
            "per-device batch (prompts)": rows.pop("per-device batch"),
            "per-device micro-batch (completions)": args.per_device_train_batch_size * 2,
            "gradient accumulation": rows.pop("gradient accumulation"),
            "global batch (prompts/step)": prompts,
            "global batch (completions/step)": prompts * 2,
            **{key: value for key, value in rows.items() if key != "global batch (sequences/step)"},
        }
        if "max tokens per step" in rows and getattr(args, "max_length", None):
            rows["max tokens per step"] = prompts * 2 * args.max_length
        rows["scoring"] = "judge " + self.reward_scorer.names[0] if self._judge is not None else "reward functions"
        rows["loss type"] = self.args.loss_type
        return rows


def _judge_by_name(args: Any) -> Any:
    """The judge `args.judge` names (`reward_model` scores with `args.reward_model_path`)."""
    from ..judges import get_judge

    if args.judge != "reward_model":
        return get_judge(args.judge)
    if args.reward_model_path is None:
        raise ValueError("judge='reward_model' scores with a reward model: set reward_model_path too.")
    return get_judge("reward_model", reward_model=args.reward_model_path)


def _alias(value: Any, alias: Any, old: str, new: str) -> Any:
    if alias is None:
        return value
    import warnings

    warnings.warn(f"`{old}` is deprecated; use `{new}` instead.", FutureWarning, stacklevel=4)
    if value is not None:
        raise ValueError(f"Both `{old}` and `{new}` were given; pass only `{new}`.")
    return alias
