"""`trl vllm-serve` and `VLLMClient`, for real over loopback with the transformers backend on CPU."""

import copy
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl.generation import SamplingParams, TransformersBackend, VLLMServerBackend, build_generation_backend
from trl.generation.client_wire import vocabulary_fingerprint
from trl.generation.vllm_client import (
    VLLMClient,
    decode_tensor,
    encode_tensor,
    parse_logprobs,
    pil_to_base64,
    to_openai_messages,
)
from trl.scripts.vllm_serve import chunk_list, make_parser, resolve_backend
from trl.testing import get_tiny_model_path

from .testing_utils import free_port, run_accelerate


PROMPT_IDS = [[5, 17, 300, 42, 9], [801, 33]]


def start_server(model_path: str, timeout: float = 240.0) -> tuple[subprocess.Popen, int]:
    """Start `python -m trl.scripts.vllm_serve --backend transformers` on a free loopback port; return it and its port."""
    command = [sys.executable, "-m", "trl.scripts.vllm_serve", "--backend", "transformers", "--model", model_path]
    command += ["--host", "127.0.0.1", "--port", "0", "--log_level", "warning", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([process.stdout], [], [], 0.5)
        if readable:
            line = process.stdout.readline()
            lines.append(line)
            if "trl vllm-serve ready" in line:
                port = int(line.rsplit(":", 1)[1])
                # Keep draining the pipe so the server never blocks on a full stdout.
                threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
                return process, port
        if process.poll() is not None:
            break
    process.kill()
    raise RuntimeError("The server did not start:\n" + "".join(lines))


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGCONT)
        process.kill()
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def model_path():
    return get_tiny_model_path("qwen2")


@pytest.fixture(scope="module")
def model(model_path):
    return AutoModelForCausalLM.from_pretrained(model_path).eval()


@pytest.fixture(scope="module")
def tokenizer(model_path):
    return AutoTokenizer.from_pretrained(model_path)


@pytest.fixture(scope="module")
def server(model_path):
    process, port = start_server(model_path)
    yield f"http://127.0.0.1:{port}"
    stop(process)


@pytest.fixture
def client(server):
    client = VLLMClient(base_url=server, connection_timeout=10, request_timeout=30)
    yield client
    client.close_communicator()


def local_result(model, prompt_ids, sampling):
    return TransformersBackend(model).generate(prompt_ids, sampling)


def perturbed_copy(model, scale=0.5, seed=0):
    perturbed = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in perturbed.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    return perturbed


def post(url, payload):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


# --------------------------------------------------------------------------------------------- no server needed


def test_parser_accepts_both_spellings_and_has_the_reference_defaults():
    parser = make_parser()
    (args,) = parser.parse_args_and_config(
        ["--model", "m", "--tensor-parallel-size", "2", "--data_parallel_size", "3"]
    )
    assert (args.model, args.tensor_parallel_size, args.data_parallel_size) == ("m", 2, 3)
    assert (args.host, args.port, args.gpu_memory_utilization, args.dtype) == ("0.0.0.0", 8000, 0.9, "auto")
    assert (args.max_model_len, args.enable_prefix_caching, args.enforce_eager) == (None, None, False)
    assert (args.kv_cache_dtype, args.trust_remote_code, args.log_level) == ("auto", False, "info")
    assert (args.vllm_model_impl, args.backend) == ("vllm", None)
    (args,) = parser.parse_args_and_config(
        ["--model", "m", "--gpu-memory-utilization", "0.5", "--backend", "transformers"]
    )
    assert (args.gpu_memory_utilization, args.backend) == (0.5, "transformers")


def test_trl_cli_runs_vllm_serve_in_process(monkeypatch):
    from trl import cli
    from trl.scripts import vllm_serve

    if cli.find_command("vllm-serve") is None:  # the entry the CLI table gets (see docs/vllm_integration.md)
        entry = cli.Command("vllm-serve", "trl.scripts.vllm_serve", "Serve a model for online training.", False)
        monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, entry))
    received = []
    monkeypatch.setattr(vllm_serve, "main", lambda *args: received.append(args))
    cli.main(["vllm_serve", "--model", "m", "--backend", "transformers", "--port", "0", "--enforce-eager", "true"])
    ((script_args,),) = received
    assert (script_args.model, script_args.backend, script_args.port, script_args.enforce_eager) == (
        "m",
        "transformers",
        0,
        True,
    )


