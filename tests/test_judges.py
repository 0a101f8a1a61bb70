"""Judges: the interfaces, AllTrueJudge, PairRM (with a stand-in llm_blender), the network judges against a local stub
server on 127.0.0.1 (answers, malformed replies, timeouts, the request cap) and RewardModelJudge."""

import json
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import trl
from trl.import_utils import is_openai_available
from trl.judges import (
    DEFAULT_PAIRWISE_SYSTEM_PROMPT,
    AllTrueJudge,
    BaseBinaryJudge,
    BasePairwiseJudge,
    HfPairwiseJudge,
    OpenAIPairwiseJudge,
    PairRMJudge,
    RewardModelJudge,
    get_judge,
)


# ------------------------------------------------------------------------------------------- the stub server
class StubServer:
    """An OpenAI-style chat-completions server on 127.0.0.1. `mode`: "shorter" (answers the index of the shorter
    response), "garbage" (answers "maybe"), "malformed" (a body that is not JSON), "slow" (sleeps 5 s)."""

    def __init__(self):
        self.mode = "shorter"
        self.requests: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                content = body["messages"][0]["content"]
                stub.requests.append(content)
                if stub.mode == "slow":
                    time.sleep(5)
                if stub.mode == "malformed":
                    payload = b"{not json"
                else:
                    first = content.split("## Answer 0\n\n")[1].split("\n\n## Answer 1")[0]
                    second = content.split("## Answer 1\n\n")[1].split("\n\n## Your verdict")[0]
                    answer = "maybe" if stub.mode == "garbage" else str(int(len(second) < len(first)))
                    payload = json.dumps({
                        "id": "x", "object": "chat.completion", "created": 0, "model": body.get("model", "stub"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": answer}}],
                    }).encode()  # fmt: skip
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def server():
    stub = StubServer()
    yield stub
    stub.httpd.shutdown()


@pytest.fixture(autouse=True)
def reset(server, monkeypatch):
    server.mode, server.requests[:] = "shorter", []
    # The test session runs with HF_HUB_OFFLINE=1; the HF judge only talks to the local stub here.
    monkeypatch.setattr("huggingface_hub.constants.is_offline_mode", lambda: False)


PROMPTS = ["Say hi.", "Name a colour."]
PAIRS = [["hello there my friend", "hi"], ["red", "a deep shade of blue"]]


# The OpenAI judge talks to the stub through the real `openai` client (in the `test` and `judges` extras); where it
# is not installed those tests skip, and the HF judge and the ImportError message are still tested.
needs_openai = pytest.mark.skipif(not is_openai_available(), reason="needs the openai client (pip install openai)")


def openai_judge(server, **kwargs):
    return OpenAIPairwiseJudge("stub", base_url=server.url + "/v1", api_key="none", max_retries=0, **kwargs)


def network_judge(kind, server, timeout=5):
    if kind == "openai":
        return openai_judge(server, timeout=timeout)
    return HfPairwiseJudge(server.url, token="none", timeout=timeout)


JUDGE_KINDS = [pytest.param("openai", marks=needs_openai), "hf"]


# -------------------------------------------------------------------------------------------------- interfaces
def test_names_at_every_path():
    import trl.trainer.judges as trainer_judges
    from trl.experimental import judges as experimental_judges

    for name in ("BaseJudge", "BasePairwiseJudge", "PairRMJudge", "HfPairwiseJudge", "AllTrueJudge"):
        assert getattr(trl, name) is getattr(trainer_judges, name) is getattr(experimental_judges, name)
    assert trl.OpenAIPairwiseJudge is OpenAIPairwiseJudge and trl.BaseRankJudge.__abstractmethods__


def test_a_custom_pairwise_judge_and_the_pair_checks():
    class PreferShorter(BasePairwiseJudge):
        def judge(self, prompts, completions, shuffle_order=True, return_scores=False):
            return [int(len(b) < len(a)) for a, b in completions]

    assert PreferShorter().judge(PROMPTS, PAIRS) == [1, 0]
    with pytest.raises(TypeError):
        BasePairwiseJudge()
    with pytest.raises(ValueError, match="two completions per prompt"):
        RewardModelJudge(lambda completions, **kwargs: [0.0] * len(completions)).judge(["p"], [["only one"]])
    with pytest.raises(ValueError, match="2 prompts but 1 pairs"):
        RewardModelJudge(lambda completions, **kwargs: [0.0] * len(completions)).judge(PROMPTS, PAIRS[:1])


class Fixed(BaseBinaryJudge):
    def __init__(self, values):
        self.values = values

    def judge(self, prompts, completions, gold_completions=None, shuffle_order=True):
        return list(self.values)


def test_all_true_judge():
    judge = AllTrueJudge([Fixed([1, 1, 0, 1]), Fixed([1, 0, 0, -1])])
    assert judge.judge(["p"] * 4, ["c"] * 4) == [1, 0, 0, -1]
    with pytest.raises(ValueError, match="return 0, 1 or -1"):
        AllTrueJudge([Fixed([2])]).judge(["p"], ["c"])
    with pytest.raises(ValueError, match="at least one"):
        AllTrueJudge([])


# ------------------------------------------------------------------------------------------------------ PairRM
def test_pair_rm_needs_llm_blender(monkeypatch):
    monkeypatch.setattr("trl.judges.is_llm_blender_available", lambda: False)
    with pytest.raises(ImportError, match="pip install llm-blender"):
        PairRMJudge()


def test_pair_rm_ranks_and_scores_with_unflipping(monkeypatch):
    class Blender:  # stands in for llm_blender.Blender: scores are completion lengths (longer is better)
        def loadranker(self, model, **kwargs):
            self.model = model

        def rank(self, prompts, candidates, return_scores=False, disable_tqdm=True):
            scores = [[float(len(c)) for c in pair] for pair in candidates]
            if return_scores:
                return scores
            return [[1, 2] if a >= b else [2, 1] for a, b in scores]

    monkeypatch.setitem(sys.modules, "llm_blender", types.SimpleNamespace(Blender=Blender))
    monkeypatch.setattr("trl.judges.is_llm_blender_available", lambda: True)
    judge = PairRMJudge()
    assert judge.blender.model == "llm-blender/PairRM"
    for shuffle in (False, True):
        assert judge.judge(PROMPTS, PAIRS, shuffle_order=shuffle) == [0, 1]
    probabilities = judge.judge(PROMPTS[:1], [["aaa", "a"]], shuffle_order=True, return_scores=True)
    assert probabilities[0] == pytest.approx(torch.tensor(2.0).sigmoid().item())


# --------------------------------------------------------------------------------------------- network judges
@needs_openai
@pytest.mark.parametrize("shuffle", [False, True])
def test_openai_judge_against_the_stub(server, shuffle):
    judge = openai_judge(server)
    assert judge.judge(PROMPTS, PAIRS, shuffle_order=shuffle) == [1, 0]
    assert judge.judge(PROMPTS, PAIRS, return_scores=True) == [1.0, 0.0]
    # The request is the shared template filled with the pair (in the shown order).
    assert server.requests[0].startswith(DEFAULT_PAIRWISE_SYSTEM_PROMPT.split("{prompt}")[0])


def test_hf_judge_against_the_stub(server):
    judge = HfPairwiseJudge(server.url, token="none", timeout=5)
    assert judge.judge(PROMPTS, PAIRS) == [1, 0]
    custom = HfPairwiseJudge(server.url, token="none", system_prompt="Q {prompt}\n\n## Answer 0\n\n{response0}\n\n"
                             "## Answer 1\n\n{response1}\n\n## Your verdict")  # fmt: skip
    assert custom.judge(PROMPTS[:1], PAIRS[:1], shuffle_order=False) == [1]
    assert server.requests[-1].startswith("Q Say hi.")
    with pytest.raises(ValueError, match="placeholder"):
        HfPairwiseJudge(server.url, system_prompt="no placeholders")


@pytest.mark.parametrize("kind", JUDGE_KINDS)
@pytest.mark.parametrize("mode", ["garbage", "malformed"])
def test_unreadable_replies_give_minus_one(server, mode, kind):
    server.mode = mode
    with pytest.warns(UserWarning, match="-1"):
        assert network_judge(kind, server).judge(PROMPTS, PAIRS) == [-1, -1]


@pytest.mark.parametrize("kind", JUDGE_KINDS)
def test_a_timeout_gives_minus_one_quickly(server, kind):
    server.mode = "slow"
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="Timeout|timed out" if kind == "openai" else "-1"):
        assert network_judge(kind, server, timeout=0.5).judge(PROMPTS, PAIRS) == [-1, -1]
    assert time.perf_counter() - start < 4


