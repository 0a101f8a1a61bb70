"""What [`GKDTrainer`] and [`DistillationTrainer`] share: one teacher-student distillation implementation.

Every training micro-step draws one coin (`random() <= lmbda`, from a stream seeded by `args.seed`, identical on
every process and saved in checkpoints) that picks where the completions of the batch come from:

- **student** (on-policy): sampled from the student through the backend of
  [`~trl.generation.build_generation_backend`] (transformers, vLLM colocate or vLLM server);
- **teacher** (sequence-level KD, `seq_kd=True`): sampled from the teacher;
- **dataset** (supervised): the batch's own completions.

The student and the teacher then score the same `[prompt | completion]` rows with the LM head run only at
completion positions ([`~trl.kernels.token_logps`]), and [`~trl.losses.distillation_loss`] turns the two sets of
logits into the generalised JSD (forward KL at `beta = 0`, reverse KL at `beta = 1`), averaged over the completion
tokens of the micro-batch. Sampling uses its own random stream ([`~trl.trainer.rollout_utils.GenerationRNG`]), so
dropout or data shuffling never shift what is sampled; both streams are part of `extra_state_dict()`.
"""

from __future__ import annotations

import random
import warnings
from types import SimpleNamespace
from typing import Any

import torch

from ..generation.base import SamplingParams, build_generation_backend
from ..kernels import token_logps
from ..losses import distillation_loss
from ..models.utils import prepare_ref_model
from .completions_callback import LogCompletionsCallback
from .distillation_teacher_server import TeacherServer, teacher_server_divergence
from .model_utils import accepts_logits_to_keep, get_tokenizer, prepare_auxiliary_model
from .rollout_utils import GenerationRNG, pad_rows, policy_inputs


COMPLETION_SOURCES = ("student", "teacher", "dataset")


class DataCollatorForDistillation:
    """Collate tokenised examples into left-padded prompts and right-padded completions.

    Each example holds `input_ids` and a `completion_mask` (0 on the prompt, which comes first, 1 on the completion;
    all 0 for a prompt-only example). The batch has `prompt_ids`, `prompt_mask` `[B, P]` (left-padded, as generation
    wants them) and `completion_ids`, `completion_mask` `[B, C]` (right-padded; `C = 0` for prompt-only data).

    Args:
        pad_token_id (`int`):
            The padding id.
        pad_to_multiple_of (`int` or `None`, *optional*, defaults to `None`):
            Pad prompt and completion widths to a multiple of this value.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def _pad(self, rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = pad_rows(rows, self.pad_token_id, side, torch.long, "cpu")
        extra = -ids.shape[1] % self.pad_to_multiple_of if self.pad_to_multiple_of and ids.shape[1] else 0
        if extra:
            pad = (extra, 0) if side == "left" else (0, extra)
            ids = torch.nn.functional.pad(ids, pad, value=self.pad_token_id)
            mask = torch.nn.functional.pad(mask, pad, value=0)
        return ids, mask

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts, completions = [], []
        for example in examples:
            ids = list(example["input_ids"])
            mask = list(example.get("completion_mask") or [0] * len(ids))
            start = mask.index(1) if 1 in mask else len(ids)
            if any(value == 0 for value in mask[start:]):
                raise ValueError("completion_mask must be 0 on a leading prompt and 1 on the completion after it.")
            prompts.append(ids[:start])
            completions.append(ids[start:])
        prompt_ids, prompt_mask = self._pad(prompts, "left")
        completion_ids, completion_mask = self._pad(completions, "right")
        return {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
        }


def check_same_vocabulary(student: Any, teacher: Any, tokenizer: Any, teacher_tokenizer: Any | None) -> None:
    """Raise unless student and teacher share one tokenizer: the loss compares their distributions token by token.

    The vocabularies are compared when the teacher's tokenizer is known, else the embedding sizes.
    """
    if teacher_tokenizer is not None:
        same = get_tokenizer(tokenizer).get_vocab() == get_tokenizer(teacher_tokenizer).get_vocab()
    else:
        same = student.config.vocab_size == teacher.config.vocab_size
    if not same:
        raise ValueError(
            "The student and the teacher use different tokenizers. Distillation compares their next-token "
            "distributions token by token, so both must share one vocabulary (a teacher of the same model family, "
            "e.g. a larger checkpoint with the same tokenizer)."
        )


def teacher_tokenizer_of(teacher: Any, args: Any) -> Any | None:
    """The teacher's tokenizer, loaded from its checkpoint directory or id when it has one (`None` otherwise)."""
    from transformers import AutoTokenizer

    path = getattr(getattr(teacher, "config", None), "_name_or_path", None)
    if not path:
        return None
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=getattr(args, "trust_remote_code", False))
    except (OSError, ValueError):
        return None