def test_unknown_flags_are_kept_for_the_vllm_engine(monkeypatch):
    from trl import cli
    from trl.generation.server_args import engine_kwargs_from_flags
    from trl.scripts import vllm_serve

    received = []
    monkeypatch.setattr(vllm_serve, "main", lambda *args: received.append(args))
    flags = ["--max-num-seqs", "64", "--enable-chunked-prefill", "--quantization=awq", "--no-enable-sleep-mode"]
    cli.main(["vllm-serve", "--model", "m", "--port", "0", *flags])
    ((script_args,),) = received
    assert (script_args.model, script_args.port, script_args.vllm_engine_args) == ("m", 0, flags)
    assert engine_kwargs_from_flags(flags) == {
        "max_num_seqs": 64,
        "enable_chunked_prefill": True,
        "quantization": "awq",
        "enable_sleep_mode": False,
    }
    with pytest.raises(ValueError, match="vLLM engine flags"):
        engine_kwargs_from_flags(["64"])


def test_unknown_flags_reach_vllm_llm(monkeypatch):
    from trl.generation import server_engines

    created = []
    fake_vllm = SimpleNamespace(LLM=lambda **kwargs: created.append(kwargs))
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    for name in ("VLLM_DP_RANK", "VLLM_DP_RANK_LOCAL", "VLLM_DP_SIZE", "VLLM_DP_MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    (args,) = make_parser().parse_args_and_config(["--model", "m", "--max-num-seqs", "8", "--dtype", "float16"])
    connection = SimpleNamespace(send=lambda message: None, recv=lambda: {"type": "shutdown"})
    server_engines._vllm_worker(args, 0, 12345, connection)
    (kwargs,) = created
    assert (kwargs["model"], kwargs["max_num_seqs"], kwargs["dtype"]) == ("m", 8, "float16")
    assert (kwargs["model_impl"], kwargs["gpu_memory_utilization"], kwargs["max_model_len"]) == ("vllm", 0.9, None)
    assert kwargs["worker_extension_cls"] == "trl.generation.server_engines.WeightSyncWorkerExtension"
    assert {"revision", "tensor_parallel_size", "enforce_eager", "kv_cache_dtype", "trust_remote_code"} <= set(kwargs)


def test_transformers_backend_refuses_unknown_flags_before_loading():
    from trl.generation.server_app import build_app

    (args,) = make_parser().parse_args_and_config(
        ["--model", "not-loaded", "--backend", "transformers", "--max-num-seqs", "8"]
    )
    with pytest.raises(ValueError, match=r"does not know --max-num-seqs 8.*--backend transformers"):
        build_app(args)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_default_backend_without_vllm_names_the_transformers_backend():
    with pytest.raises(ImportError, match="--backend transformers"):
        resolve_backend(None)
    with pytest.raises(ImportError, match=r"pip install trl\[vllm\]"):
        resolve_backend("vllm")
    assert resolve_backend("transformers") == "transformers"


@pytest.mark.parametrize(
    ("items", "n", "expected"),
    [
        ([1, 2, 3, 4, 5, 6], 2, [[1, 2, 3], [4, 5, 6]]),
        ([1, 2, 3, 4, 5, 6], 4, [[1, 2], [3, 4], [5], [6]]),
        ([1, 2, 3], 5, [[1], [2], [3], [], []]),
        (["a", "b"], 1, [["a", "b"]]),
        ([], 2, [[], []]),
    ],
)
def test_chunk_list(items, n, expected):
    assert chunk_list(items, n) == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
@pytest.mark.parametrize("shape", [(3, 4), (), (0, 2)])
def test_tensor_encoding_round_trip(dtype, shape):
    tensor = ((torch.arange(torch.Size(shape).numel(), dtype=torch.float64) - 5) / 3).reshape(shape).to(dtype)
    payload = json.loads(json.dumps(encode_tensor(tensor)))
    decoded = decode_tensor(payload)
    assert decoded.dtype == dtype and decoded.shape == tensor.shape
    assert torch.equal(decoded, tensor)


def test_decode_tensor_rejects_bad_payloads():
    with pytest.raises(ValueError, match="Unknown dtype"):
        decode_tensor({"dtype": "torch.nope", "shape": [1], "data": ""})
    good = encode_tensor(torch.ones(4))
    with pytest.raises(ValueError, match="shape"):
        decode_tensor({**good, "shape": [5]})


def test_parse_logprobs_completions_and_chat_formats():
    completions = {
        "tokens": ["token_id:7", "token_id:9"],
        "token_logprobs": [-0.5, float("nan")],
        "top_logprobs": [{"token_id:3": -0.1, "token_id:7": -0.5}, None],
    }
    logprobs, token_ids = parse_logprobs([completions])
    assert token_ids == [[[3, 7], [9]]]
    assert logprobs == [[[-0.1, -0.5], [None]]]
    chat = {
        "content": [
            {"token": "token_id:4", "logprob": -1.0, "top_logprobs": [{"token": "token_id:8", "logprob": -2.0}]}
        ]
    }
    assert parse_logprobs([chat]) == ([[[-1.0, -2.0]]], [[[4, 8]]])
    assert parse_logprobs([None]) == (None, None)
    with pytest.raises(ValueError, match="return_tokens_as_token_ids"):
        parse_logprobs([{"tokens": ["hello"], "token_logprobs": [-1.0], "top_logprobs": None}])


class _FakeImage:
    def save(self, buffer, format):  # noqa: A002 (PIL's signature)
        buffer.write(f"{format}-bytes".encode())


def test_images_become_base64_data_urls():
    assert pil_to_base64(_FakeImage()) == "UE5HLWJ5dGVz"  # base64 of b"PNG-bytes"
    messages = [
        {"role": "user", "content": [{"type": "image", "image": _FakeImage()}, {"type": "text", "text": "hi"}]}
    ]
    converted = to_openai_messages(messages)
    assert converted[0]["content"][0] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,UE5HLWJ5dGVz"},
    }
    assert converted[0]["content"][1] == {"type": "text", "text": "hi"}
    assert messages[0]["content"][0]["type"] == "image"  # the input is left alone


