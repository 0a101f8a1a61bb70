"""`trl vllm-serve` cannot be taken over or wedged: API key, weight-update host allowlist, body and token limits,
400s naming the field, slow clients, sandboxed request chat templates, wedged-engine health. Loopback only."""

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from transformers import AutoTokenizer

from benchmarks.server_load_test import API_KEY, MAX_REQUEST_BYTES, run_load_test, start_server
from trl.generation import SamplingParams
from trl.generation.base import GenerationResult
from trl.generation.server_app import ServerApp, TrlHTTPServer
from trl.generation.server_engines import RequestError
from trl.generation.server_guard import API_KEY_ENV, ServerPolicy, is_loopback
from trl.generation.vllm_client import VLLMClient
from trl.testing import get_tiny_model_path


PROMPT = [5, 17, 300, 42, 9]
RUNAWAY = "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}"


@pytest.fixture(scope="module")
def server():
    extra = ["--read_timeout", "1.5", "--allow_request_chat_template", "true", "--chat_template_timeout", "1"]
    extra += ["--max_n", "8", "--max_prompt_tokens", "64", "--max_total_tokens", "4096"]
    process, url = start_server(get_tiny_model_path("qwen2"), extra)
    yield url, process
    process.kill()
    process.wait(timeout=10)


def call(url, path, body=None, key=API_KEY, method=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url + path, data=data, method=method or ("POST" if data else "GET"))
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def raw_exchange(url, data: bytes, timeout=10.0, pause_after: float = 0.0) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        time.sleep(pause_after)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


GOOD_WEIGHT = {"name": "lm_head.weight", "dtype": "torch.float32", "shape": [1], "data": "AAAAAA=="}
MALFORMED = [
    ("/generate/", {"prompts": [[5, -1]]}, "prompts[0][1]"),
    ("/generate/", {"prompts": [[5, 10**9]]}, "prompts[0][1]"),
    ("/generate/", {"prompts": [[5, True]]}, "prompts[0][1]"),
    ("/generate/", {"prompts": [[]]}, "prompts[0]"),
    ("/generate/", {"prompts": "hello"}, "prompts"),
    ("/generate/", {"prompts": [PROMPT], "max_tokens": "4"}, "max_tokens"),
    ("/generate/", {"prompts": [PROMPT], "max_tokens": 2.5}, "max_tokens"),
    ("/generate/", {"prompts": [PROMPT], "max_tokens": 0}, "max_tokens"),
    ("/generate/", {"prompts": [PROMPT], "n": 9}, "--max_n"),
    ("/generate/", {"prompts": [PROMPT], "temperature": "hot"}, "temperature"),
    ("/generate/", {"prompts": [PROMPT], "top_k": -7}, "top_k"),
    ("/generate/", {"prompts": [PROMPT], "generation_kwargs": [1]}, "generation_kwargs"),
    ("/generate/", {"prompts": [PROMPT], "generation_kwargs": {"max_new_tokens": 10**6}}, "max_new_tokens"),
    ("/generate/", {"prompts": [PROMPT], "generation_kwargs": {"max_tokens": "9"}}, "generation_kwargs.max_tokens"),
    ("/generate/", {"prompts": [PROMPT], "generation_kwargs": {"seed": 1.5}}, "generation_kwargs.seed"),
    ("/generate/", {"prompts": [PROMPT], "truncate_prompt_tokens": -3}, "truncate_prompt_tokens"),
    ("/generate/", {"prompts": [PROMPT], "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    ("/generate/", {"prompts": [PROMPT], "images": "x"}, "images"),
    ("/generate/", {"prompts": [list(range(1, 70))]}, "--max_prompt_tokens"),
    ("/generate/", {"prompts": ["a" * 2000]}, "prompts[0]"),
    ("/generate/", {"prompts": [PROMPT] * 8, "n": 8, "max_tokens": 100}, "--max_total_tokens"),
    ("/chat/", {"messages": [[{"content": "no role"}]]}, "messages[0][0].role"),
    ("/chat/", {"messages": [[{"role": "user", "content": {"a": 1}}]]}, "messages[0][0].content"),
    ("/chat/", {"messages": [["hi"]]}, "messages[0][0]"),
    (
        "/chat/",
        {"messages": [[{"role": "user", "content": "hi"}]], "chat_template_kwargs": [1]},
        "chat_template_kwargs",
    ),
    (
        "/chat/",
        {"messages": [[{"role": "user", "content": "hi"}]], "chat_template_kwargs": {"tokenize": True}},
        "tokenize",
    ),
    ("/chat/", {"messages": [[{"role": "user", "content": "hi"}]], "tools": "x"}, "tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": "3"}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 1.5}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 3, "seed": "s"}, "seed"),
    ("/get_sequence_logprobs/", {"sequences": [[1, -2]], "prompt_lengths": [1]}, "sequences[0][1]"),
    ("/get_sequence_logprobs/", {"sequences": [[1, 2]], "prompt_lengths": ["1"]}, "prompt_lengths[0]"),
    ("/get_sequence_logprobs/", {"sequences": [[1, 2]], "prompt_lengths": [1], "top_logprobs": "5"}, "top_logprobs"),
    ("/update_named_param/", {**GOOD_WEIGHT, "data": "!!not base64"}, "base64"),
    ("/update_named_param/", {**GOOD_WEIGHT, "dtype": "torch.nope"}, "dtype"),
    ("/update_named_param/", {**GOOD_WEIGHT, "dtype": 7}, "dtype"),
    ("/update_named_param/", {**GOOD_WEIGHT, "shape": [-1]}, "shape[0]"),
    ("/update_named_param/", {**GOOD_WEIGHT, "data": "AAA="}, "whole number"),
    ("/update_named_params/", {"params": [{**GOOD_WEIGHT, "name": 3}]}, "params[0].name"),
    ("/update_named_params/", {"params": "x"}, "params"),
    ("/init_communicator/", {"host": "", "port": "80", "world_size": 0, "client_device_uuid": ""}, "port"),
]


