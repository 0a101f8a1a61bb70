"""The rollout of the online trainers as one object, usable and testable without a `Trainer`.

[`Rollout`] turns dataset rows into training micro-batches, one generation batch at a time:

1. **Prompts**: each row's `prompt` is rendered (chat template for conversational prompts) and tokenized. The rows
   arrive already repeated `num_generations` times by [`~trl.trainer.rollout_utils.RolloutSampler`].
2. **Generation** through the backend built by [`~trl.generation.build_generation_backend`] (transformers, vLLM
   colocate, vLLM server), on a per-process random stream ([`~trl.trainer.rollout_utils.GenerationRNG`]).
3. **Decoding** into the prompts' format and **scoring** with a [`~trl.trainer.reward_scoring.RewardScorer`]
   (reward functions and reward models), gathered over processes into `rewards_B_F`.
4. **Log-probs** of the generating policy (`old_logps`) and of the reference (`ref_logps`) through the callables
   the trainer gives, once per generation batch.
5. **Buffering**: after the trainer adds its advantages, [`Rollout.fill_buffer`] shuffles the local batch, cuts it
   into `steps_per_generation` micro-batches and [`Rollout.next_micro_batch`] serves them to the next
   `steps_per_generation × num_iterations` micro-steps.

Every phase is timed (`timer`); [`Rollout.state_dict`] holds what an exact resume needs (micro-step counter,
buffered micro-batches, generation random state, token count) as tensors and JSON-able values.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from ..generation.base import GenerationBackend, SamplingParams, build_generation_backend
from .model_utils import get_tokenizer
from .reward_scoring import RewardScorer
from .rollout_utils import (
    GenerationBuffer,
    GenerationRNG,
    PhaseTimer,
    decode_completions,
    pad_rows,
    render_prompts,
    tokenize_prompts,
)


# Dataset columns that are not passed to reward functions as extra keyword arguments.
_NOT_REWARD_KWARGS = ("prompt", "completion", "completion_ids")
# Keys of a batch that describe the sequences (enough to rebuild the model inputs).
SEQUENCE_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
_PER_TOKEN_KEYS = (
    *("completion_ids", "completion_mask", "old_logps", "ref_logps", "sampler_logps", "sampler_weights"),
    *("tool_mask", "completion_attention_mask"),  # agent training (see `trl.agent.AgentRollout.finish`)
)

LogpsFn = Callable[[dict[str, torch.Tensor]], torch.Tensor]
MetricFn = Callable[..., None]


@dataclass
class RolloutBatch:
    """One generation batch as the rollout produced it, before the method adds its advantages.

    Attributes:
        tensors (`dict[str, torch.Tensor]`):
            This process's `B` rows: `prompt_ids`, `prompt_mask` `[B, P]` (left-padded), `completion_ids`,
            `completion_mask` `[B, C]` (right-padded; truncated rows zeroed under `mask_truncated_completions`),
            `completion_lengths` `[B]`, and when computed `sampler_logps`, `old_logps`, `ref_logps` `[B, C]`.
        rewards_B_F (`torch.Tensor`):
            Rewards of every process's rows `[B_global, F]`, one column per reward function, NaN where a function
            returned `None`.
        num_generations (`int`):
            Completions per prompt (consecutive rows share a prompt).
        prompts (`list[str]`):
            This process's rendered prompts, one per completion.
        completions (`list`):
            This process's decoded completions, in the prompts' format.
        truncated (`list[bool]`):
            Per local completion, whether it reached `max_completion_length` without an EOS token.
        log_columns (`dict[str, list]`):
            Extra columns the reward functions asked to log (`log_extra`), local rows.
    """

    tensors: dict[str, torch.Tensor]
    rewards_B_F: torch.Tensor
    num_generations: int
    prompts: list[str]
    completions: list[Any]
    truncated: list[bool]
    log_columns: dict[str, list] = field(default_factory=dict)


class SingleProcess:
    """The few `Accelerator` members the rollout uses, for one process without accelerate (tests, scripts)."""

    process_index, num_processes, is_main_process = 0, 1, True

    def __init__(self, device: Any = "cpu"):
        self.device = torch.device(device)

    @staticmethod
    def gather(value: torch.Tensor) -> torch.Tensor:
        return value

    @staticmethod
    def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
        return model


class Rollout:
    """Samples completions for prompt rows, scores them, computes their log-probs and buffers the micro-batches.

    Args:
        args (`OnlineConfig`-like):
            The online trainer config: `num_generations`, `num_generations_eval`, `steps_per_generation`,
            `num_iterations`, `gradient_accumulation_steps`, `per_device_train_batch_size`, sampling fields
            (`temperature`, `top_p`, `top_k`, `min_p`, `repetition_penalty`, `max_completion_length`,
            `generation_kwargs`, `cache_implementation`), `max_prompt_length`, `chat_template_kwargs`,
            `mask_truncated_completions`, `seed` and the backend fields read by `build_generation_backend`.
        model (`torch.nn.Module`):
            The policy; the transformers backend samples from it, vLLM loads the checkpoint it came from.
        processing_class (`PreTrainedTokenizerBase` or `ProcessorMixin`):
            Renders, tokenizes and decodes; its pad token pads the batch.
        reward_scorer ([`~trl.trainer.reward_scoring.RewardScorer`]):
            The reward functions and models (already placed on devices by the trainer).
        accelerator (`accelerate.Accelerator` or `None`, *optional*, defaults to `None`):
            Gathers rewards and counts over processes; `None` runs as a single process on `model`'s device.
        pad_token_id (`int` or `None`, *optional*, defaults to `None`):
            Pads the batch; `None` uses the tokenizer's pad token, else its EOS token (padding is masked).
        generation_backend ([`~trl.generation.GenerationBackend`] or `None`, *optional*, defaults to `None`):
            A ready backend; `None` builds the one `args` asks for with `build_generation_backend`.
        old_logps_fn (`Callable[[dict[str, torch.Tensor]], torch.Tensor]` or `None`, *optional*, defaults to `None`):
            Per-token log-probs `[B, C]` of the generating policy for a batch's sequences (run without gradients),
            used when [`Rollout.produce`] is asked for `old_logps`.
        ref_logps_fn (`Callable[[dict[str, torch.Tensor]], torch.Tensor]` or `None`, *optional*, defaults to `None`):
            The same for the reference model; `None` when the method has no reference (no `ref_logps`).
        sampler_logps (`bool`, *optional*, defaults to `False`):
            Ask the backend for the sampler's own log-probs (`sampler_logps`) when it provides them.
        log_metric (`Callable` or `None`, *optional*, defaults to `None`):
            `log_metric(name, value, mode)`; `None` stores the values in `metrics[mode][name]`.
        judge ([`~trl.judges.BasePairwiseJudge`] or `None`, *optional*, defaults to `None`):
            Score with a pairwise judge instead of `reward_scorer` (pass `reward_scorer=None`): each pair of
            consecutive rows (`num_generations=2`) is judged, the preferred completion scoring 1 and the other 0
            ([`~trl.trainer.judge_scoring.JudgeScorer`]).
        pair_backend ([`~trl.generation.GenerationBackend`] or `None`, *optional*, defaults to `None`):
            Sample the second completion of each pair from this backend (Nash-MD: the geometric mixture; XPO: the
            reference) and the first from the policy's; needs `num_generations=2`.
    """

    def __init__(
        self,
        args: Any,
        model: torch.nn.Module,
        processing_class: Any,
        reward_scorer: RewardScorer | None,
        accelerator: Any = None,
        *,
        pad_token_id: int | None = None,
        generation_backend: GenerationBackend | None = None,
        old_logps_fn: LogpsFn | None = None,
        ref_logps_fn: LogpsFn | None = None,
        sampler_logps: bool = False,
        log_metric: MetricFn | None = None,
        judge: Any = None,
        pair_backend: GenerationBackend | None = None,
        agent: Any = None,
    ):
        if judge is not None:
            if reward_scorer is not None:
                raise ValueError("Pass either a judge or a reward_scorer to the Rollout, not both.")
            from .judge_scoring import JudgeScorer

            reward_scorer = JudgeScorer(judge)
        if pair_backend is not None and args.num_generations != 2:
            raise ValueError(f"A pair_backend needs num_generations=2 (pairs), got {args.num_generations}.")
        self.args = args
        self.accelerator = accelerator or SingleProcess(next(model.parameters()).device)
        self.processing_class = processing_class
        self.tokenizer = get_tokenizer(processing_class)
        if pad_token_id is None:
            pad_token_id = self.tokenizer.pad_token_id
        self.pad_token_id = pad_token_id if pad_token_id is not None else self.tokenizer.eos_token_id
        self.reward_scorer = reward_scorer
        self.eos_token_ids = self._eos_token_ids(model)
        self.backend = generation_backend or build_generation_backend(
            args, model, accelerator, self.pad_token_id, self.eos_token_ids
        )
        self.agent = agent  # tools, environments or a rollout_func: `trl.agent.AgentRollout`
        self.pair_backend = pair_backend
        self.old_logps_fn, self.ref_logps_fn = old_logps_fn, ref_logps_fn
        self.sampler_logps = sampler_logps
        self.metrics: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        self.log_metric = log_metric or self._store_metric
        self.rng = GenerationRNG(args.seed, self.accelerator.process_index, self.accelerator.device)
        self.buffer = GenerationBuffer()
        self.timer = PhaseTimer()
        self.step = 0
        self.total_train_tokens = 0
        self._last_synced_step: int | None = None

    def _eos_token_ids(self, model: torch.nn.Module) -> list[int]:
        """The tokenizer's EOS and those of the model's generation config (chat models often add an end-of-turn)."""
        ids = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        config = getattr(self.accelerator.unwrap_model(model), "generation_config", None)
        extra = getattr(config, "eos_token_id", None)
        ids |= set(extra if isinstance(extra, list) else [extra] if extra is not None else [])
        return sorted(ids)

    def _store_metric(self, name: str, value: Any, mode: str = "train") -> None:
        self.metrics[mode][name].append(float(value))

    # ------------------------------------------------------------------------------------------ schedule
    @property
    def cycle(self) -> int:
        """Micro-steps fed by one generation batch."""
        return self.args.steps_per_generation * self.args.num_iterations

    @property
    def on_policy(self) -> bool:
        """Whether the policy is unchanged between generating a batch and training on all of it: then the log-probs
        of the generating policy equal the current ones (detached) and need no extra forward pass."""
        return self.args.gradient_accumulation_steps % self.cycle == 0

    def local(self, values_B: torch.Tensor) -> torch.Tensor:
        """This process's rows of a tensor gathered over every process."""
        size = values_B.shape[0] // self.accelerator.num_processes
        start = self.accelerator.process_index * size
        return values_B[start : start + size]

    # ------------------------------------------------------------------------------------------ one batch
    def produce(
        self,
        rows: list[dict[str, Any]],
        mode: str = "train",
        *,
        with_old_logps: bool = False,
        policy: torch.nn.Module | None = None,
        trainer_state: Any = None,
    ) -> RolloutBatch:
        """Generate, decode and score the completions of `rows` and compute their log-probs.

        Args:
            rows (`list[dict[str, Any]]`):
                This process's dataset rows, each prompt repeated `num_generations` (`num_generations_eval` in
                `"eval"` mode) times in a row.
            mode (`str`, *optional*, defaults to `"train"`):
                `"train"` or `"eval"` (group size and metric namespace).
            with_old_logps (`bool`, *optional*, defaults to `False`):
                Compute `old_logps` with `old_logps_fn` (off-policy training).
            policy (`torch.nn.Module` or `None`, *optional*, defaults to `None`):
                The training model, whose weights are synced to the backend once per optimizer step; `None` skips
                the sync (the transformers backend samples from the live model anyway).
            trainer_state (`TrainerState` or `None`, *optional*, defaults to `None`):
                Passed to reward functions; its `global_step` decides when weights are synced.
        """
        num_generations = self.args.num_generations if mode == "train" else self.args.num_generations_eval
        agent = self.agent
        rows = agent.prepare(rows) if agent is not None else rows  # environments reset, tool schemas in the rows
        prompts = [row["prompt"] for row in rows]
        texts = render_prompts(rows, self.processing_class, **(self.args.chat_template_kwargs or {}))
        prompt_ids = tokenize_prompts(texts, self.tokenizer, self.args.max_prompt_length)
        with self.timer("weight_sync"):
            self.sync_weights(policy, getattr(trainer_state, "global_step", 0))
        with self.timer("generate"):
            if agent is None:
                completion_ids, truncated, sampler_logps = self.generate(prompt_ids, num_generations)
            else:  # the tool loop or the user's rollout_func
                out = agent.generate(self, rows, prompt_ids, num_generations)
                prompt_ids, completion_ids, truncated = out.prompt_ids, out.completion_ids, out.truncated
                sampler_logps, rows = out.sampler_logps, out.scored_rows(rows)
        completions = decode_completions(prompts, completion_ids, self.tokenizer)
        if agent is not None and out.completions is not None:
            completions = out.completions  # the assistant and tool messages of each rollout
        tensors = self._tensors(prompt_ids, completion_ids, truncated, sampler_logps)
        with self.timer("score"):
            rewards_B_F, log_columns = self.score(rows, prompts, completions, completion_ids, mode, trainer_state)
            if agent is not None:  # tool glue and failed rollouts out of the loss; tool metrics
                rewards_B_F = agent.finish(self, out, tensors, rewards_B_F, mode)
        with self.timer("reference"):
            tensors.update(self.logps(tensors, with_old_logps))
        batch = RolloutBatch(tensors, rewards_B_F, num_generations, texts, completions, truncated, log_columns)
        self._log_batch(batch, mode)
        return batch

    def sync_weights(self, policy: torch.nn.Module | None, global_step: int) -> None:
        """Send the policy's weights to the backend, once per optimizer step."""
        if policy is not None and self._last_synced_step != global_step:
            self.backend.sync_weights(policy)
            self._last_synced_step = global_step

    def generate(
        self, prompt_ids: list[list[int]], num_generations: int, max_tokens: int | None = None
    ) -> tuple[list[list[int]], list[bool], list[list[float]] | None]:
        """Completions of `prompt_ids` (one entry per row) on the generation random stream: completion ids,
        truncation flags and, when asked for and provided, the sampler's log-probs. `max_tokens` defaults to
        `max_completion_length` (the tool loop passes what a completion has left)."""
        args = self.args
        groups = len(prompt_ids) % num_generations == 0 and all(
            prompt_ids[i] == prompt_ids[i - i % num_generations] for i in range(len(prompt_ids))
        )
        # Whole groups: each prompt once with n completions (a server then sees each prompt once).
        unique, n = (prompt_ids[::num_generations], num_generations) if groups else (prompt_ids, 1)
        generation_kwargs = dict(args.generation_kwargs or {})
        if args.cache_implementation is not None and not args.use_vllm:
            generation_kwargs.setdefault("cache_implementation", args.cache_implementation)
        sampling = SamplingParams(
            n=n,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            min_p=args.min_p or 0.0,
            repetition_penalty=args.repetition_penalty,
            max_tokens=max_tokens or args.max_completion_length,
            generation_kwargs=generation_kwargs,
            return_logprobs=self.sampler_logps and self.backend.provides_logprobs,
        )
        if self.pair_backend is not None:
            return self._generate_pairs(prompt_ids, num_generations, sampling)
        with self.rng():
            result = self.backend.generate(unique, sampling)
        return result.completion_ids, result.truncated, result.logprobs

    def _generate_pairs(
        self, prompt_ids: list[list[int]], num_generations: int, sampling: SamplingParams
    ) -> tuple[list[list[int]], list[bool], None]:
        """Each pair's first completion from the policy's backend, its second from `pair_backend`."""
        if num_generations != 2 or any(prompt_ids[i] != prompt_ids[i + 1] for i in range(0, len(prompt_ids), 2)):
            raise ValueError(
                "A pair_backend samples pairs: every prompt must come twice in a row (num_generations=2)."
            )
        unique = prompt_ids[::2]
        sampling = dataclasses.replace(sampling, n=1, return_logprobs=False)
        with self.rng():
            first = self.backend.generate(unique, sampling)
            second = self.pair_backend.generate(unique, sampling)
        completion_ids = [ids for pair in zip(first.completion_ids, second.completion_ids) for ids in pair]
        truncated = [flag for pair in zip(first.truncated, second.truncated) for flag in pair]
        return completion_ids, truncated, None

    def _tensors(
        self,
        prompt_ids: list[list[int]],
        completion_ids: list[list[int]],
        truncated: list[bool],
        sampler_logps: list[list[float]] | None,
    ) -> dict[str, torch.Tensor]:
        device = self.accelerator.device
        prompt_ids_B_P, prompt_mask_B_P = pad_rows(prompt_ids, self.pad_token_id, "left", torch.long, device)
        completion_ids_B_C, completion_mask_B_C = pad_rows(
            completion_ids, self.pad_token_id, "right", torch.long, device
        )
        if self.args.mask_truncated_completions:
            truncated_B = torch.tensor(truncated, dtype=torch.bool, device=device)
            completion_mask_B_C = completion_mask_B_C * (~truncated_B).unsqueeze(1).long()
        tensors = {
            "prompt_ids": prompt_ids_B_P,
            "prompt_mask": prompt_mask_B_P,
            "completion_ids": completion_ids_B_C,
            "completion_mask": completion_mask_B_C,
            "completion_lengths": torch.tensor([len(c) for c in completion_ids], device=device),
        }
        if sampler_logps is not None:
            tensors["sampler_logps"] = pad_rows(sampler_logps, 0.0, "right", torch.float32, device)[0]
        return tensors

    def score(
        self,
        rows: list[dict[str, Any]],
        prompts: list[Any],
        completions: list[Any],
        completion_ids: list[list[int]],
        mode: str,
        trainer_state: Any = None,
    ) -> tuple[torch.Tensor, dict[str, list]]:
        """Rewards of every reward function, gathered into `rewards_B_F` `[B_global, F]`, and the extra columns the
        functions asked to log. Judges (Online DPO, Nash-MD, XPO) will add their columns here."""
        columns = {key: [row[key] for row in rows] for key in rows[0] if key not in _NOT_REWARD_KWARGS}
        log_columns: dict[str, list] = {}
        rewards_B_F = self.reward_scorer.score(
            prompts,
            completions,
            completion_ids,
            columns,
            device=self.accelerator.device,
            trainer_state=trainer_state,
            log_extra=lambda column, values: log_columns.__setitem__(column, list(values)),
            log_metric=partial(self.log_metric, mode=mode),
        )
        rewards_B_F = self.accelerator.gather(rewards_B_F)
        unscored_B = torch.isnan(rewards_B_F).all(dim=1)
        if unscored_B.any():
            warnings.warn(
                f"All reward functions returned None for {int(unscored_B.sum())} of {len(unscored_B)} completions: "
                "they get a zero advantage and teach nothing. Make sure at least one reward function scores every "
                "sample.",
                UserWarning,
                stacklevel=3,
            )
        return rewards_B_F, log_columns

    @torch.no_grad()
    def logps(self, tensors: dict[str, torch.Tensor], with_old_logps: bool) -> dict[str, torch.Tensor]:
        """`old_logps` (when asked for) and `ref_logps` (when there is a reference) of the batch's sequences."""
        out = {}
        if with_old_logps:
            if self.old_logps_fn is None:
                raise ValueError("old_logps were asked for but the Rollout was built without old_logps_fn.")
            out["old_logps"] = self.old_logps_fn(tensors)
        if self.ref_logps_fn is not None:
            out["ref_logps"] = self.ref_logps_fn(tensors)
        return out

    def _log_batch(self, batch: RolloutBatch, mode: str) -> None:
        """Token count, completion-length and per-function reward metrics of every process's rows."""
        gather, tensors = self.accelerator.gather, batch.tensors
        if mode == "train":
            local_tokens = tensors["prompt_mask"].sum() + tensors["completion_lengths"].sum()
            self.total_train_tokens += int(gather(local_tokens.reshape(1)).sum().item())
            self.log_metric("num_tokens", self.total_train_tokens, mode)
        lengths_B = gather(tensors["completion_lengths"]).float()
        clipped_B = gather(torch.tensor(batch.truncated, dtype=torch.bool, device=self.accelerator.device))
        terminated = lengths_B[~clipped_B]
        for name, value in (("mean", lengths_B.mean()), ("min", lengths_B.min()), ("max", lengths_B.max())):
            self.log_metric(f"completions/{name}_length", value, mode)
        self.log_metric("completions/clipped_ratio", clipped_B.float().mean(), mode)
        stats = (terminated.mean(), terminated.min(), terminated.max()) if terminated.numel() else (0.0, 0.0, 0.0)
        for name, value in zip(("mean", "min", "max"), stats, strict=True):
            self.log_metric(f"completions/{name}_terminated_length", value, mode)
        for i, name in enumerate(self.reward_scorer.names):
            column = batch.rewards_B_F[:, i]
            valid = column[~torch.isnan(column)]
            self.log_metric(f"rewards/{name}/mean", valid.mean() if valid.numel() else float("nan"), mode)
            self.log_metric(f"rewards/{name}/std", valid.std() if valid.numel() > 1 else torch.zeros(()), mode)

    # --------------------------------------------------------------------------------------------- buffer
    def needs_generation(self) -> bool:
        """Whether the next micro-step starts a new generation batch (or the buffer is empty, after a resume from
        a checkpoint without rollout state)."""
        return self.step % self.cycle == 0 or not self.buffer

    def fill_buffer(self, tensors: dict[str, torch.Tensor], group_size: int = 1) -> None:
        """Shuffle the local generation batch (groups are spread over the micro-batches), cut it into
        `steps_per_generation` micro-batches trimmed of shared padding, and count each one's tokens globally.

        With `group_size > 1` the shuffle moves blocks of `group_size` consecutive rows (e.g. the two completions of
        a pair, which a pairwise loss needs in the same micro-batch)."""
        spg = self.args.steps_per_generation
        rows_B = next(iter(tensors.values())).shape[0]
        if rows_B % (group_size * spg):
            raise ValueError(
                f"The local generation batch ({rows_B} rows) does not split into {spg} micro-batches of whole groups of "
                f"{group_size}: make per_device_train_batch_size a multiple of {group_size}."
            )
        blocks = torch.randperm(rows_B // group_size) * group_size
        permutation = (blocks[:, None] + torch.arange(group_size)).reshape(-1).to(self.accelerator.device)
        tensors = {key: value[permutation] for key, value in tensors.items()}
        size = rows_B // spg
        slices = [
            trim_padding({key: value[i * size : (i + 1) * size] for key, value in tensors.items()}) for i in range(spg)
        ]
        local_tokens = torch.stack([part["completion_mask"].sum() for part in slices]).float()
        tokens = self.accelerator.gather(local_tokens.reshape(1, spg)).sum(dim=0)
        self.buffer.fill(slices, tokens.tolist())

    def next_micro_batch(self) -> dict[str, Any]:
        """The buffered micro-batch of this micro-step, with `num_items_in_batch` (the optimizer step's completion
        tokens on every process); advances the micro-step counter."""
        position = self.step % self.cycle
        self.step += 1
        part = dict(self.buffer.slices[position % self.args.steps_per_generation])
        part["num_items_in_batch"] = self.buffer.normaliser(
            position, self.cycle, self.args.gradient_accumulation_steps
        )
        return part

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue exactly: micro-step counter, buffered micro-batches, generation
        random state and token count (tensors and JSON-able values only)."""
        return {
            "step": self.step,
            "buffer": self.buffer.state_dict(),
            "generation_rng": self.rng.state_dict(),
            "total_train_tokens": self.total_train_tokens,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore [`Rollout.state_dict`]; keys it does not know (a trainer's own) are ignored."""
        self.step = state["step"]
        self.buffer.load_state_dict(state["buffer"], self.accelerator.device)
        self.rng.load_state_dict(state["generation_rng"])
        self.total_train_tokens = state["total_train_tokens"]

    def close(self) -> None:
        """Release the generation backends."""  # (environments are closed by `trl.agent.AgentRollout`)
        self.backend.close()
        if self.pair_backend is not None:
            self.pair_backend.close()


def trim_padding(part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the prompt columns that are padding in every row of a micro-batch, and the completion columns past its
    longest completion (per-token tensors alike)."""
    prompt_used = part["prompt_mask"].bool().any(dim=0).nonzero()
    first = int(prompt_used.min()) if prompt_used.numel() else part["prompt_mask"].shape[1]
    lengths = part["completion_lengths"]
    width = int(lengths.max()) if lengths.numel() else 0
    trimmed = dict(part)
    trimmed["prompt_ids"], trimmed["prompt_mask"] = part["prompt_ids"][:, first:], part["prompt_mask"][:, first:]
    for key in _PER_TOKEN_KEYS:
        if key in part:
            trimmed[key] = part[key][:, :width]
    return trimmed
