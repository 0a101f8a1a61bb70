"""[`WeaveCallback`]: log evaluation completions (and their scores) to Weights & Biases Weave."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from ..import_utils import is_weave_available
from .completions_callback import LogCompletionsCallback


def _require_weave() -> Any:
    if not is_weave_available():
        raise ImportError(
            "WeaveCallback needs the `weave` package, which is not installed. Install it with `pip install weave`."
        )
    import weave

    return weave


class WeaveCallback(TrainerCallback):
    """At every evaluation, generate completions for evaluation prompts and log them to
    [Weave](https://weave-docs.wandb.ai/) as one evaluation: every prediction (prompt -> completion) with the score of
    each scorer, and a summary with the mean score of each scorer and the step.

    Weave is initialised with `project_name` (or, when `None`, reuses a Weave client already initialised, e.g. by
    `wandb.init` with Weave enabled). Without scorers the completions are logged as a trace only.

    Args:
        trainer (`Trainer`):
            The trainer; its `eval_dataset` (one dataset with a `prompt` column) supplies the prompts.
        project_name (`str` or `None`, *optional*, defaults to `None`):
            Weave project passed to `weave.init`; `None` requires an already initialised client.
        scorers (`dict[str, Callable]` or `None`, *optional*, defaults to `None`):
            Name -> function `scorer(prompt: str, completion: str) -> float`.
        generation_config (`GenerationConfig` or `None`, *optional*, defaults to `None`):
            Sampling settings (the model's own generation config when `None`).
        num_prompts (`int` or `None`, *optional*, defaults to `None`):
            Evaluation prompts to use; `None` uses them all.
        dataset_name (`str`, *optional*, defaults to `"eval_dataset"`):
            Dataset name shown in Weave.
        model_name (`str` or `None`, *optional*, defaults to `None`):
            Model name shown in Weave; defaults to the model's `name_or_path`.
    """

    def __init__(
        self,
        trainer: Any,
        project_name: str | None = None,
        scorers: dict[str, Callable[[str, str], float]] | None = None,
        generation_config: Any = None,
        num_prompts: int | None = None,
        dataset_name: str = "eval_dataset",
        model_name: str | None = None,
    ):
        self.weave = _require_weave()
        LogCompletionsCallback._check_eval_dataset(trainer.eval_dataset)
        self.trainer = trainer
        self.project_name = project_name
        self.scorers = dict(scorers or {})
        self.dataset_name = dataset_name
        self.model_name = model_name
        # The completions callback already generates for the eval prompts: reuse it rather than a second copy.
        self._generator = LogCompletionsCallback(trainer, generation_config, num_prompts)
        self._initialised = False

    def _ensure_client(self) -> None:
        if self._initialised:
            return
        if self.project_name is not None:
            self.weave.init(self.project_name)
        elif getattr(self.weave, "get_client", lambda: None)() is None:
            raise ValueError(
                "WeaveCallback has no Weave client: pass project_name=... or call weave.init(...) before training."
            )
        self._initialised = True

    def _model_name(self) -> str:
        if self.model_name is not None:
            return self.model_name
        config = getattr(self.trainer.model, "config", None)
        return getattr(config, "name_or_path", None) or type(self.trainer.model).__name__

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._ensure_client()

    def on_evaluate(self, args, state, control, **kwargs):
        # Every process generates (collective under ZeRO-3); only the main one talks to Weave.
        table = self._generator._generate(state.global_step)
        if state.is_world_process_zero:
            self._ensure_client()
            self.log_evaluation(table["prompt"], table["completion"], state.global_step)

    def log_evaluation(self, prompts: list[str], completions: list[str], step: int) -> dict[str, float]:
        """Log one Weave evaluation of `completions` and return its summary (mean score per scorer, and `step`).

        Args:
            prompts (`list[str]`):
                The rendered prompts.
            completions (`list[str]`):
                One completion per prompt.
            step (`int`):
                The training step, stored in the summary.
        """
        logger = self.weave.EvaluationLogger(model=self._model_name(), dataset=self.dataset_name)
        totals = dict.fromkeys(self.scorers, 0.0)
        for prompt, completion in zip(prompts, completions, strict=True):
            prediction = logger.log_prediction(inputs={"prompt": prompt}, output=completion)
            for name, scorer in self.scorers.items():
                score = float(scorer(prompt, completion))
                totals[name] += score
                prediction.log_score(scorer=name, score=score)
            prediction.finish()
        summary = {name: total / max(len(prompts), 1) for name, total in totals.items()}
        summary["step"] = step
        logger.log_summary(summary)
        return summary