@pytest.mark.parametrize(("path", "body", "field"), MALFORMED, ids=[f"{p}:{f}" for p, _, f in MALFORMED])
def test_malformed_requests_are_400_naming_the_field(server, path, body, field):
    status, answer = call(server[0], path, body)
    assert status == 400, answer
    assert field in answer["detail"], answer["detail"]


def test_malformed_http_framing_is_400_or_413(server):
    url = server[0]
    head = f"POST /generate/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
    for length in ("abc", "-5", "1, 2"):
        answer = raw_exchange(url, f"{head}Content-Length: {length}\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 400") and b"Content-Length" in answer, answer
    answer = raw_exchange(url, f"{head}Content-Length: 3\r\n\r\n{{{{x".encode())
    assert answer.startswith(b"HTTP/1.1 400") and b"not valid JSON" in answer
    assert raw_exchange(url, f"{head}Content-Length: 3\r\n\r\nNaN".encode()).startswith(b"HTTP/1.1 400")
    answer = raw_exchange(url, f"{head}Content-Length: {MAX_REQUEST_BYTES + 1}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 413") and b"--max_request_bytes" in answer
    chunked = f"{head}Transfer-Encoding: chunked\r\n\r\n".encode() + b"%x\r\n" % (MAX_REQUEST_BYTES + 1)
    assert raw_exchange(url, chunked + b"x" * 100).startswith(b"HTTP/1.1 413")
    body = json.dumps({"prompts": [PROMPT], "max_tokens": 2}).encode()
    chunked = f"{head}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
    chunked += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    assert raw_exchange(url, chunked).startswith(b"HTTP/1.1 200")
    status, answer = call(url, "/generate/", {"prompts": ["x" * (MAX_REQUEST_BYTES + 10)]})
    assert status == 413 and "--max_request_bytes" in answer["detail"]


def test_api_key_is_required_everywhere_and_the_client_sends_it(server, monkeypatch):
    url = server[0]
    for path, body in [("/health/", None), ("/generate/", {"prompts": [PROMPT]}), ("/update_named_param/", {})]:
        assert call(url, path, body, key=None)[0] == 401
        assert call(url, path, body, key="wrong")[0] == 401
    assert call(url, "/health/")[0] == 200
    with pytest.raises(ConnectionError):
        VLLMClient(base_url=url, request_timeout=10)
    client = VLLMClient(base_url=url, request_timeout=10, api_key=API_KEY)
    assert len(client.generate([PROMPT], n=2, max_tokens=2)["completion_ids"]) == 2
    monkeypatch.setenv(API_KEY_ENV, API_KEY)
    assert VLLMClient(base_url=url, request_timeout=10).get_world_size() == 1


