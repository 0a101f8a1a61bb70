"""Generation engines behind `trl vllm-serve`: a transformers model (CPU-friendly, weights updated over HTTP) and
vLLM (GPU; data-parallel worker processes, NCCL weight sync through [`WeightSyncWorkerExtension`])."""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import time
from typing import TYPE_CHECKING

from trl.generation.base import GenerationResult, sanitize_logprob
from trl.generation.server_args import engine_kwargs_from_flags
from trl.generation.vllm_generation import vllm_prompts, vllm_sampling_kwargs
from trl.import_utils import is_vllm_available


if TYPE_CHECKING:
    from trl.generation.server_args import ScriptArguments

logger = logging.getLogger("trl.vllm_serve")


def chunk_list(items: list, n: int) -> list[list]:
    """
    Split `items` into `n` consecutive chunks whose sizes differ by at most one (the first ones are longer).

    Args:
        items (`list`):
            What to split.
        n (`int`):
            Number of chunks (some are empty when `n > len(items)`).

    Example:

    ```python
    >>> chunk_list([1, 2, 3, 4, 5, 6], 4)
    [[1, 2], [3, 4], [5], [6]]
    ```
    """
    size, extra = divmod(len(items), n)
    chunks, start = [], 0
    for index in range(n):
        end = start + size + (1 if index < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


TEXT_ONLY_MODEL = (
    "The served model is a text-only model: it cannot take images. Serve a vision-language model (an "
    "`AutoModelForImageTextToText` checkpoint with its processor), or send prompts without images."
)


class RequestError(ValueError):
    """A request the server cannot serve as asked (answered with HTTP 400 and this message)."""


class EndpointNotFound(LookupError):
    """No endpoint at this method and path (answered with HTTP 404)."""


# ======================================================================================================= engines


def image_prompt_batch(processor, prompt_ids: list[int], images: list, n: int = 1):
    """
    The processor's inputs (`input_ids` with the image placeholders expanded, `pixel_values`, ...) for `n` copies
    of one prompt and its images.

    The prompt is given as token ids holding one image placeholder (`processor.image_token`) per image, as the
    tokenizer renders a chat template; the text they decode to is what the processor expands.

    Args:
        processor ([`~transformers.ProcessorMixin`]):
            The vision-language model's processor.
        prompt_ids (`list[int]`):
            The prompt.
        images (`list[PIL.Image.Image]`):
            Its images, in the order of the placeholders (may be empty).
        n (`int`, *optional*, defaults to `1`):
            Rows of the batch.

    Raises:
        ValueError: When the placeholders do not match the images, or the ids do not survive decoding.
    """
    tokenizer = processor.tokenizer
    text = tokenizer.decode(prompt_ids, skip_special_tokens=False)
    if tokenizer(text, add_special_tokens=False)["input_ids"] != list(prompt_ids):
        raise ValueError(
            "the prompt does not survive decoding and re-encoding, which images need (the processor expands the "
            "image placeholders in text): send it as text."
        )
    placeholder = tokenizer.convert_tokens_to_ids(processor.image_token)
    found = sum(token == placeholder for token in prompt_ids)
    if found != len(images):
        raise ValueError(
            f"{found} image placeholders ({processor.image_token!r}) for {len(images)} images: render the prompt "
            "with the tokenizer's chat template, one placeholder per image (not the processor's expanded ids)."
        )
    if not images:
        return processor(text=[text] * n, add_special_tokens=False, return_tensors="pt")
    return processor(text=[text] * n, images=[images] * n, add_special_tokens=False, return_tensors="pt")


class TransformersEngine:
    """
    Serves a transformers model (CPU, or one GPU when available); weights arrive in the HTTP body.

    Args:
        args ([`ScriptArguments`]):
            The server arguments.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The model's tokenizer (for EOS and padding ids).
    """

    backend = "transformers"
    weight_transport = "http"
    world_size = 1

    def __init__(self, args: ScriptArguments, tokenizer):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

        from trl.generation.transformers_backend import TransformersBackend
        from trl.generation.vllm_client import parse_dtype
        from trl.trainer.vision_models import is_vision_language_config, load_processor

        if args.tensor_parallel_size != 1 or args.data_parallel_size != 1:
            raise ValueError(
                "`--backend transformers` serves one model copy: leave `--tensor_parallel_size` and "
                "`--data_parallel_size` at 1, or use `--backend vllm`."
            )
        _warn_vllm_only_arguments(args)
        dtype = "auto" if args.dtype == "auto" else parse_dtype(args.dtype)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        load = {"revision": args.revision, "trust_remote_code": args.trust_remote_code}
        # A vision-language checkpoint is served with its processor, so that prompts may carry images.
        vision = is_vision_language_config(AutoConfig.from_pretrained(args.model, **load))
        self.processor = load_processor(args.model, **load) if vision else None
        auto_class = AutoModelForImageTextToText if vision else AutoModelForCausalLM
        self.model = auto_class.from_pretrained(args.model, dtype=dtype, **load).to(device)
        self.model.eval()
        self.accepts_images = vision
        eos = _as_list(self.model.generation_config.eos_token_id) + _as_list(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        self.generator = TransformersBackend(self.model, pad_token_id=pad, eos_token_id=sorted(set(eos)))
        text_config = self.model.config.get_text_config()  # a vision-language config keeps it in its text part
        self.max_model_len = args.max_model_len or getattr(text_config, "max_position_embeddings", None)
        self.vocab_size = self.model.get_input_embeddings().num_embeddings

    def generate(self, prompt_ids, sampling, images=None, regex=None, deadline=None) -> GenerationResult:
        """`images`: `None` or one list of PIL images per prompt, whose ids hold one image placeholder per image."""
        with_images = images is not None and any(images)
        if with_images and not self.accepts_images:
            raise RequestError(TEXT_ONLY_MODEL)
        if regex is not None:
            raise RequestError("`guided_decoding_regex` needs `--backend vllm`.")
        self._check_length(map(len, prompt_ids), sampling)
        batches = self._image_batches(prompt_ids, images, sampling.n) if with_images else None
        if deadline is not None:  # stop decoding at the request's deadline (the server then answers 504)
            time_limit = max(deadline - time.monotonic(), 0.01)
            sampling = dataclasses.replace(
                sampling, generation_kwargs={**sampling.generation_kwargs, "max_time": time_limit}
            )
        try:
            if batches is None:
                return self.generator.generate(prompt_ids, sampling)
            return self._generate_with_images(prompt_ids, sampling, batches)
        except (TypeError, ValueError) as error:  # bad generation_kwargs and the like
            raise RequestError(f"`generation_kwargs`: {error}") from error

    def _check_length(self, prompt_lengths, sampling) -> None:
        if self.max_model_len is not None and max(prompt_lengths) + sampling.max_tokens > self.max_model_len:
            raise RequestError(
                f"Prompt + `max_tokens` exceeds the model length ({self.max_model_len}); lower `max_tokens` or "
                "`truncate_prompt_tokens`."
            )

    def _image_batches(self, prompt_ids, images, n: int) -> list:
        """The processor's batch of each prompt (`n` copies of it with its images), checked."""
        batches = []
        for index, (ids, row_images) in enumerate(zip(prompt_ids, images)):
            try:
                batches.append(image_prompt_batch(self.processor, ids, row_images, n))
            except ValueError as error:
                raise RequestError(f"`prompts[{index}]`: {error}") from None
        return batches

    def _generate_with_images(self, prompt_ids, sampling, inputs: list) -> GenerationResult:
        """One `generate` call per prompt (its `n` rows together) on the processor's `inputs` for its images."""
        import torch

        from trl.generation.base import cut_at_eos
        from trl.generation.transformers_backend import sampled_logprobs

        extra = dict(sampling.generation_kwargs)
        seed = extra.pop("seed", None)
        config = self.generator.generation_config(sampling, extra)
        eos = set(self.generator.eos_token_ids)
        self._check_length([batch["input_ids"].shape[1] for batch in inputs], sampling)
        completions, reasons, logprobs = [], [], []
        device = next(self.model.parameters()).device
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            for batch in inputs:
                batch = batch.to(device)
                output = self.model.generate(**batch, generation_config=config)
                generated = output.sequences[:, batch["input_ids"].shape[1] :]
                cut = [cut_at_eos(row, eos, config.max_new_tokens) for row in generated.tolist()]
                completions += [row for row, _ in cut]
                reasons += [reason for _, reason in cut]
                if sampling.return_logprobs:
                    temperature = 1.0 if sampling.greedy else sampling.temperature
                    logprobs += sampled_logprobs(output.logits, generated, temperature, [len(r) for r, _ in cut])
        return GenerationResult(
            completion_ids=completions,
            finish_reasons=reasons,
            logprobs=logprobs if sampling.return_logprobs else None,
            prompt_ids=[list(ids) for ids in prompt_ids],
        )

    def sequence_logprobs(self, sequences, prompt_lengths, top_logprobs, temperature) -> dict[str, list]:
        import torch

        device = next(self.model.parameters()).device
        # Right padding keeps every sequence at positions 0..len-1 (a plain forward does not shift position ids
        # for left padding).
        longest = max(len(sequence) for sequence in sequences)
        input_ids = torch.full((len(sequences), longest), self.generator.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, sequence in enumerate(sequences):
            input_ids[row, : len(sequence)] = torch.as_tensor(sequence)
            attention_mask[row, : len(sequence)] = 1
        with torch.no_grad():
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        top = min(top_logprobs, logits.shape[-1])
        answer = {"logprobs": [], "logprob_token_ids": [], "actual_logprobs": [], "actual_token_ids": []}
        for row, (sequence, prompt_length) in enumerate(zip(sequences, prompt_lengths)):
            # Logits at position p - 1 predict the token at position p.
            logps = torch.log_softmax(logits[row, prompt_length - 1 : len(sequence) - 1].float() / temperature, -1)
            values, ids = logps.topk(top, dim=-1)
            actual_ids = torch.as_tensor(sequence[prompt_length:], device=logps.device, dtype=torch.long)
            actual = logps.gather(-1, actual_ids[:, None])
            pad = top_logprobs - top
            answer["logprobs"].append([[sanitize_logprob(v) for v in pos] + [None] * pad for pos in values.tolist()])
            answer["logprob_token_ids"].append([pos + [0] * pad for pos in ids.tolist()])
            answer["actual_logprobs"].append([[sanitize_logprob(v[0])] for v in actual.tolist()])
            answer["actual_token_ids"].append([[token] for token in sequence[prompt_length:]])
        return answer

    def init_communicator(self, **_) -> None:
        """Nothing to set up: weights arrive in the request body."""

    def update_named_params(self, params: list[dict]) -> None:
        from trl.generation.vllm_client import decode_tensor

        updates = []
        for index, entry in enumerate(params):  # check everything before changing anything
            if "data" not in entry:
                raise RequestError(
                    "This server uses `--backend transformers`: send the tensor bytes in `data` (VLLMClient does so "
                    "after `init_communicator()`)."
                )
            target = self._parameter(entry["name"])
            try:
                tensor = decode_tensor(entry)
            except ValueError as error:  # bad base64, dtype or size
                raise RequestError(f"`params[{index}]` ({entry['name']}): {error}") from None
            if tuple(tensor.shape) != tuple(target.shape):
                raise RequestError(f"{entry['name']}: shape {list(tensor.shape)} != served {list(target.shape)}.")
            updates.append((target, tensor))
        import torch

        with torch.no_grad():
            for target, tensor in updates:
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))

    def _parameter(self, name: str):
        try:
            return self.model.get_parameter(name)
        except AttributeError:
            try:
                return self.model.get_buffer(name)
            except AttributeError:
                raise RequestError(f"The served model has no parameter named {name!r}.") from None

    def reset_prefix_cache(self) -> None:
        """No cache outlives a request."""

    def close_communicator(self) -> None:
        """Nothing to tear down."""

    def shutdown(self) -> None:
        """Nothing to stop."""


class VLLMEngine:
    """
    `data_parallel_size` worker processes, each holding a `vllm.LLM` over `tensor_parallel_size` GPUs, driven
    through pipes. Weights arrive by NCCL broadcast from the trainer ([`WeightSyncWorkerExtension`]).

    Args:
        args ([`ScriptArguments`]):
            The server arguments.
    """

    backend = "vllm"
    weight_transport = "nccl"
    accepts_images = True  # the vLLM engine refuses them for a text-only model

    def __init__(self, args: ScriptArguments):
        if not is_vllm_available():
            raise ImportError(VLLM_MISSING)
        self.world_size = args.tensor_parallel_size * args.data_parallel_size
        self.max_model_len = args.max_model_len
        self.vocab_size = None  # the tokenizer's length bounds token ids
        master_port = _free_port()
        context = multiprocessing.get_context("spawn")
        self.connections, self.processes = [], []
        for rank in range(args.data_parallel_size):
            parent, child = context.Pipe()
            process = context.Process(target=_vllm_worker, args=(args, rank, master_port, child))
            process.start()
            self.connections.append(parent)
            self.processes.append(process)
        for connection in self.connections:
            message = connection.recv()
            if message.get("status") != "ready":
                raise RuntimeError(f"A vLLM worker failed to start: {message}")

    def _call(self, method: str, per_worker_args: list[tuple], fire_and_forget: bool = False) -> list:
        kind = "fire_and_forget" if fire_and_forget else "call"
        for connection, args in zip(self.connections, per_worker_args):
            connection.send({"type": kind, "method": method, "args": args})
        if fire_and_forget:
            return []
        results = [connection.recv() for connection in self.connections]
        for result in results:
            if isinstance(result, dict) and "worker_error" in result:
                raise RuntimeError(f"vLLM worker error: {result['worker_error']}")
        return results

    def _broadcast(self, method: str, *args, fire_and_forget: bool = False) -> list:
        return self._call(method, [args] * len(self.connections), fire_and_forget)

    def generate(self, prompt_ids, sampling, images=None, regex=None, deadline=None) -> GenerationResult:
        prompts = vllm_prompts(prompt_ids, images)
        kwargs = vllm_sampling_kwargs(sampling)
        chunks = chunk_list(prompts, len(self.connections))
        # A worker with nothing to do still joins the data-parallel step, on a placeholder it then drops.
        padded = [chunk or [{"prompt": "<placeholder>"}] for chunk in chunks]
        results = self._call("trl_generate", [(chunk, kwargs, regex) for chunk in padded])
        rows = [row for chunk, result in zip(chunks, results) if chunk for row in result]
        return GenerationResult(
            completion_ids=[c["ids"] for row in rows for c in row["completions"]],
            finish_reasons=[c["finish_reason"] for row in rows for c in row["completions"]],
            logprobs=[c["logprobs"] for row in rows for c in row["completions"]] if sampling.return_logprobs else None,
            prompt_ids=[row["prompt_ids"] for row in rows],
        )

    def sequence_logprobs(self, sequences, prompt_lengths, top_logprobs, temperature) -> dict[str, list]:
        if temperature != 1.0:
            # vLLM computes `prompt_logprobs` from the raw logits: a temperature would be silently ignored.
            raise RequestError(
                f"`temperature` = {temperature}: vLLM scores sequences (`prompt_logprobs`) at temperature 1 only. "
                "Distil with temperature=1.0 from this server, or serve the teacher with `--backend transformers`."
            )
        items = list(zip(sequences, prompt_lengths))
        chunks = chunk_list(items, len(self.connections))
        padded = [chunk or [([0, 0], 1)] for chunk in chunks]
        results = self._call("trl_sequence_logprobs", [(chunk, top_logprobs, temperature) for chunk in padded])
        kept = [result for chunk, result in zip(chunks, results) if chunk]
        return {key: [row for result in kept for row in result[key]] for key in kept[0]} if kept else {}

    def init_communicator(self, host: str, port: int, world_size: int, client_device_uuid: str) -> None:
        args = (host, port, world_size, client_device_uuid)
        self._broadcast("collective_rpc", "init_communicator", args, fire_and_forget=True)

    def update_named_param(self, name: str, dtype: str, shape: list[int]) -> None:
        # The workers then block in the NCCL broadcast that the client starts once this request returns.
        self._broadcast("collective_rpc", "update_named_param", (name, dtype, tuple(shape)), fire_and_forget=True)

    def update_named_params(self, params: list[dict]) -> None:
        raise RequestError("A vLLM server receives weights by NCCL: call `/update_named_param/` once per tensor.")

    def reset_prefix_cache(self) -> None:
        self._broadcast("reset_prefix_cache")

    def close_communicator(self) -> None:
        self._broadcast("collective_rpc", "close_communicator", (), fire_and_forget=True)

    def shutdown(self) -> None:
        for connection in self.connections:
            connection.send({"type": "shutdown"})
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()


# `vllm.LLM` arguments taken from the server arguments of the same name.
_LLM_ARGUMENTS = ("model", "revision", "tensor_parallel_size", "gpu_memory_utilization", "enforce_eager", "dtype")
_LLM_ARGUMENTS += ("enable_prefix_caching", "kv_cache_dtype", "max_model_len", "trust_remote_code")


def _vllm_worker(args: ScriptArguments, dp_rank: int, master_port: int, connection) -> None:
    """One data-parallel worker: builds its `vllm.LLM`, then serves commands from the pipe until shutdown."""
    os.environ["VLLM_DP_RANK"] = str(dp_rank)
    os.environ["VLLM_DP_RANK_LOCAL"] = str(dp_rank)
    os.environ["VLLM_DP_SIZE"] = str(args.data_parallel_size)
    os.environ["VLLM_DP_MASTER_PORT"] = str(master_port)
    from vllm import LLM

    # Flags trl does not define go to the engine as they are, and win over trl's own settings of the same name.
    engine_kwargs = {name: getattr(args, name) for name in _LLM_ARGUMENTS}
    engine_kwargs.update(
        model_impl=args.vllm_model_impl,
        worker_extension_cls="trl.generation.server_engines.WeightSyncWorkerExtension",
    )
    engine_kwargs.update(engine_kwargs_from_flags(args.vllm_engine_args or []))
    llm = LLM(**engine_kwargs)
    connection.send({"status": "ready"})
    handlers = {"trl_generate": _worker_generate, "trl_sequence_logprobs": _worker_sequence_logprobs}
    while True:
        try:
            command = connection.recv()
        except (EOFError, KeyboardInterrupt):
            break
        if command["type"] == "shutdown":
            break
        method, args = command["method"], command["args"]
        try:
            if method in handlers:
                result = handlers[method](llm, *args)
            elif method == "collective_rpc":  # args: (extension method, its arguments)
                result = llm.collective_rpc(args[0], args=tuple(args[1]))
            else:
                result = getattr(llm, method)(*args)
        except Exception as error:  # reported to the HTTP process, which answers 500
            logger.exception("vLLM worker %d failed on %s", dp_rank, command["method"])
            result = {"worker_error": f"{type(error).__name__}: {error}"}
        if command["type"] == "call":
            connection.send(result)


def _worker_generate(llm, prompts: list[dict], sampling_kwargs: dict, regex: str | None) -> list[dict]:
    from vllm import SamplingParams as VLLMSamplingParams

    from trl.generation.vllm_generation import guided_decoding_kwargs, sampled_token_logprobs

    kwargs = dict(sampling_kwargs)
    if regex is not None:
        kwargs.update(guided_decoding_kwargs(regex))
    outputs = llm.generate(prompts, VLLMSamplingParams(**kwargs), use_tqdm=False)
    with_logprobs = kwargs.get("logprobs") is not None
    return [
        {
            "prompt_ids": list(output.prompt_token_ids),
            "completions": [
                {
                    "ids": list(sample.token_ids),
                    "finish_reason": "length" if sample.finish_reason == "length" else "stop",
                    "logprobs": [sanitize_logprob(v) for v in sampled_token_logprobs(sample)]
                    if with_logprobs
                    else None,
                }
                for sample in output.outputs
            ],
        }
        for output in outputs
    ]


def _worker_sequence_logprobs(llm, items: list, top_logprobs: int, temperature: float) -> dict[str, list]:
    from vllm import SamplingParams as VLLMSamplingParams

    # vLLM caps `prompt_logprobs` at its `max_logprobs` (20 unless the server is started with `--max_logprobs N`).
    params = VLLMSamplingParams(max_tokens=1, temperature=temperature, prompt_logprobs=top_logprobs)
    outputs = llm.generate([{"prompt_token_ids": list(seq)} for seq, _ in items], params, use_tqdm=False)
    answer = {"logprobs": [], "logprob_token_ids": [], "actual_logprobs": [], "actual_token_ids": []}
    for output, (sequence, prompt_length) in zip(outputs, items):
        rows = {key: [] for key in answer}
        for position in range(prompt_length, len(sequence)):
            entries = output.prompt_logprobs[position] or {}
            ranked = sorted(entries.items(), key=lambda item: item[1].rank)[:top_logprobs]
            pad = top_logprobs - len(ranked)
            rows["logprobs"].append([sanitize_logprob(lp.logprob) for _, lp in ranked] + [None] * pad)
            rows["logprob_token_ids"].append([int(token) for token, _ in ranked] + [0] * pad)
            actual = entries.get(sequence[position])
            rows["actual_logprobs"].append([sanitize_logprob(actual.logprob) if actual is not None else None])
            rows["actual_token_ids"].append([sequence[position]])
        for key in answer:
            answer[key].append(rows[key])
    return answer


class WeightSyncWorkerExtension:
    """
    Mixed into each vLLM worker (`worker_extension_cls`): joins the trainer's NCCL group and loads the tensors
    the trainer broadcasts. Runs inside vLLM's worker processes, where `self.device` and `self.model_runner` exist.
    """

    communicator = None
    client_rank = None

    def init_communicator(self, host: str, port: int, world_size: int, client_device_uuid: str) -> None:
        import torch
        from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
        from vllm.distributed.parallel_state import get_world_group
        from vllm.distributed.utils import StatelessProcessGroup

        if self.communicator is not None:
            raise RuntimeError("The weight-update group already exists; call `close_communicator` first.")
        if client_device_uuid == str(torch.cuda.get_device_properties(self.device).uuid):
            raise RuntimeError(
                "The trainer and this vLLM worker share a GPU, which NCCL cannot do: run `trl vllm-serve` on GPUs "
                "the trainer does not use (CUDA_VISIBLE_DEVICES)."
            )
        rank = get_world_group().rank
        group = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size)
        self.communicator = PyNcclCommunicator(group, device=self.device)
        self.client_rank = world_size - 1

    def update_named_param(self, name: str, dtype: str, shape: tuple[int, ...]) -> None:
        import torch

        from trl.generation.vllm_client import parse_dtype

        if self.communicator is None:
            raise RuntimeError("Call `init_communicator` before updating weights.")
        weight = torch.empty(shape, dtype=parse_dtype(dtype), device=self.device)
        self.communicator.broadcast(weight, src=self.client_rank)
        self.communicator.group.barrier()
        self.model_runner.model.load_weights(weights=[(name, weight)])

    def close_communicator(self) -> None:
        if self.communicator is not None:
            del self.communicator
            self.communicator = None
            self.client_rank = None


# ================================================================================================ request handling


VLLM_MISSING = "vLLM is not installed. Please install it with `pip install trl[vllm]`."


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def _warn_vllm_only_arguments(args: ScriptArguments) -> None:
    defaults = {
        "gpu_memory_utilization": 0.9,
        "enable_prefix_caching": None,
        "enforce_eager": False,
        "kv_cache_dtype": "auto",
        "vllm_model_impl": "vllm",
    }
    changed = [name for name, default in defaults.items() if getattr(args, name) != default]
    if changed:
        logger.warning("%s only apply to `--backend vllm`; the transformers backend does not use them.", changed)