class DistillationMixin:
    """The distillation steps of a `BaseTrainer` subclass: teacher setup, completion source, generation, loss and
    the extra checkpoint state. The subclass stores the `teacher_model` argument as `self._teacher_arg` before
    `BaseTrainer.__init__`, and provides `_sampling_params()` and the config fields `lmbda`, `beta`, `temperature`,
    `teacher_model_init_kwargs` (and optionally `seq_kd`, `loss_top_k`, `loss_add_tail`, `reverse_kl_top_1_mode`,
    `teacher_model_revision`, `log_completions`, `log_completions_steps`, `use_teacher_server`).

    Class attributes: `_self_teacher_allowed` (no teacher at all means the teacher is the student itself, GKD's
    `teacher_model_name_or_path=None`; otherwise it is an error) and `_student_token_metrics` (the student's forward
    also returns entropy and top-1 hits, for `_log_student_metrics`)."""

    _teacher_arg: Any = None
    loss_normalization = "examples"  # the loss is already a token mean per micro-batch
    _paper = {
        "title": "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes",
        "id": "2306.13649",
    }
    _self_teacher_allowed = False
    _student_token_metrics = False

    # ------------------------------------------------------------------ setup
    def _validate_teacher(self, args: Any) -> None:
        teacher = self._teacher_arg
        path = getattr(args, "teacher_model_name_or_path", None)
        if getattr(args, "use_teacher_server", False):
            if teacher is not None or path is not None:
                warnings.warn(
                    f"use_teacher_server=True: the teacher at {args.teacher_model_server_url} scores the completions, "
                    "so the local teacher (`teacher_model` / `teacher_model_name_or_path`) is not loaded.",
                    stacklevel=3,
                )
            return
        if teacher is None and path is None and not self._self_teacher_allowed:
            raise ValueError(
                f"{type(self).__name__} needs a teacher: pass `teacher_model=` (a model or its id / path) or set "
                "`teacher_model_name_or_path` in the config."
            )
        if teacher is not None and path is not None and teacher != path:
            raise ValueError(
                f"Both `teacher_model` and `teacher_model_name_or_path={path!r}` are set; keep only one of them."
            )
        if getattr(args, "teacher_model_init_kwargs", None) and not isinstance(teacher if teacher else path, str):
            given = "no teacher was given" if teacher is None and path is None else "the teacher you passed is loaded"
            raise ValueError(
                f"`teacher_model_init_kwargs` only applies when the teacher is given as a string (an id or path); {given}."
            )

    def _setup_teacher(self, model: Any, args: Any) -> torch.nn.Module | None:
        """The frozen teacher (eval mode, dropout off), loaded with `teacher_model_init_kwargs` from a string; `None`
        when the teacher is the student itself; a [`TeacherServer`] with `use_teacher_server=True`."""
        if getattr(args, "use_teacher_server", False):
            return TeacherServer.connect(args)
        teacher = self._teacher_arg if self._teacher_arg is not None else args.teacher_model_name_or_path
        if teacher is None:
            if getattr(args, "disable_dropout", False):
                warnings.warn(
                    f"{type(self).__name__}: no teacher was given, so the teacher is the model itself, scored in eval "
                    "mode on its current weights. With dropout disabled (disable_dropout=True) the two distributions "
                    "are identical: the loss and its gradient are zero. Pass a teacher, or set disable_dropout=False "
                    "to distil the model's dropout-free predictions into its training-mode ones.",
                    stacklevel=2,
                )
            return None
        init_kwargs = dict(getattr(args, "teacher_model_init_kwargs", None) or {})
        revision = getattr(args, "teacher_model_revision", None)
        if revision is not None:
            init_kwargs.setdefault("revision", revision)
        return prepare_auxiliary_model(teacher, args, init_kwargs)

    def _setup_distillation(self, teacher: torch.nn.Module | TeacherServer | None) -> None:
        """After `Trainer.__init__`: check the vocabularies, place the teacher (the student itself when `None`; no
        model with a [`TeacherServer`]), build the generation backends, the random streams and the completions
        table."""
        student = self.accelerator.unwrap_model(self.model)
        self._self_teacher = teacher is None
        self.teacher_server = teacher if isinstance(teacher, TeacherServer) else None
        if self.teacher_server is not None:
            self.teacher_server.check_server(self.processing_class)
            self.teacher_model = None
        elif self._self_teacher:
            self.teacher_model = self.model
        else:
            check_same_vocabulary(student, teacher, self.processing_class, teacher_tokenizer_of(teacher, self.args))
            self.teacher_model = prepare_ref_model(teacher, self.accelerator)
        tokenizer = get_tokenizer(self.processing_class)
        ids = {"pad_token_id": self.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
        self.generation_backend = build_generation_backend(self.args, self.model, self.accelerator, **ids)
        self.teacher_generation_backend = None  # no sequence-level KD from a teacher server
        if self.teacher_model is not None:
            plain = SimpleNamespace(use_vllm=False)
            self.teacher_generation_backend = build_generation_backend(
                plain, self.teacher_model, self.accelerator, **ids
            )
        self._coin = random.Random(self.args.seed)
        self._generation_rng = GenerationRNG(self.args.seed, self.accelerator.process_index, self.accelerator.device)
        self._synced_step = -1
        self._student_keeps_logits = accepts_logits_to_keep(self.accelerator.unwrap_model(self.model))
        self._teacher_keeps_logits = self.teacher_model is not None and accepts_logits_to_keep(
            self.accelerator.unwrap_model(self.teacher_model)
        )
        self.recorded_completions: dict[str, list] = {}
        if getattr(self.args, "log_completions", False) and not self._logs_completions:
            self.add_callback(LogCompletionsCallback(self))

    # ------------------------------------------------------------------ completions
    def _completion_source(self) -> str:
        """One coin per micro-step: the student with probability `lmbda`, else the teacher (`seq_kd`) or the data."""
        if self._coin.random() <= self.args.lmbda:
            return "student"
        return "teacher" if getattr(self.args, "seq_kd", False) else "dataset"

    def _with_completions(self, inputs: dict[str, torch.Tensor], source: str, mode: str) -> dict[str, torch.Tensor]:
        """`inputs` with their completions replaced by completions sampled from `source` (unchanged for "dataset")."""
        if source == "dataset":
            if not inputs["completion_mask"].any():
                raise ValueError(
                    "This batch has no dataset completions to distil on (prompt-only data) but the coin picked them "
                    "(lmbda < 1 and seq_kd=False). Use prompt-completion data, or set lmbda=1.0."
                )
            return inputs
        backend = self.generation_backend if source == "student" else self.teacher_generation_backend
        if source == "student" and self._synced_step != self.state.global_step:
            backend.sync_weights(self.model)
            self._synced_step = self.state.global_step
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["prompt_ids"], inputs["prompt_mask"])]
        with self._generation_rng():
            result = backend.generate(prompts, self._sampling_params())
        device = inputs["prompt_ids"].device
        completion_ids, completion_mask = pad_rows(
            result.completion_ids, self.pad_token_id, "right", torch.long, device
        )
        self.log_metric("completions/mean_length", completion_mask.sum(dim=1).float().mean(), mode)
        inputs = {**inputs, "completion_ids": completion_ids, "completion_mask": completion_mask}
        if mode == "train" and self._logs_completions:
            self._record_completions(inputs, source)
        return inputs

    # ------------------------------------------------------------------ completions table
    @property
    def _logs_completions(self) -> bool:
        """Whether a [`LogCompletionsCallback`] is registered (it writes what `_record_completions` records)."""
        return any(isinstance(cb, LogCompletionsCallback) for cb in self.callback_handler.callbacks)

    def _record_completions(self, inputs: dict[str, torch.Tensor], source: str) -> None:
        """Add the sampled completions of this micro-batch, from every process, to the table of the current step
        (collective: every process samples from the same source). With `log_completions_steps`, only every that
        many steps are recorded; [`LogCompletionsCallback`] writes the table at the next log."""
        from accelerate.utils import gather_object

        step = self.state.global_step + 1  # the optimizer step this micro-batch belongs to
        if step % getattr(self.args, "log_completions_steps", 1):
            return
        tokenizer = get_tokenizer(self.processing_class)

        def texts(ids_B_L: torch.Tensor, mask_B_L: torch.Tensor) -> list[str]:
            rows = [ids[mask.bool()].tolist() for ids, mask in zip(ids_B_L, mask_B_L)]
            return gather_object(tokenizer.batch_decode(rows, skip_special_tokens=True))

        prompts = texts(inputs["prompt_ids"], inputs["prompt_mask"])
        completions = texts(inputs["completion_ids"], inputs["completion_mask"])
        if self.recorded_completions.get("step", [None])[:1] != [step]:
            self.recorded_completions = {"step": [], "prompt": [], "completion": [], "source": []}
        table = self.recorded_completions
        table["step"] += [step] * len(prompts)
        table["prompt"] += prompts
        table["completion"] += completions
        table["source"] += [source] * len(prompts)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # LogCompletionsCallback writes the recorded table from `on_log`, inside `super().log`.
        super().log(logs, start_time)
        self.recorded_completions = {}

    def training_step(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch: Any = None):
        inputs = self._with_completions(self._prepare_inputs(inputs), self._completion_source(), "train")
        return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Evaluation scores the dataset completions; prompt-only data is scored on student samples.
        inputs = self._prepare_inputs(inputs)
        if not inputs["completion_mask"].any():
            inputs = self._with_completions(inputs, "student", "eval")
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        rows = policy_inputs(
            inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"], inputs["completion_mask"]
        )
        batch = {key: rows[key] for key in ("input_ids", "attention_mask", "position_ids", "completion_mask")}
        metrics = self._student_token_metrics
        student = token_logps(
            model, batch, return_entropy=metrics, return_top1=metrics, logits_to_keep=self._student_keeps_logits
        )
        if self.teacher_server is not None:
            teacher = self.teacher_server.score(
                inputs["prompt_ids"], inputs["prompt_mask"], rows["completion_ids"], rows["completion_mask"]
            )
            loss, divergence_N = teacher_server_divergence(
                student.logits, teacher, self.args.beta, self.args.temperature, self.args.loss_add_tail
            )
        else:
            teacher = self._teacher_logps(model, batch)
            loss, divergence_N = self._local_divergence(student, teacher, rows["completion_ids"][student.mask])
        loss = loss + self.router_aux_loss(student.aux_loss, mode)
        self._log_student_metrics(batch, student, mode)
        self._log_distillation_metrics(student, teacher, divergence_N, mode)
        return (loss, student.outputs) if return_outputs else loss

    def _local_divergence(self, student: Any, teacher: Any, sampled_ids_N: torch.Tensor):
        """[`~trl.losses.distillation_loss`] of the student's and a local teacher's logits."""
        vocab = min(student.logits.shape[-1], teacher.logits.shape[-1])  # same tokenizer, padded embeddings
        assert student.mask.shape == teacher.mask.shape, "student and teacher scored different positions"
        return distillation_loss(
            student.logits[:, :vocab],
            teacher.logits[:, :vocab],
            beta=self.args.beta,
            temperature=self.args.temperature,
            top_k=getattr(self.args, "loss_top_k", 0),
            add_tail=getattr(self.args, "loss_add_tail", True),
            sampled_ids_N=sampled_ids_N,
            reverse_top_1_mode=getattr(self.args, "reverse_kl_top_1_mode", "sampled"),
        )

    @torch.no_grad()
    def _teacher_logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        """The teacher's scores of `batch`; a self-teacher is the student, in eval mode on its current weights."""
        if not self._self_teacher:
            return token_logps(self.teacher_model, batch, logits_to_keep=self._teacher_keeps_logits)
        student = self.accelerator.unwrap_model(model)
        was_training = student.training
        student.eval()
        try:
            return token_logps(student, batch, logits_to_keep=self._student_keeps_logits)
        finally:
            student.train(was_training)

    def _log_student_metrics(self, batch: dict[str, torch.Tensor], student: Any, mode: str) -> None:
        """Metrics of the student's own forward (none here; GKD logs SFT's token metrics)."""

    @torch.no_grad()
    def _log_distillation_metrics(self, student: Any, teacher: Any, divergence_N: torch.Tensor, mode: str) -> None:
        """Token-weighted means over every process: the divergence and the student-teacher log-ratio of the tokens."""
        log_ratio_N = student.logps_N.detach() - teacher.logps_N
        totals = torch.stack([divergence_N.sum(), log_ratio_N.sum(), torch.tensor(float(divergence_N.numel()))])
        totals = self.accelerator.gather(totals.to(self.accelerator.device).reshape(1, 3)).sum(dim=0)
        if totals[2] > 0:
            self.log_metric("divergence", totals[0] / totals[2], mode)
            self.log_metric("student_teacher_log_ratio", totals[1] / totals[2], mode)

    # ------------------------------------------------------------------ checkpoint state
    def extra_state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self._coin.getstate()
        coin = {"version": version, "internal": list(internal), "gauss": gauss}
        return {
            **super().extra_state_dict(),
            "distillation": {"coin": coin, "generation": self._generation_rng.state_dict()},
        }

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        super().load_extra_state_dict(state)
        coin = state["distillation"]["coin"]
        self._coin.setstate((int(coin["version"]), tuple(int(v) for v in coin["internal"]), coin["gauss"]))
        self._generation_rng.load_state_dict(state["distillation"]["generation"])


