"""A distillation teacher scored by a `trl vllm-serve` server (`DistillationConfig(use_teacher_server=True)`).

No teacher model is loaded in the training processes: each micro-batch's `[prompt | completion]` sequences go to
the server's `/get_sequence_logprobs/` endpoint ([`~trl.generation.vllm_client.VLLMClient.get_sequence_logprobs`]),
which answers, at every completion position, the teacher's top-k log-probs at the distillation temperature and the
log-prob of the token in the sequence. That is all the top-k divergence of [`~trl.losses.distillation_loss`] reads
from the teacher when its support is made of those tokens, which is what the config allows with a server:

- `beta = 0` (forward KL), any `loss_top_k = K > 0`: the support is the teacher's top-K tokens;
- `beta > 0`, `loss_top_k = 1`, `reverse_kl_top_1_mode="sampled"`: the token in the sequence, plus the teacher's
  top-1 token when `beta < 1`.

With the tail bucket (`loss_add_tail`), the teacher's mass outside the support is `1 - sum(support)`, known from the
same numbers. So the loss equals the one of a local teacher with the same weights (up to float rounding), and so
does its gradient, which only flows through the student.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ..losses.distillation import OFF_SUPPORT_LOGP, restrict_to_support, token_generalized_jsd
from .model_utils import get_tokenizer


class TeacherServerScores(NamedTuple):
    """What the teacher server answered for the N completion tokens of a micro-batch (row-major order).

    Args:
        logps_N (`torch.Tensor` of shape `[N]`):
            The teacher's log-prob of each token in the sequences, at the distillation temperature.
        support_ids_N_S (`torch.Tensor` of shape `[N, S]`):
            Tokens whose teacher log-prob is known at each position (the support of the divergence).
        support_logps_N_S (`torch.Tensor` of shape `[N, S]`):
            Their log-probs; `-inf` where the server had fewer tokens to give.
    """

    logps_N: torch.Tensor
    support_ids_N_S: torch.Tensor
    support_logps_N_S: torch.Tensor


class TeacherServer:
    """The teacher behind `teacher_model_server_url`: scores completions through a
    [`~trl.generation.vllm_client.VLLMClient`].

    Args:
        client ([`~trl.generation.vllm_client.VLLMClient`]):
            A client of the server (the API key comes from `$TRL_VLLM_SERVER_API_KEY`).
        beta (`float`):
            The config's `beta`: which tokens make the support (see the module docstring).
        top_k (`int`):
            The config's `loss_top_k`.
        temperature (`float`):
            The server scores `log_softmax(logits / temperature)`.
    """

    def __init__(self, client: Any, beta: float, top_k: int, temperature: float):
        self.client = client
        self.beta = beta
        self.top_logprobs = top_k if beta == 0.0 else 1
        self.temperature = temperature

    @classmethod
    def connect(cls, args: Any) -> TeacherServer:
        """Connect to `args.teacher_model_server_url`, waiting at most `args.vllm_server_timeout` seconds."""
        from ..generation.vllm_client import VLLMClient

        url = args.teacher_model_server_url
        try:
            client = VLLMClient(base_url=url, connection_timeout=args.vllm_server_timeout)
        except ConnectionError as error:
            raise ConnectionError(
                f"use_teacher_server=True, but no teacher server answers at teacher_model_server_url={url!r}: "
                f"{error} Start one with `trl vllm-serve --model <teacher>` at that address, or set "
                "use_teacher_server=False and pass the teacher as `teacher_model=`."
            ) from error
        return cls(client, args.beta, args.loss_top_k, args.temperature)

    def check_server(self, processing_class: Any) -> None:
        """Raise unless the served tokenizer is the student's (when the server reports its vocabulary) and the
        server can score at the distillation temperature (vLLM's `prompt_logprobs` are at temperature 1)."""
        from ..generation.client_wire import vocabulary_fingerprint

        info = self.client.get_server_info()
        if info.get("backend") == "vllm" and self.temperature != 1.0:
            raise ValueError(
                f"temperature={self.temperature}: the vLLM teacher server at {self.client.base_url} scores sequences "
                "at temperature 1 only. Set temperature=1.0, or serve the teacher with `trl vllm-serve --backend "
                "transformers`."
            )
        served = info.get("vocabulary")
        if served is None:
            return
        student = vocabulary_fingerprint(get_tokenizer(processing_class))
        if served != student:
            raise ValueError(
                f"The teacher server at {self.client.base_url} serves a tokenizer of {served.get('size')} tokens "
                f"that differs from the student's ({student['size']} tokens). Distillation compares the two "
                "next-token distributions token by token, so serve a teacher that shares the student's tokenizer "
                "(the same model family), or distil from a local teacher."
            )

    @torch.no_grad()
    def score(self, prompt_ids_B_P, prompt_mask_B_P, completion_ids_B_C, completion_mask_B_C) -> TeacherServerScores:
        """Score the completions of a micro-batch (left-padded prompts, right-padded completions)."""
        sequences, prompt_lengths = [], []
        for prompt, prompt_mask, completion, mask in zip(
            prompt_ids_B_P, prompt_mask_B_P, completion_ids_B_C, completion_mask_B_C
        ):
            prompt = prompt[prompt_mask.bool()].tolist()
            sequences.append(prompt + completion[mask.bool()].tolist())
            prompt_lengths.append(len(prompt))
        answer = self.client.get_sequence_logprobs(
            sequences, prompt_lengths, top_logprobs=self.top_logprobs, temperature=self.temperature
        )
        device = completion_ids_B_C.device

        def flat(key: str, width: int, dtype: torch.dtype) -> torch.Tensor:
            values = [position for row in answer[key] for position in row]
            return torch.tensor(values, dtype=dtype, device=device).reshape(-1, width)

        actual_ids, actual_logps = flat("actual_token_ids", 1, torch.long), flat("actual_logprobs", 1, torch.float32)
        if self.beta == 1.0:  # reverse KL: the sampled token alone
            ids, logps = actual_ids, actual_logps
        else:
            top_ids = flat("logprob_token_ids", self.top_logprobs, torch.long)
            top_logps = flat("logprobs", self.top_logprobs, torch.float32)
            if self.beta == 0.0:  # forward KL: the teacher's top-k
                ids, logps = top_ids, top_logps
            else:  # top-1 JSD: the teacher's top-1 and the sampled token
                ids, logps = torch.cat([top_ids, actual_ids], 1), torch.cat([top_logps, actual_logps], 1)
        expected = int(completion_mask_B_C.sum())
        if actual_ids.shape[0] != expected:
            raise RuntimeError(
                f"The teacher server scored {actual_ids.shape[0]} completion tokens, not {expected}: it does not "
                "implement `/get_sequence_logprobs/` as `trl vllm-serve` does."
            )
        return TeacherServerScores(actual_logps[:, 0], ids, logps)


def teacher_server_divergence(
    student_logits_N_V: torch.Tensor,
    teacher: TeacherServerScores,
    beta: float,
    temperature: float = 1.0,
    add_tail: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k generalised JSD of [`~trl.losses.distillation_loss`] on the support the teacher server gave.

    Tokens the student's logits do not cover (a teacher with a wider, padded embedding) leave the support; their
    teacher mass stays in the tail bucket.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: the mean divergence over the N positions and the detached `[N]` values.
    """
    student_logps_N_V = F.log_softmax(student_logits_N_V.float() / temperature, dim=-1)
    ids_N_S = teacher.support_ids_N_S.to(student_logps_N_V.device)
    logps_N_S = teacher.support_logps_N_S.to(student_logps_N_V)
    known_N_S = torch.isfinite(logps_N_S) & (ids_N_S < student_logps_N_V.shape[-1]) & (ids_N_S >= 0)
    ids_N_S = ids_N_S.masked_fill(~known_N_S, 0)
    hits_N_V = torch.zeros_like(student_logps_N_V, dtype=torch.int32).scatter_add_(1, ids_N_S, known_N_S.int())
    off_support = torch.full_like(student_logps_N_V, OFF_SUPPORT_LOGP)
    teacher_N_V = off_support.scatter_reduce(1, ids_N_S, logps_N_S.masked_fill(~known_N_S, OFF_SUPPORT_LOGP), "amax")
    support_N_V = hits_N_V > 0
    divergence_N = token_generalized_jsd(
        restrict_to_support(student_logps_N_V, support_N_V, add_tail),
        restrict_to_support(teacher_N_V, support_N_V, add_tail),
        beta,
    )
    return divergence_N.sum() / max(divergence_N.numel(), 1), divergence_N.detach()