def _read_until_closed(sock: socket.socket) -> bytes:
    # The answer may arrive in several segments (headers, then body): read until the server closes.
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_slow_half_sent_body_times_out_and_the_server_stays_responsive(server):
    url = server[0]
    host, port = url.removeprefix("http://").split(":")
    start = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        request = (
            f"POST /generate/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: 500\r\n\r\n"
        )
        sock.sendall(request.encode() + b'{"prompts": [')
        assert call(url, "/health/")[0] == 200  # answered while the slow client holds its connection
        answer = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408") and b"--read_timeout" in answer, answer
    assert time.monotonic() - start < 12
    with socket.create_connection((host, int(port)), timeout=20) as sock:  # headers never finished
        sock.sendall(b"POST /generate/ HTTP/1.1\r\nHost: x\r\n")
        assert sock.recv(65536) == b""  # closed after --read_timeout
    assert call(url, "/generate/", {"prompts": [PROMPT], "max_tokens": 2})[0] == 200


def test_request_chat_template_is_sandboxed_and_time_limited(server):
    url = server[0]
    conversation = [{"role": "user", "content": "hi"}]
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{{ eos_token }}"
    status, answer = call(url, "/chat/", {"messages": [conversation], "chat_template": template, "max_tokens": 2})
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_model_path("qwen2"))
    expected = tokenizer(f"<user>hi{tokenizer.eos_token}", add_special_tokens=False)["input_ids"]
    assert status == 200 and answer["prompt_ids"] == [expected]
    outcome = {}
    worker = threading.Thread(
        target=lambda: outcome.update(
            answer=call(url, "/chat/", {"messages": [conversation], "chat_template": RUNAWAY})
        )
    )
    start = time.monotonic()
    worker.start()
    time.sleep(0.3)
    assert call(url, "/health/") == (200, {"status": "ok"})  # the engine is free meanwhile
    assert call(url, "/generate/", {"prompts": [PROMPT], "max_tokens": 2})[0] == 200
    worker.join(timeout=20)
    status, answer = outcome["answer"]
    assert status == 400 and "chat_template" in answer["detail"] and "longer than 1" in answer["detail"]
    assert time.monotonic() - start < 8
    for bad in ["{{ ''.__class__.__mro__ }}", "{{ 'a' * 10**10 }}", "{% for %}"]:
        status, answer = call(url, "/chat/", {"messages": [conversation], "chat_template": bad})
        assert status == 400 and "chat_template" in answer["detail"], answer
    status, answer = call(url, "/chat/", {"messages": [conversation], "chat_template": template, "max_tokens": 2})
    assert status == 200  # a fresh sandbox replaced the killed one


# ---------------------------------------------------------------------------------- in-process, fake engines


class FakeEngine:
    backend, weight_transport, world_size, max_model_len, vocab_size = "transformers", "http", 1, 512, None

    def __init__(self, delay: float = 0.0):
        self.delay, self.updates = delay, []

    def generate(self, prompt_ids, sampling, **kwargs):
        time.sleep(self.delay)
        completions = [[1] * sampling.max_tokens for _ in prompt_ids for _ in range(sampling.n)]
        return GenerationResult(completions, ["length"] * len(completions), prompt_ids=prompt_ids)

    def update_named_params(self, params):
        self.updates.append(params)

    def init_communicator(self, **kwargs):
        pass

    def close_communicator(self):
        pass

    def reset_prefix_cache(self):
        pass

    def shutdown(self):
        pass


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(get_tiny_model_path("qwen2"))


def serve(app):
    server = TrlHTTPServer(("127.0.0.1", 0), app)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_health_reports_a_wedged_engine(tokenizer):
    app = ServerApp(FakeEngine(delay=2.5), tokenizer, "fake", ServerPolicy(request_timeout=0.5))
    server, url = serve(app)
    try:
        outcome = {}
        worker = threading.Thread(target=lambda: outcome.update(answer=call(url, "/generate/", {"prompts": [PROMPT]})))
        worker.start()
        time.sleep(0.2)
        assert call(url, "/health/", key=None) == (200, {"status": "ok"})  # busy, not yet past the timeout
        time.sleep(0.6)
        status, answer = call(url, "/health/", key=None)
        assert status == 503 and answer["status"] == "wedged" and "--request_timeout" in answer["detail"]
        status, answer = call(url, "/generate/", {"prompts": [PROMPT]}, key=None)
        assert status == 503 and "busy" in answer["detail"]  # waited for the engine past its own timeout
        worker.join(timeout=10)
        status, answer = outcome["answer"]
        assert status == 504 and "--request_timeout" in answer["detail"]
        assert call(url, "/health/", key=None) == (200, {"status": "ok"})
    finally:
        server.shutdown()
        server.server_close()


