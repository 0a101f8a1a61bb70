"""
Load test of `trl vllm-serve` (loopback only, bounded in clients and time; it stops by itself).

`clients` threads send a mix of valid and malformed requests for `duration` seconds to a server on 127.0.0.1:
valid greedy `/generate/`, `/chat/`, `/v1/completions` and `/get_sequence_logprobs/` requests (each answer checked
against the one the same request got before the load started), malformed ones (each must get 400), oversized
bodies (413) and requests without the API key (401). It reports the requests sent, the answers by status, every
unexpected answer, the server's peak RSS and whether it still answers `/health/` at the end.

```bash
python benchmarks/server_load_test.py                   # 50 clients, 60 s, its own tiny-model server
python benchmarks/server_load_test.py --clients 10 --duration 5
```
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter


API_KEY = "load-test-key"
MAX_REQUEST_BYTES = 1 << 20
_PROMPT = [5, 17, 300, 42, 9]

VALID = {
    "generate": ("/generate/", {"prompts": [_PROMPT, [801, 33]], "n": 2, "max_tokens": 4, "temperature": 0}),
    "generate_text": ("/generate/", {"prompts": ["hello world"], "max_tokens": 3, "temperature": 0}),
    "chat": ("/chat/", {"messages": [[{"role": "user", "content": "hi"}]], "max_tokens": 3, "temperature": 0}),
    "v1_completions": ("/v1/completions", {"prompt": "the cat", "max_tokens": 3, "temperature": 0}),
    "sequence_logprobs": (
        "/get_sequence_logprobs/",
        {"sequences": [_PROMPT], "prompt_lengths": [2], "top_logprobs": 2},
    ),
}
MALFORMED = [
    ("/generate/", {"prompts": [[5, -1]]}),
    ("/generate/", {"prompts": [[5, 10**9]]}),
    ("/generate/", {"prompts": [_PROMPT], "max_tokens": "4"}),
    ("/generate/", {"prompts": [_PROMPT], "max_tokens": 2.5}),
    ("/generate/", {"prompts": [_PROMPT], "generation_kwargs": [1]}),
    ("/generate/", {"prompts": [_PROMPT], "truncate_prompt_tokens": -3}),
    ("/generate/", {"prompts": [_PROMPT], "n": 10**6}),
    ("/chat/", {"messages": [[{"content": "no role"}]]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}),
    (
        "/update_named_params/",
        {"params": [{"name": "lm_head.weight", "dtype": "torch.nope", "shape": [1], "data": ""}]},
    ),
    ("/update_named_param/", {"name": "lm_head.weight", "dtype": "torch.float32", "shape": [1], "data": "!!"}),
]


def _request(url: str, path: str, body: dict | None, key: str | None, timeout: float = 120.0) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url + path, data=data, method="POST" if data else "GET", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _comparable(answer: dict) -> str:
    answer = {key: value for key, value in answer.items() if key not in ("id", "created")}
    return json.dumps(answer, sort_keys=True)


def run_load_test(url: str, clients: int = 50, duration: float = 60.0, server_pid: int | None = None) -> dict:
    """
    Send the request mix from `clients` threads for `duration` seconds to the server at `url` (loopback only).

    Args:
        url (`str`):
            `http://127.0.0.1:<port>` of a server started with `--api_key load-test-key`,
            `--max_request_bytes 1048576` and weight updates allowed from loopback.
        clients (`int`, *optional*, defaults to `50`):
            Concurrent clients.
        duration (`float`, *optional*, defaults to `60.0`):
            Seconds of load.
        server_pid (`int` or `None`, *optional*, defaults to `None`):
            The server's process id, to sample its RSS.

    Returns:
        `dict`: `requests`, `by_status` (status -> count), `unexpected` (up to 20 descriptions), `unexpected_count`,
        `peak_rss_mib`, `start_rss_mib`, `alive_at_end`.
    """
    if not url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise ValueError("The load test only runs against a loopback server.")
    expected = {}
    for name, (path, body) in VALID.items():
        status, answer = _request(url, path, body, API_KEY)
        if status != 200:
            raise RuntimeError(f"The server refused the valid {name} request: {status} {answer}")
        expected[name] = _comparable(answer)
    counts, unexpected, lock = Counter(), [], threading.Lock()
    deadline = time.monotonic() + duration
    start_rss = _rss_mib(server_pid) if server_pid else 0.0
    peak = [start_rss]

    def record(status: int, problem: str | None) -> None:
        with lock:
            counts[status] += 1
            if problem:
                unexpected.append(problem)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            kind = rng.random()
            try:
                if kind < 0.5:
                    name = rng.choice(sorted(VALID))
                    status, answer = _request(url, *VALID[name], API_KEY)
                    ok = status == 200 and _comparable(answer) == expected[name]
                    record(status, None if ok else f"{name}: {status} {str(answer)[:200]}")
                elif kind < 0.85:
                    path, body = rng.choice(MALFORMED)
                    status, answer = _request(url, path, body, API_KEY)
                    record(status, None if status == 400 else f"malformed {path}: {status} {str(answer)[:200]}")
                elif kind < 0.93:
                    body = {"prompts": ["x" * (MAX_REQUEST_BYTES + 10)]}
                    status, answer = _request(url, "/generate/", body, API_KEY)
                    record(status, None if status == 413 else f"oversized: {status}")
                else:
                    status, answer = _request(url, "/generate/", VALID["generate"][1], None)
                    record(status, None if status == 401 else f"no key: {status}")
            except Exception as error:  # a dropped connection, a timeout: all unexpected
                record(-1, f"{type(error).__name__}: {error}")

    def sample_memory() -> None:
        while server_pid and time.monotonic() < deadline + 1:
            peak[0] = max(peak[0], _rss_mib(server_pid))
            time.sleep(0.2)

    threads = [threading.Thread(target=client, args=(seed,), daemon=True) for seed in range(clients)]
    threads.append(threading.Thread(target=sample_memory, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=duration + 180)
    alive = _request(url, "/health/", None, API_KEY, timeout=10)[0] == 200
    return {
        "requests": sum(counts.values()),
        "by_status": dict(sorted(counts.items())),
        "unexpected_count": len(unexpected),
        "unexpected": unexpected[:20],
        "start_rss_mib": round(start_rss, 1),
        "peak_rss_mib": round(peak[0], 1),
        "alive_at_end": alive,
    }


def start_server(model: str, extra: list[str] | None = None, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """
    Start `trl vllm-serve --backend transformers` on a free 127.0.0.1 port with the load test's key and limits.

    Args:
        model (`str`):
            Model path.
        extra (`list[str]` or `None`, *optional*, defaults to `None`):
            More server arguments.
        timeout (`float`, *optional*, defaults to `120.0`):
            Seconds to wait for the server to be ready.

    Returns:
        `tuple`: The server process and its URL.
    """
    command = [sys.executable, "-m", "trl.scripts.vllm_serve", "--backend", "transformers", "--model", model]
    command += ["--host", "127.0.0.1", "--port", "0", "--log_level", "warning", "--device", "cpu"]
    command += ["--api_key", API_KEY, "--max_request_bytes", str(MAX_REQUEST_BYTES)]
    command += ["--weight_update_allowed_hosts", "127.0.0.1", *(extra or [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if select.select([process.stdout], [], [], 0.5)[0]:
            line = process.stdout.readline()
            lines.append(line)
            if "trl vllm-serve ready" in line:
                threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
                return process, f"http://127.0.0.1:{int(line.rsplit(':', 1)[1])}"
    process.kill()
    raise RuntimeError("The server did not start:\n" + "".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--model", default=None, help="Model path (default: trl.testing's tiny qwen2).")
    args = parser.parse_args()
    if not 1 <= args.clients <= 200 or not 0 < args.duration <= 600:
        parser.error("Keep it bounded: 1-200 clients, at most 600 s.")
    if args.model is None:
        from trl.testing import get_tiny_model_path

        args.model = get_tiny_model_path("qwen2")
    process, url = start_server(args.model)
    try:
        report = run_load_test(url, args.clients, args.duration, server_pid=process.pid)
    finally:
        process.kill()
        process.wait(timeout=10)
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["unexpected_count"] == 0 and report["alive_at_end"] else 1)


if __name__ == "__main__":
    main()