def test_client_fails_fast_when_no_server_listens():
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"trl vllm-serve"):
        VLLMClient(base_url=url, connection_timeout=1.0)
    assert time.monotonic() - start < 5
    with pytest.raises(ConnectionError, match=url):
        VLLMServerBackend(base_url=url, server_timeout=0.5)


# ------------------------------------------------------------------------------------------------- live server


def test_vllm_engine_refuses_to_score_at_another_temperature():
    """vLLM's `prompt_logprobs` ignore the temperature: the engine says so instead of answering temperature-1 scores."""
    from trl.generation.server_engines import RequestError, VLLMEngine

    engine = object.__new__(VLLMEngine)  # no worker: the check comes first
    with pytest.raises(RequestError, match="temperature 1 only.*--backend transformers"):
        engine.sequence_logprobs([[1, 2, 3]], [1], 1, 0.5)


def test_health_world_size_and_info(server, client, model_path, tokenizer):
    with urllib.request.urlopen(f"{server}/health/", timeout=5) as response:
        assert json.loads(response.read()) == {"status": "ok"}
    assert client.get_world_size() == 1
    info = client.get_server_info()
    assert (info["backend"], info["weight_transport"], info["model"]) == ("transformers", "http", model_path)
    assert info["vocabulary"] == vocabulary_fingerprint(tokenizer)
    assert info["vocabulary"]["size"] == len(tokenizer.get_vocab())
    assert VLLMClient(base_url=server + "/").base_url == server  # a trailing slash is fine


def test_generate_matches_local_transformers_generation(client, model, tokenizer):
    answer = client.generate(["hello world", "the cat"], n=2, temperature=0, max_tokens=6)
    prompt_ids = [tokenizer("hello world")["input_ids"], tokenizer("the cat")["input_ids"]]
    expected = local_result(model, prompt_ids, SamplingParams(n=2, temperature=0, max_tokens=6, return_logprobs=True))
    assert answer["prompt_ids"] == prompt_ids
    assert answer["completion_ids"] == expected.completion_ids
    assert answer["finish_reasons"] == ["length"] * 4
    torch.testing.assert_close(torch.tensor(answer["logprobs"]), torch.tensor(expected.logprobs), atol=1e-5, rtol=0)


