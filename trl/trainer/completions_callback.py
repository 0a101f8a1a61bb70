"""[`LogCompletionsCallback`]: a table of prompts and completions written to the console (rich), W&B and Trackio.

Online trainers (GRPO, RLOO) record the completions of each generation batch with their rewards and advantages
([`record_completions`]); the callback writes the latest record at every logging step. Other trainers have no
rollout: for them the callback generates completions for evaluation prompts every `freq` steps.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

from .model_utils import get_tokenizer
from .rollout_utils import pad_rows, render_prompts, tokenize_prompts
from .utils import message_text, print_prompt_completions_sample


if TYPE_CHECKING:
    from .rollout_engine import RolloutBatch

_FIXED_COLUMNS = ("step", "prompt", "completion", "advantage")


def record_completions(
    step: int, rollout: RolloutBatch, reward_names: list[str], advantages_B: torch.Tensor
) -> dict[str, list]:
    """The completions table of one generation batch, gathered from every process (collective: call it on all).

    Args:
        step (`int`):
            The global step the batch was generated at.
        rollout ([`~trl.trainer.rollout_engine.RolloutBatch`]):
            The batch (local prompts and completions, global rewards, columns logged by reward functions).
        reward_names (`list[str]`):
            One name per reward column.
        advantages_B (`torch.Tensor`):
            The global advantages `[B_global]`.

    Returns:
        `dict[str, list]`: Columns `step`, `prompt`, `completion`, one per reward function, `advantage`, then the
        reward functions' extra columns, one value per completion of every process.
    """
    from accelerate.utils import gather_object

    prompts = gather_object(rollout.prompts)
    completions = gather_object([message_text(completion) for completion in rollout.completions])
    table: dict[str, list] = {"step": [step] * len(prompts), "prompt": prompts, "completion": completions}
    for i, name in enumerate(reward_names):
        table[name] = rollout.rewards_B_F[:, i].tolist()
    table["advantage"] = advantages_B.tolist()
    for key, values in sorted(rollout.log_columns.items()):
        table[key] = gather_object(values)
    return table


def write_completions_table(table: dict[str, list], step: int, args: Any, reward_names: list[str]) -> None:
    """Print `table` with rich (unless `TRL_QUIET` is set) and log it as `completions` to W&B / Trackio when they
    are in `args.report_to` (`log_unique_prompts` keeps one row per prompt there)."""
    extra = {key: values for key, values in table.items() if key not in (*_FIXED_COLUMNS, *reward_names)}
    if not os.environ.get("TRL_QUIET"):
        print_prompt_completions_sample(
            table["prompt"],
            table["completion"],
            {name: table[name] for name in reward_names},
            table.get("advantage"),
            step,
            getattr(args, "num_completions_to_print", None),
            extra,
        )
    report_to = args.report_to or []
    if not any(target in report_to for target in ("wandb", "trackio")):
        return
    import pandas as pd

    frame = pd.DataFrame(table)
    if getattr(args, "log_unique_prompts", False):
        frame = frame.drop_duplicates(subset=["prompt"])
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            wandb.log({"completions": wandb.Table(dataframe=frame)})
    if "trackio" in report_to:
        import trackio

        trackio.log({"completions": trackio.Table(dataframe=frame)})


class LogCompletionsCallback(TrainerCallback):
    """Logs a `completions` table (step, prompt, completion, and for online trainers rewards and advantage) to the
    console (rich), and to W&B and Trackio when they are in `report_to`.

    With an online trainer (GRPO, RLOO), the table holds the completions the trainer generated for training since
    the last log, and is written at every logging step; `log_completions=True` adds this callback. With any other
    trainer, every `freq` steps the callback generates completions for the first `num_prompts` prompts of the
    trainer's evaluation set.

    Args:
        trainer (`Trainer`):
            The trainer whose completions are logged.
        generation_config (`GenerationConfig` or `None`, *optional*, defaults to `None`):
            Sampling settings when the callback generates (the model's own generation config when `None`).
        num_prompts (`int` or `None`, *optional*, defaults to `None`):
            Evaluation prompts to generate for; `None` uses them all.
        freq (`int` or `None`, *optional*, defaults to `None`):
            Generate every `freq` steps; `None` uses `args.eval_steps` (then `args.logging_steps`).

    Example:

    ```python
    trainer = DPOTrainer(..., eval_dataset=eval_dataset)
    trainer.add_callback(LogCompletionsCallback(trainer, num_prompts=8, freq=10))
    ```
    """

    def __init__(self, trainer: Any, generation_config: Any = None, num_prompts: int | None = None, freq=None):
        self.trainer = trainer
        self.generation_config = generation_config
        self.num_prompts = num_prompts
        self.freq = freq
        self.records = hasattr(trainer, "recorded_completions")
        if not self.records:
            self._check_eval_dataset(trainer.eval_dataset)

    @staticmethod
    def _check_eval_dataset(dataset: Any) -> None:
        if dataset is None or isinstance(dataset, dict):
            raise ValueError(
                "LogCompletionsCallback generates completions for the trainer's eval_dataset: pass one dataset (not "
                "a dict) as eval_dataset."
            )
        if "prompt" not in (dataset.column_names or []):
            raise ValueError(
                f"LogCompletionsCallback needs a 'prompt' column in eval_dataset; it has {dataset.column_names}."
            )

    def _reward_names(self) -> list[str]:
        scorer = getattr(self.trainer, "reward_scorer", None)
        return list(scorer.names) if scorer is not None else []

    def on_log(self, args, state, control, logs=None, **kwargs):
        table = getattr(self.trainer, "recorded_completions", None)
        if self.records and table and state.is_world_process_zero:
            write_completions_table(table, state.global_step, args, self._reward_names())

    def on_step_end(self, args, state, control, **kwargs):
        freq = self.freq or args.eval_steps or args.logging_steps
        if self.records or state.global_step % int(freq):
            return
        # Every process generates (collective under DeepSpeed ZeRO-3); the main one writes.
        table = self._generate(state.global_step)
        if state.is_world_process_zero:
            write_completions_table(table, state.global_step, args, [])

    def _generate(self, step: int) -> dict[str, list]:
        from ..generation.transformers_backend import unwrap_model_for_generation

        trainer, dataset = self.trainer, self.trainer.eval_dataset
        count = len(dataset) if self.num_prompts is None else min(self.num_prompts, len(dataset))
        rows = [dataset[i] for i in range(count)]
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
            texts, completions = generate_completions(model, rows, trainer.processing_class, self.generation_config)
        return {"step": [step] * count, "prompt": texts, "completion": completions}


@torch.no_grad()
def generate_completions(
    model: torch.nn.Module, rows: list[dict[str, Any]], processing_class: Any, generation_config: Any = None
) -> tuple[list[str], list[str]]:
    """The rendered prompts of `rows` and `model`'s completions of them, decoded without special tokens: one
    left-padded batch, generated in eval mode (the model's mode is restored). Used by the callbacks that generate
    for evaluation prompts ([`LogCompletionsCallback`], [`~trl.WinRateCallback`]).

    Args:
        model (`torch.nn.Module`):
            A model with `generate` (unwrapped).
        rows (`list[dict]`):
            Dataset rows with a `prompt` (standard or conversational).
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            Renders and tokenizes the prompts.
        generation_config (`GenerationConfig` or `None`, *optional*, defaults to `None`):
            Sampling settings; `None` uses the model's own.
    """
    if not rows:
        return [], []
    tokenizer = get_tokenizer(processing_class)
    texts = render_prompts(rows, processing_class)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    ids_B_P, mask_B_P = pad_rows(tokenize_prompts(texts, tokenizer), pad_id, "left", torch.long, device)
    was_training = model.training
    model.eval()
    try:
        output_B_L = model.generate(
            input_ids=ids_B_P, attention_mask=mask_B_P, generation_config=generation_config, pad_token_id=pad_id
        )
    finally:
        model.train(was_training)
    return texts, tokenizer.batch_decode(output_B_L[:, ids_B_P.shape[1] :], skip_special_tokens=True)