@needs_openai
def test_an_unreachable_server_gives_minus_one():
    judge = OpenAIPairwiseJudge("stub", base_url="http://127.0.0.1:9/v1", api_key="none", max_retries=0, timeout=2)
    with pytest.warns(UserWarning, match="request failed"):
        assert judge.judge(PROMPTS[:1], PAIRS[:1]) == [-1]


@needs_openai
def test_openai_request_cap(server):
    judge = openai_judge(server, max_requests=3)
    assert judge.judge(PROMPTS, PAIRS, shuffle_order=False) == [1, 0]
    with pytest.warns(UserWarning, match="max_requests=3"):
        assert judge.judge(PROMPTS, PAIRS, shuffle_order=False) == [1, -1]
    assert judge.judge(PROMPTS, PAIRS) == [-1, -1] and len(server.requests) == 3


def test_openai_needs_the_client(monkeypatch):
    monkeypatch.setattr("trl.judges.is_openai_available", lambda: False)
    with pytest.raises(ImportError, match="pip install openai"):
        OpenAIPairwiseJudge()


# ------------------------------------------------------------------------------------------ reward-model judge
def test_reward_function_judge():
    judge = RewardModelJudge(lambda completions, **kwargs: [-float(len(c)) for c in completions])
    assert judge.judge(PROMPTS, PAIRS) == [1, 0]
    # σ((r0 − r1)/T): lengths 21 and 2 give σ(−19/2).
    probabilities = RewardModelJudge(lambda completions, **kw: [-float(len(c)) for c in completions], temperature=2.0)
    assert probabilities.judge(PROMPTS[:1], PAIRS[:1], return_scores=True)[0] == pytest.approx(
        torch.tensor(-19 / 2).sigmoid().item()
    )


def test_reward_model_judge_scores_with_the_classifier():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl.testing import get_tiny_model_path

    path = get_tiny_model_path("qwen2-seq-cls")
    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    judge = get_judge("reward_model", reward_model=model, processing_class=tokenizer)
    ranks = judge.judge(PROMPTS, PAIRS)
    with torch.no_grad():
        scores = [
            [model(**tokenizer(p + c, return_tensors="pt")).logits[0, 0].item() for c in pair]
            for p, pair in zip(PROMPTS, PAIRS)
        ]
    assert ranks == [0 if a >= b else 1 for a, b in scores]
    probabilities = judge.judge(PROMPTS, PAIRS, return_scores=True)
    for p, (a, b) in zip(probabilities, scores):
        assert p == pytest.approx(torch.tensor(a - b).sigmoid().item(), abs=1e-5)
    with pytest.raises(ValueError, match="Unknown judge"):
        get_judge("gpt5")