def test_weight_updates_are_restricted_to_the_allowed_hosts(tokenizer):
    engine = FakeEngine()
    app = ServerApp(engine, tokenizer, "fake", ServerPolicy(weight_update_allowed_hosts=["10.9.9.9", "10.1.0.0/16"]))
    server, url = serve(app)
    try:
        for path in ("/update_named_param/", "/update_named_params/", "/init_communicator/", "/close_communicator/"):
            status, answer = call(url, path, {"params": []}, key=None)
            assert status == 403 and "--weight_update_allowed_hosts" in answer["detail"]
        assert engine.updates == []
        assert call(url, "/generate/", {"prompts": [PROMPT], "max_tokens": 2}, key=None)[0] == 200
    finally:
        server.shutdown()
        server.server_close()
    app = ServerApp(engine, tokenizer, "fake", ServerPolicy(weight_update_allowed_hosts=["localhost"]))
    server, url = serve(app)
    try:
        assert call(url, "/update_named_params/", {"params": []}, key=None)[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_request_chat_templates_are_off_by_default(tokenizer):
    app = ServerApp(FakeEngine(), tokenizer, "fake")
    body = {"messages": [[{"role": "user", "content": "hi"}]], "chat_template": "{{ messages }}"}
    with pytest.raises(RequestError, match="--allow_request_chat_template"):
        app.dispatch("POST", "/chat/", body)
    assert app.dispatch("POST", "/chat/", {"messages": body["messages"], "max_tokens": 2})["completion_ids"]


def test_policy_defaults_key_from_environment_and_exposure_warning(monkeypatch, capsys):
    from trl.scripts.vllm_serve import make_parser

    (args,) = make_parser().parse_args_and_config(["--model", "m"])
    policy = ServerPolicy.from_args(args)
    assert (policy.api_key, policy.max_request_bytes, policy.max_n, policy.request_timeout) == (None, 2**24, 256, 600)
    assert (args.allow_request_chat_template, args.weight_update_allowed_hosts, args.host) == (False, None, "0.0.0.0")
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert ServerPolicy.from_args(args).api_key == "from-env"
    (args,) = make_parser().parse_args_and_config(["--model", "m", "--weight_update_allowed_hosts", "10.0.0.1", "::1"])
    assert args.weight_update_allowed_hosts == ["10.0.0.1", "::1"]
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    ServerPolicy().warn_if_exposed("127.0.0.1")
    assert "WITHOUT AN API KEY" not in capsys.readouterr().err
    ServerPolicy().warn_if_exposed("0.0.0.0")
    assert "WITHOUT AN API KEY" in capsys.readouterr().err
    ServerPolicy(api_key="k").warn_if_exposed("0.0.0.0")
    assert "WITHOUT AN API KEY" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="--max_n"):
        ServerPolicy(max_n=0)


def test_sampling_checks_do_not_convert_silently(tokenizer):
    app = ServerApp(FakeEngine(), tokenizer, "fake")
    sampling = app.sampling_from_request({"n": 2.0, "temperature": 0, "generation_kwargs": {"top_k": 5}}, False)
    assert sampling == SamplingParams(n=2, temperature=0.0, top_k=5)
    with pytest.raises(RequestError, match="`n`"):
        app.sampling_from_request({"n": True}, False)


def test_short_load(server):
    url, process = server
    report = run_load_test(url, clients=10, duration=4, server_pid=process.pid)
    assert report["unexpected_count"] == 0, report["unexpected"]
    assert report["alive_at_end"] and report["by_status"].get(200, 0) > 0 and report["by_status"].get(400, 0) > 0
    assert report["peak_rss_mib"] - report["start_rss_mib"] < 500
