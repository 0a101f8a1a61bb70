"""[`WinRateCallback`]: at each evaluation, how often a judge prefers the policy's completions to the reference's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import TrainerCallback

from .completions_callback import generate_completions
from .judge_scoring import render_for_judge
from .model_utils import is_peft_model


class WinRateCallback(TrainerCallback):
    """Logs `eval_win_rate`: the share of evaluation prompts on which `judge` prefers the trained model's completion
    to a baseline's (and `eval_avg_win_prob`, the mean probability, with `use_soft_judge=True`).

    The baseline completions are generated once, when training starts: by the trainer's `ref_model` when it has
    one, else by the base model with adapters disabled (PEFT), else by the model before training. At every
    evaluation the model's completions for the same prompts are judged against them; a `win_rate_completions`
    table goes to W&B / Trackio when they are in `report_to`.

    Args:
        judge ([`~trl.judges.BasePairwiseJudge`]):
            The judge.
        trainer (`Trainer`):
            The trainer; its `eval_dataset` (one dataset with a `prompt` column) gives the prompts.
        generation_config (`GenerationConfig` or `None`, *optional*, defaults to `None`):
            Sampling settings; `None` uses the model's own generation config.
        num_prompts (`int` or `None`, *optional*, defaults to `None`):
            Evaluation prompts used; `None` uses them all.
        shuffle_order (`bool`, *optional*, defaults to `True`):
            Passed to the judge (random presentation order against position bias).
        use_soft_judge (`bool`, *optional*, defaults to `False`):
            Ask the judge for probabilities (`return_scores=True`) and also log `eval_avg_win_prob`.
    """

    def __init__(
        self,
        judge: Any,
        trainer: Any,
        generation_config: Any = None,
        num_prompts: int | None = None,
        shuffle_order: bool = True,
        use_soft_judge: bool = False,
    ):
        dataset = trainer.eval_dataset
        if dataset is None or isinstance(dataset, dict) or "prompt" not in (dataset.column_names or []):
            raise ValueError(
                "WinRateCallback judges completions for the prompts of the trainer's eval_dataset: pass one dataset "
                "(not a dict) with a 'prompt' column as eval_dataset."
            )
        self.judge, self.trainer = judge, trainer
        self.generation_config = generation_config
        self.shuffle_order, self.use_soft_judge = shuffle_order, use_soft_judge
        count = len(dataset) if num_prompts is None else min(num_prompts, len(dataset))
        self.rows = [dataset[i] for i in range(count)]
        self.baseline: list[str] | None = None

    @contextlib.contextmanager
    def _baseline_model(self) -> Iterator[torch.nn.Module]:
        trainer = self.trainer
        ref_model = getattr(trainer, "ref_model", None)
        if ref_model is not None:
            yield trainer.accelerator.unwrap_model(ref_model)
            return
        model = trainer.accelerator.unwrap_model(trainer.model)
        if is_peft_model(model):
            with model.disable_adapter():
                yield model
            return
        yield model  # before the first update, the model is its own initial state

    def _generate(self, model: torch.nn.Module) -> list[str]:
        """Completions of this process's share of the prompts, gathered from every process (collective)."""
        from accelerate.utils import gather_object

        trainer = self.trainer
        accelerator = trainer.accelerator
        rows = self.rows[accelerator.process_index :: accelerator.num_processes]
        _, completions = generate_completions(model, rows, trainer.processing_class, self.generation_config)
        # Back to the prompts' order (process p generated prompts p, p + P, ...).
        parts = gather_object([(accelerator.process_index, completions)])
        ordered = [None] * len(self.rows)
        for process, values in parts:
            ordered[process :: accelerator.num_processes] = values
        return ordered

    def on_train_begin(self, args, state, control, **kwargs):
        with self._baseline_model() as model:
            self.baseline = self._generate(model)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.baseline is None:
            self.on_train_begin(args, state, control)
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        completions = self._generate(model)
        if not state.is_world_process_zero:
            return
        prompts = [render_for_judge(row["prompt"], True) for row in self.rows]
        pairs = [[baseline, completion] for baseline, completion in zip(self.baseline, completions, strict=True)]
        logs = self.win_rate(prompts, pairs)
        self.trainer.log(logs)
        self._log_table(args, state, prompts, completions, logs)

    def win_rate(self, prompts: list[str], pairs: list[list[str]]) -> dict[str, float]:
        """`eval_win_rate` (and `eval_avg_win_prob`) of the second completion of each pair; failed judgements are
        left out."""
        if self.use_soft_judge:
            first = self.judge.judge(prompts, pairs, shuffle_order=self.shuffle_order, return_scores=True)
            wins = [1.0 - p for p in first if p != -1]
            logs = {"eval_avg_win_prob": sum(wins) / max(len(wins), 1)}
            logs["eval_win_rate"] = sum(w > 0.5 for w in wins) / max(len(wins), 1)
            return logs
        ranks = [rank for rank in self.judge.judge(prompts, pairs, shuffle_order=self.shuffle_order) if rank != -1]
        return {"eval_win_rate": sum(rank == 1 for rank in ranks) / max(len(ranks), 1)}

    def _log_table(self, args, state, prompts, completions, logs) -> None:
        report_to = args.report_to or []
        if not any(target in report_to for target in ("wandb", "trackio")):
            return
        import pandas as pd

        frame = pd.DataFrame(
            {"step": [state.global_step] * len(prompts), "prompt": prompts, "reference": self.baseline,
             "policy": completions}
        )  # fmt: skip
        if "wandb" in report_to:
            import wandb

            if wandb.run is not None:
                wandb.log({"win_rate_completions": wandb.Table(dataframe=frame)})
        if "trackio" in report_to:
            import trackio

            trackio.log({"win_rate_completions": trackio.Table(dataframe=frame)})