def test_generate_from_token_ids_with_sampling_options(client, model):
    answer = client.generate(PROMPT_IDS, n=3, temperature=1.0, top_k=1, max_tokens=5, truncate_prompt_tokens=2)
    greedy = local_result(model, [p[-2:] for p in PROMPT_IDS], SamplingParams(n=3, temperature=0, max_tokens=5))
    assert answer["prompt_ids"] == [p[-2:] for p in PROMPT_IDS]
    assert answer["completion_ids"] == greedy.completion_ids  # top_k=1 sampling is greedy
    seeded = [client.generate(PROMPT_IDS, n=2, max_tokens=5, generation_kwargs={"seed": 7}) for _ in range(2)]
    assert seeded[0]["completion_ids"] == seeded[1]["completion_ids"]
    overridden = client.generate(PROMPT_IDS, temperature=1.0, max_tokens=5, generation_kwargs={"temperature": 0})
    assert (
        overridden["completion_ids"]
        == local_result(model, PROMPT_IDS, SamplingParams(temperature=0, max_tokens=5)).completion_ids
    )
    assert client.generate(PROMPT_IDS, max_tokens=3, logprobs=None)["logprobs"] is None


def test_bad_requests_are_reported_not_ignored(client, server):
    with pytest.raises(ValueError, match=r"HTTP 400.*Unknown generation_kwargs \['stop'\]"):
        client.generate(PROMPT_IDS, generation_kwargs={"stop": ["\n"]})
    with pytest.raises(ValueError, match="needs `--backend vllm`"):
        client.generate(PROMPT_IDS, guided_decoding_regex="[a-z]+")
    with pytest.raises(ValueError, match="sampled token's log-prob"):
        client.generate(PROMPT_IDS, logprobs=5)
    with pytest.raises(ValueError, match=r"does not take \['bogus'\]"):
        client._post("/generate/", {"prompts": ["x"], "bogus": 1})
    with pytest.raises(ValueError, match="HTTP 404: No endpoint POST /nope/"):
        client._post("/nope/", {})


def test_chat_renders_the_template(client, model, tokenizer):
    conversation = [{"role": "user", "content": "What is 2 + 2?"}]
    answer = client.chat([conversation, conversation], temperature=0, max_tokens=5)
    rendered = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert answer["prompt_ids"] == [prompt_ids, prompt_ids]
    expected = local_result(model, [prompt_ids], SamplingParams(temperature=0, max_tokens=5)).completion_ids[0]
    assert answer["completion_ids"] == [expected, expected]


def test_sequence_logprobs_match_a_forward_pass(client, model):
    sequence, prompt_length = [5, 17, 300, 42, 9, 11, 12], 4
    answer = client.get_sequence_logprobs([sequence, sequence[:5]], [prompt_length, 2], top_logprobs=3)
    with torch.no_grad():
        logps = torch.log_softmax(model(torch.tensor([sequence])).logits[0], dim=-1)
    expected_actual = [logps[p - 1, sequence[p]].item() for p in range(prompt_length, len(sequence))]
    assert answer["actual_token_ids"][0] == [[t] for t in sequence[prompt_length:]]
    torch.testing.assert_close(
        torch.tensor(answer["actual_logprobs"][0])[:, 0], torch.tensor(expected_actual), atol=1e-5, rtol=0
    )
    top = logps[prompt_length - 1 : len(sequence) - 1].topk(3)
    assert answer["logprob_token_ids"][0] == top.indices.tolist()
    torch.testing.assert_close(torch.tensor(answer["logprobs"][0]), top.values, atol=1e-5, rtol=0)
    # The shorter, padded sequence is scored as if alone: positions 2, 3, 4.
    with torch.no_grad():
        short_logps = torch.log_softmax(model(torch.tensor([sequence[:5]])).logits[0], dim=-1)
    expected_short = [short_logps[p - 1, sequence[p]].item() for p in range(2, 5)]
    torch.testing.assert_close(
        torch.tensor(answer["actual_logprobs"][1])[:, 0], torch.tensor(expected_short), atol=1e-5, rtol=0
    )