def sampling_params(args: Any, max_tokens: int, top_p: float = 1.0, top_k: int = 0, **fields: Any) -> SamplingParams:
    """The [`SamplingParams`] of a distillation config (`temperature`, plus the fields the config has)."""
    kwargs = dict(getattr(args, "generation_kwargs", None) or {})
    return SamplingParams(
        temperature=args.temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, generation_kwargs=kwargs,
        **fields,
    )  # fmt: skip


def split_last_turn(dataset: Any, num_proc: int | None = None) -> Any:
    """Conversations (`messages`) as prompt-completion rows: every turn but the last is the prompt, the last (an
    assistant turn) the completion. Other datasets are returned unchanged."""
    from ..data_utils import get_dataset_column_names

    if "messages" not in get_dataset_column_names(dataset):
        return dataset

    def split(example: dict[str, Any]) -> dict[str, Any]:
        messages = example["messages"]
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise ValueError(
                "Distillation splits each conversation into a prompt (every turn but the last) and a completion (the "
                "last turn), so conversations need at least two turns and must end with an assistant turn."
            )
        return {"prompt": messages[:-1], "completion": messages[-1:]}

    kwargs = {"num_proc": num_proc} if num_proc and hasattr(dataset, "num_rows") else {}
    return dataset.map(split, remove_columns=["messages"], **kwargs)