def test_openai_endpoints(server, model, tokenizer):
    with urllib.request.urlopen(f"{server}/v1/models", timeout=5) as response:
        model_id = json.loads(response.read())["data"][0]["id"]
    prompt_ids = tokenizer("hello world")["input_ids"]
    expected = local_result(model, [prompt_ids], SamplingParams(temperature=0, max_tokens=5, return_logprobs=True))
    completion = post(
        f"{server}/v1/completions",
        {
            "model": model_id,
            "prompt": "hello world",
            "max_tokens": 5,
            "temperature": 0,
            "logprobs": 0,
            "return_tokens_as_token_ids": True,
        },
    )
    assert completion["object"] == "text_completion"
    choice = completion["choices"][0]
    assert choice["text"] == tokenizer.decode(expected.completion_ids[0], skip_special_tokens=True)
    assert choice["finish_reason"] == "length"
    assert completion["usage"] == {
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": 5,
        "total_tokens": len(prompt_ids) + 5,
    }
    logprobs, token_ids = parse_logprobs([choice["logprobs"]])
    assert [ids[0] for ids in token_ids[0]] == expected.completion_ids[0]
    torch.testing.assert_close(
        torch.tensor([lp[0] for lp in logprobs[0]]), torch.tensor(expected.logprobs[0]), atol=1e-5, rtol=0
    )

    messages = [{"role": "user", "content": "hi"}]
    chat = post(
        f"{server}/v1/chat/completions",
        {"model": model_id, "messages": messages, "max_tokens": 4, "temperature": 0, "n": 2},
    )
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    chat_prompt = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    chat_expected = local_result(model, [chat_prompt], SamplingParams(temperature=0, max_tokens=4)).completion_ids[0]
    assert chat["object"] == "chat.completion" and len(chat["choices"]) == 2
    assert chat["choices"][1]["message"] == {
        "role": "assistant",
        "content": tokenizer.decode(chat_expected, skip_special_tokens=True),
    }
    assert chat["usage"]["prompt_tokens"] == len(chat_prompt)
    with pytest.raises(urllib.error.HTTPError) as error:
        post(f"{server}/v1/chat/completions", {"messages": messages, "stream": True})
    assert error.value.code == 400
    with pytest.raises(urllib.error.HTTPError):
        post(f"{server}/v1/completions", {"model": "some-other-model", "prompt": "x"})


def test_weight_update_changes_the_served_model(client, model):
    sampling = SamplingParams(temperature=0, max_tokens=6)
    before = client.generate(PROMPT_IDS, temperature=0, max_tokens=6)["completion_ids"]
    assert before == local_result(model, PROMPT_IDS, sampling).completion_ids
    perturbed = perturbed_copy(model)
    client.init_communicator()
    try:
        client.update_model_params(perturbed)
        client.reset_prefix_cache()
        after = client.generate(PROMPT_IDS, temperature=0, max_tokens=6)["completion_ids"]
        assert after == local_result(perturbed, PROMPT_IDS, sampling).completion_ids
        assert after != before
        name = "model.layers.0.mlp.down_proj.weight"
        with pytest.raises(ValueError, match="shape"):
            client.update_named_param(name, torch.zeros(2, 2))
        with pytest.raises(ValueError, match="no parameter named"):
            client.update_named_param("nope.weight", torch.zeros(2))
    finally:
        client.update_model_params(model)  # the server is shared by the module's tests
    assert client.generate(PROMPT_IDS, temperature=0, max_tokens=6)["completion_ids"] == before
    client.close_communicator()
    client.close_communicator()  # closing twice is harmless


def test_server_backend_generates_and_syncs_weights(server, model):
    sampling = SamplingParams(n=2, temperature=0, max_tokens=5, return_logprobs=True)
    with VLLMServerBackend(base_url=server, server_timeout=10, request_timeout=30) as backend:
        result = backend.generate(PROMPT_IDS, sampling)
        expected = local_result(model, PROMPT_IDS, sampling)
        assert result.completion_ids == expected.completion_ids
        assert result.truncated == [True] * 4
        torch.testing.assert_close(torch.tensor(result.logprobs), torch.tensor(expected.logprobs), atol=1e-5, rtol=0)
        perturbed = perturbed_copy(model, seed=1)
        try:
            backend.sync_weights(perturbed)
            synced = backend.generate(PROMPT_IDS, sampling).completion_ids
            assert synced == local_result(perturbed, PROMPT_IDS, sampling).completion_ids
        finally:
            backend.sync_weights(model)


def test_server_mode_config_builds_a_server_backend(server, model):
    args = SimpleNamespace(use_vllm=True, vllm_mode="server", vllm_server_base_url=server, vllm_server_timeout=5.0)
    with build_generation_backend(args, model) as backend:
        assert isinstance(backend, VLLMServerBackend)
        sampling = SamplingParams(temperature=0, max_tokens=4)
        assert (
            backend.generate(PROMPT_IDS, sampling).completion_ids
            == local_result(model, PROMPT_IDS, sampling).completion_ids
        )


@pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="needs peft")
def test_server_backend_pushes_merged_lora_weights(server, model):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(50)  # a delta large enough to change greedy decoding
    merged = copy.deepcopy(peft_model).merge_and_unload()
    sampling = SamplingParams(temperature=0, max_tokens=6)
    with VLLMServerBackend(base_url=server, server_timeout=10, request_timeout=30) as backend:
        try:
            backend.sync_weights(peft_model)
            served = backend.generate(PROMPT_IDS, sampling).completion_ids
        finally:
            backend.sync_weights(model)
    assert served == local_result(merged, PROMPT_IDS, sampling).completion_ids
    assert served != local_result(model, PROMPT_IDS, sampling).completion_ids


TWO_RANK_SCRIPT = """
import json, sys
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM
from trl.generation import SamplingParams, VLLMServerBackend

url, model_path, out_dir = sys.argv[1:4]
accelerator = Accelerator()
prompts = [[5, 17, 300], [801, 33]] if accelerator.process_index == 0 else [[7, 7, 100]]  # uneven on purpose
backend = VLLMServerBackend(accelerator=accelerator, base_url=url, server_timeout=10, request_timeout=60)
sampling = SamplingParams(n=2, temperature=0, max_tokens=5)
before = backend.generate(prompts, sampling).completion_ids
model = AutoModelForCausalLM.from_pretrained(model_path)
with torch.no_grad():
    model.lm_head.weight.mul_(-1.0)  # the same change on both ranks
backend.sync_weights(model)
after = backend.generate(prompts, sampling).completion_ids
with open(f"{out_dir}/rank-{accelerator.process_index}.json", "w") as file:
    json.dump({"prompts": prompts, "before": before, "after": after}, file)
"""


@pytest.mark.distributed
def test_server_backend_with_two_processes(server, client, model, model_path, tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANK_SCRIPT)
    flipped = copy.deepcopy(model)
    with torch.no_grad():
        flipped.lm_head.weight.mul_(-1.0)
    sampling = SamplingParams(n=2, temperature=0, max_tokens=5)
    try:
        run_accelerate([str(script), server, model_path, str(tmp_path)], num_processes=2, timeout=120)
    finally:
        client.update_model_params(model)  # the server is shared by the module's tests
    for rank in (0, 1):
        outcome = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert outcome["before"] == local_result(model, outcome["prompts"], sampling).completion_ids
        assert outcome["after"] == local_result(flipped, outcome["prompts"], sampling).completion_ids
        assert outcome["after"] != outcome["before"]


def test_wedged_or_killed_server_gives_a_clear_error_quickly(model_path):
    process, port = start_server(model_path)
    url = f"http://127.0.0.1:{port}"
    try:
        client = VLLMClient(base_url=url, connection_timeout=10, request_timeout=2, max_retries=1)
        assert client.generate(PROMPT_IDS, max_tokens=2)["completion_ids"]

        process.send_signal(signal.SIGSTOP)  # wedged: the socket accepts, nothing answers
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=rf"{url}.*within 2 s.*does not answer health checks"):
            client.generate(PROMPT_IDS, max_tokens=2)
        assert time.monotonic() - start < 8
        process.send_signal(signal.SIGCONT)
        assert client.generate(PROMPT_IDS, max_tokens=2)["completion_ids"]

        # Killed in the middle of a long generation.
        outcome = {}

        def long_generation():
            try:
                client.generate(PROMPT_IDS * 8, n=4, max_tokens=400)
            except Exception as error:
                outcome["error"] = error

        worker = threading.Thread(target=long_generation)
        worker.start()
        time.sleep(0.5)
        process.kill()
        start = time.monotonic()
        worker.join(timeout=15)
        assert not worker.is_alive()
        assert isinstance(outcome.get("error"), ConnectionError), outcome
        assert url in str(outcome["error"]) and "trl vllm-serve" in str(outcome["error"])
        assert time.monotonic() - start < 8
        with pytest.raises(ConnectionError, match="trl vllm-serve"):
            client.update_named_param("lm_head.weight", torch.zeros(1))
        with pytest.raises(ConnectionError, match="not up after 1"):
            client.check_server(total_timeout=1, retry_interval=0.2)
    finally:
        stop(process)
