"""Generation with images through `trl vllm-serve --backend transformers`, the client, the server backend and the
vLLM prompt construction (offline, CPU, tiny vision-language models from `trl.testing`)."""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from trl.generation import server_validation as check
from trl.generation.base import SamplingParams
from trl.generation.client_wire import encode_prompt_images, pil_to_base64, to_openai_messages
from trl.generation.server_app import build_app
from trl.generation.server_args import ScriptArguments
from trl.generation.server_backend import VLLMServerBackend
from trl.generation.server_engines import RequestError, VLLMEngine
from trl.generation.server_guard import ServerPolicy
from trl.generation.vllm_client import API_KEY_ENV, VLLMClient
from trl.generation.vllm_generation import VLLMGeneration, check_images, vllm_prompts
from trl.testing import get_tiny_model_path, get_tiny_vlm_path, make_tiny_image

from .testing_utils import cpu_generation_server


ARCH = "llava"  # its processor loads with AutoProcessor without torchvision
MAX_TOKENS = 8
API_KEY = "vision-test-key"
RED, BLUE = make_tiny_image((220, 30, 30), (40, 56), seed=1), make_tiny_image((40, 60, 220), (32, 32), seed=2)


def _user(num_images: int, text: str = "What colour is it?", images=None) -> list[dict]:
    parts = [{"type": "image", "image": image} for image in images] if images else [{"type": "image"}] * num_images
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def vlm():
    path = get_tiny_vlm_path(ARCH)
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    return SimpleNamespace(path=path, processor=processor, model=model)


def _prompt(vlm, num_images: int = 1) -> str:
    return vlm.processor.apply_chat_template(_user(num_images), add_generation_prompt=True, tokenize=False)


def _reference(vlm, text: str, images: list) -> list[int]:
    """Greedy completion of the model in-process, on the processor's inputs, cut after the first EOS."""
    inputs = vlm.processor(text=[text], images=[images], return_tensors="pt")
    with torch.no_grad():
        output = vlm.model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)
    return _cut(vlm, output[0, inputs["input_ids"].shape[1] :].tolist())


def _cut(vlm, completion: list[int]) -> list[int]:
    """`completion` up to and including its first EOS token (the server's: the model's and the tokenizer's)."""
    eos = {vlm.processor.tokenizer.eos_token_id, vlm.model.generation_config.eos_token_id}
    ends = [position for position, token in enumerate(completion) if token in eos]
    return completion[: ends[0] + 1] if ends else completion


@pytest.fixture(scope="module")
def server(vlm, tmp_path_factory):
    previous = os.environ.get(API_KEY_ENV)
    os.environ[API_KEY_ENV] = API_KEY  # the server reads the key from the environment it starts with
    try:
        with cpu_generation_server(vlm.path, tmp_path_factory.mktemp("vision_server")) as port:
            client = VLLMClient(base_url=f"http://127.0.0.1:{port}", connection_timeout=60, api_key=API_KEY)
            yield SimpleNamespace(port=port, client=client)
    finally:
        if previous is None:
            os.environ.pop(API_KEY_ENV, None)
        else:
            os.environ[API_KEY_ENV] = previous


@pytest.fixture(scope="module")
def app(vlm):
    """The server's application in-process (no HTTP): for the request checks."""
    return build_app(ScriptArguments(model=vlm.path, backend="transformers", device="cpu"))


# ------------------------------------------------------------------------------------------------ over HTTP


def test_generate_with_an_image_equals_in_process_greedy(vlm, server):
    text = _prompt(vlm)
    answer = server.client.generate([text, text], images=[RED, BLUE], temperature=0.0, max_tokens=MAX_TOKENS, n=2)
    red, blue = _reference(vlm, text, [RED]), _reference(vlm, text, [BLUE])
    assert answer["completion_ids"] == [red, red, blue, blue]
    assert red != blue  # the image reaches the model
    assert len(answer["logprobs"][0]) == len(red)


def test_token_id_prompts_and_several_images_per_prompt(vlm, server):
    text = _prompt(vlm, num_images=2)
    ids = vlm.processor.tokenizer(text)["input_ids"]
    answer = server.client.generate([ids], images=[[BLUE, RED]], temperature=0.0, max_tokens=MAX_TOKENS)
    assert answer["completion_ids"] == [_reference(vlm, text, [BLUE, RED])]
    assert answer["prompt_ids"] == [ids]


def test_chat_with_image_parts_equals_in_process_greedy(vlm, server):
    answer = server.client.chat([_user(1, images=[RED])], temperature=0.0, max_tokens=MAX_TOKENS)
    assert answer["completion_ids"] == [_reference(vlm, _prompt(vlm), [RED])]


def test_server_backend_passes_the_rollout_images(vlm, server):
    backend = VLLMServerBackend(client=server.client)
    tokenizer = vlm.processor.tokenizer
    prompts = [tokenizer(_prompt(vlm))["input_ids"], tokenizer("Hello there")["input_ids"]]
    sampling = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, n=2)
    result = backend.generate(prompts, sampling, images=[[BLUE], None])
    with torch.no_grad():
        text_only = vlm.model.generate(torch.tensor([prompts[1]]), max_new_tokens=MAX_TOKENS, do_sample=False)
    text_completion = _cut(vlm, text_only[0, len(prompts[1]) :].tolist())
    blue = _reference(vlm, _prompt(vlm), [BLUE])
    assert result.completion_ids == [blue, blue, text_completion, text_completion]


def test_images_need_the_api_key(vlm, server):
    body = json.dumps({"prompts": [_prompt(vlm)], "images": [pil_to_base64(RED)], "max_tokens": 2}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/generate/", data=body, headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=30)
    assert error.value.code == 401


def test_a_bad_image_is_a_client_error(vlm, server):
    with pytest.raises(Exception, match="400") as error:
        server.client._post("/generate/", {"prompts": [_prompt(vlm)], "images": ["bm90IGFuIGltYWdl"]})
    assert "not a readable" in str(error.value)


# ------------------------------------------------------------------------------------------------ request checks


def _generate(app, images, prompts=None, **fields):
    body = {"prompts": prompts or [_prompt_text(app)], "images": images, "max_tokens": 2, **fields}
    return app.dispatch("POST", "/generate/", body)


def _prompt_text(app) -> str:
    return app.engine.processor.apply_chat_template(_user(1), add_generation_prompt=True, tokenize=False)


def _png(image) -> str:
    return pil_to_base64(image)


def test_image_count_limit(app, monkeypatch):
    limits = app.dispatch("GET", "/get_server_info/", {})["limits"]
    assert (limits["max_images"], limits["max_image_bytes"], limits["max_image_pixels"]) == (64, 8 * 2**20, 2**24)
    monkeypatch.setattr(app, "policy", ServerPolicy(max_images=1))
    text = _prompt_text(app)
    with pytest.raises(RequestError, match="--max_images"):
        _generate(app, [_png(RED), _png(BLUE)], prompts=[text, text])


def test_image_byte_limit(app, monkeypatch):
    monkeypatch.setattr(app, "policy", ServerPolicy(max_image_bytes=64))
    with pytest.raises(RequestError, match="--max_image_bytes"):
        _generate(app, [_png(RED)])


def test_pixel_limit_is_checked_before_decoding(app, monkeypatch):
    from PIL import Image

    # A 5000 x 4000 flat image compresses to a few kilobytes but decodes to 60 MB: refused by the default limit.
    bomb = Image.new("RGB", (5000, 4000), (1, 2, 3))
    data = _png(bomb)
    assert len(data) < ServerPolicy().max_image_bytes
    with pytest.raises(RequestError, match="5000x4000 pixels.*--max_image_pixels"):
        _generate(app, [data])
    monkeypatch.setattr(app, "policy", ServerPolicy(max_image_pixels=40 * 56 - 1))
    with pytest.raises(RequestError, match="--max_image_pixels"):
        _generate(app, [_png(RED)])


def test_only_still_image_formats_are_decoded(app):
    buffer = io.BytesIO()
    RED.save(buffer, format="TIFF")
    tiff = base64.b64encode(buffer.getvalue()).decode()
    with pytest.raises(RequestError, match="not a readable PNG/JPEG/WEBP/GIF/BMP image"):
        _generate(app, [tiff])
    with pytest.raises(RequestError, match="not valid base64"):
        _generate(app, ["not base64!"])
    truncated = _png(RED)[:200]
    with pytest.raises(RequestError, match="not a readable|not valid base64"):
        _generate(app, [truncated])
    buffer = io.BytesIO()
    RED.save(buffer, format="JPEG")
    jpeg = base64.b64encode(buffer.getvalue()).decode()
    assert len(_generate(app, [f"data:image/jpeg;base64,{jpeg}"])["completion_ids"]) == 1


@pytest.mark.parametrize(
    "images, match",
    [
        ("x", "one entry per prompt"),
        ([_png(RED), None], "one entry per prompt"),
        ([[1]], "a base64 image, a list of them, or null"),
    ],
)
def test_images_field_shape(app, images, match):
    with pytest.raises(RequestError, match=match):
        _generate(app, images)


def test_placeholders_must_match_the_images(app):
    with pytest.raises(RequestError, match=r"^`prompts\[0\]`: 1 image placeholders .* for 2 images"):
        _generate(app, [[_png(RED), _png(BLUE)]])
    expanded = app.engine.processor(text=[_prompt_text(app)], images=[[RED]])["input_ids"][0]
    with pytest.raises(RequestError, match="not the processor's expanded ids"):
        _generate(app, [_png(RED)], prompts=[list(map(int, expanded))])


def test_logprobs_with_images_match_a_forward_pass(vlm, app):
    text = _prompt(vlm)
    answer = _generate(app, [_png(RED)], prompts=[text], temperature=0.0, max_tokens=MAX_TOKENS)
    completion, logprobs = answer["completion_ids"][0], answer["logprobs"][0]
    inputs = vlm.processor(text=[text], images=[[RED]], return_tensors="pt")
    full = torch.cat([inputs["input_ids"], torch.tensor([completion])], dim=1)
    with torch.no_grad():
        logits = vlm.model(input_ids=full, pixel_values=inputs["pixel_values"]).logits[0]
    start = inputs["input_ids"].shape[1] - 1
    expected = torch.log_softmax(logits[start : start + len(completion)], -1)
    expected = expected.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)
    torch.testing.assert_close(torch.tensor(logprobs), expected, atol=1e-4, rtol=1e-4)


def test_openai_chat_completions_take_image_urls(vlm, app):
    body = {"messages": to_openai_messages(_user(1, images=[BLUE])), "max_tokens": MAX_TOKENS, "temperature": 0.0}
    answer = app.dispatch("POST", "/v1/chat/completions", {**body, "return_token_ids": True})
    assert answer["choices"][0]["token_ids"] == _reference(vlm, _prompt(vlm), [BLUE])


def test_text_only_model_refuses_images():
    text_app = build_app(ScriptArguments(model=get_tiny_model_path("qwen2"), backend="transformers", device="cpu"))
    assert text_app.engine.processor is None
    with pytest.raises(RequestError, match="text-only model"):
        text_app.dispatch("POST", "/generate/", {"prompts": ["Hello"], "images": [_png(RED)], "max_tokens": 2})
    chat = {"messages": [to_openai_messages(_user(1, images=[RED]))], "max_tokens": 2}
    with pytest.raises(RequestError, match="text-only model"):
        text_app.dispatch("POST", "/chat/", chat)
    assert len(text_app.dispatch("POST", "/generate/", {"prompts": ["Hello"], "max_tokens": 2})["completion_ids"]) == 1


def test_message_image_parts_are_checked():
    bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://example.com/x.png"}}]}]
    with pytest.raises(RequestError, match="image part"):
        check.messages(bad, "messages[0]")
    good = to_openai_messages(_user(2, images=[RED, BLUE]))
    converted, images = check.split_message_images(check.messages(good, "messages[0]"))
    assert converted[0]["content"][:2] == [{"type": "image"}, {"type": "image"}]
    assert good[0]["content"][0]["type"] == "image_url"  # the request is left alone
    assert images == [f"data:image/png;base64,{_png(RED)}", f"data:image/png;base64,{_png(BLUE)}"]


# ------------------------------------------------------------------------------------------------ client wire


def test_client_encoding_roundtrip():
    encoded = encode_prompt_images([RED, [BLUE, RED], None, []])
    assert encoded[0] == _png(RED) and encoded[2] is None and encoded[3] is None
    assert encode_prompt_images([None, []]) is None and encode_prompt_images(None) is None
    decoded = ServerPolicy().decode_images(check.image_entries(encoded, 4))
    assert [len(row) for row in decoded] == [1, 2, 0, 0]
    for original, image in zip([RED, BLUE, RED], [decoded[0][0], *decoded[1]]):
        assert image.mode == "RGB" and image.size == original.size
        assert image.tobytes() == original.tobytes()  # PNG is lossless


def test_client_generate_payload(monkeypatch):
    client = VLLMClient.__new__(VLLMClient)
    sent = {}
    monkeypatch.setattr(client, "_post", lambda path, payload: sent.update(path=path, payload=payload), raising=False)
    client.generate([[1, 2], [3]], images=[[RED, BLUE], None], max_tokens=3)
    assert sent["path"] == "/generate/"
    assert sent["payload"]["images"] == [[_png(RED), _png(BLUE)], None]
    assert sent["payload"]["prompts"] == [[1, 2], [3]]


# ------------------------------------------------------------------------------------------------ vLLM prompts


class _FakeLLM:
    """Records the prompts of `generate` and answers each with `n` fixed completions."""

    def __init__(self):
        self.prompts = None

    def generate(self, prompts, params, use_tqdm=False):
        self.prompts = prompts
        sample = SimpleNamespace(token_ids=[7, 8], finish_reason="stop", logprobs=None)
        return [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"], outputs=[sample]) for p in prompts]


def test_vllm_prompts_carry_multi_modal_data():
    assert vllm_prompts([[1, 2], [3]]) == [{"prompt_token_ids": [1, 2]}, {"prompt_token_ids": [3]}]
    prompts = vllm_prompts([[1, 2], [3], [4]], [[RED, BLUE], None, []])
    assert prompts[0] == {"prompt_token_ids": [1, 2], "multi_modal_data": {"image": [RED, BLUE]}}
    assert prompts[1:] == [{"prompt_token_ids": [3]}, {"prompt_token_ids": [4]}]
    with pytest.raises(ValueError, match="one entry per prompt"):
        check_images([[RED]], 2)
    with pytest.raises(ValueError, match="list of PIL images"):
        check_images([RED], 1)


def test_colocate_generate_sends_images_to_the_engine(monkeypatch):
    backend = VLLMGeneration.__new__(VLLMGeneration)  # no vLLM here: the engine is a fake
    backend.llm, backend.tp_group, backend.enable_sleep_mode, backend._weights_loaded = _FakeLLM(), None, False, True
    monkeypatch.setattr(backend, "_vllm_sampling", lambda sampling: "params")
    result = backend.generate([[1, 2], [3]], SamplingParams(max_tokens=2), images=[[RED], None])
    assert backend.llm.prompts == [
        {"prompt_token_ids": [1, 2], "multi_modal_data": {"image": [RED]}},
        {"prompt_token_ids": [3]},
    ]
    assert result.completion_ids == [[7, 8], [7, 8]]
    with pytest.raises(ValueError, match="one entry per prompt"):
        backend.generate([[1, 2]], SamplingParams(), images=[None, None])


def test_vllm_server_engine_sends_images_to_its_workers(monkeypatch):
    engine = VLLMEngine.__new__(VLLMEngine)
    engine.connections = [object(), object(), object()]
    calls = []

    def fake_call(method, per_worker_args, fire_and_forget=False):
        calls.append(per_worker_args)
        return [[{"prompt_ids": [0], "completions": [{"ids": [5], "finish_reason": "stop", "logprobs": None}]}]
                for _ in per_worker_args]  # fmt: skip

    monkeypatch.setattr(engine, "_call", fake_call)
    engine.generate([[1, 2], [3]], SamplingParams(max_tokens=2), images=[[RED], []])
    chunks = [args[0] for args in calls[0]]
    assert chunks[0] == [{"prompt_token_ids": [1, 2], "multi_modal_data": {"image": [RED]}}]
    assert chunks[1] == [{"prompt_token_ids": [3]}]
    assert chunks[2] == [{"prompt": "<placeholder>"}]  # an idle worker still joins the step


@pytest.mark.parametrize("arch", ["gemma3", "idefics3", "qwen2-vl"])
def test_each_family_generates_like_in_process(arch):
    if arch == "qwen2-vl":
        pytest.importorskip("torchvision", reason="AutoProcessor builds the Qwen2-VL processor with torchvision only")
    path = get_tiny_vlm_path(arch)
    family_app = build_app(ScriptArguments(model=path, backend="transformers", device="cpu"))
    processor = family_app.engine.processor
    vlm = SimpleNamespace(processor=processor, model=AutoModelForImageTextToText.from_pretrained(path).eval())
    text = processor.apply_chat_template(_user(1), add_generation_prompt=True, tokenize=False)
    body = {"prompts": [text], "images": [_png(RED)], "temperature": 0.0, "max_tokens": MAX_TOKENS}
    answer = family_app.dispatch("POST", "/generate/", body)
    assert answer["completion_ids"] == [_reference(vlm, text, [RED])]


def test_server_backend_gathers_images_with_the_prompts(monkeypatch):
    """Two processes: rank 0 (main) sends both ranks' prompts and images in one request and keeps its slice."""
    import accelerate.utils

    # What the other rank contributes to each gather, in call order: its prompt count, its prompts, its images.
    other_rank = iter([[1], [[9, 9]], [[BLUE]]])

    def gather_object(rows):
        return [*rows, *next(other_rank)]

    monkeypatch.setattr(accelerate.utils, "gather_object", gather_object)
    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", lambda objects, from_process=0: objects)
    sent = {}

    class _Client:
        def generate(self, prompts, images, n, **kwargs):
            sent.update(prompts=prompts, images=images)
            return {"completion_ids": [[i] for i in range(len(prompts) * n)], "logprobs": None,
                    "finish_reasons": ["stop"] * len(prompts) * n}  # fmt: skip

    backend = VLLMServerBackend.__new__(VLLMServerBackend)
    backend.accelerator = SimpleNamespace(num_processes=2, is_main_process=True, process_index=0)
    backend.client, backend.guided_decoding_regex = _Client(), None
    result = backend.generate([[1, 2], [3]], SamplingParams(n=2), images=[None, [RED]])
    assert sent["prompts"] == [[1, 2], [3], [9, 9]]
    assert sent["images"] == [None, [RED], [BLUE]]
    assert result.completion_ids == [[0], [1], [2], [3]]  # this rank's two prompts x n, not the other rank's


def test_the_model_length_counts_the_expanded_image_tokens(vlm, app, monkeypatch):
    text = _prompt(vlm)
    unexpanded = len(vlm.processor.tokenizer(text)["input_ids"])
    expanded = len(vlm.processor(text=[text], images=[[RED]])["input_ids"][0])
    assert expanded > unexpanded
    assert app.engine.max_model_len == 512  # read from the text part of the vision-language config
    monkeypatch.setattr(app.engine, "max_model_len", unexpanded + 2)
    assert len(_generate(app, None, prompts=[text])["completion_ids"]) == 1  # fits without its image
    with pytest.raises(RequestError, match="exceeds the model length"):
        _generate(app, [_png(RED)], prompts=[text])


def test_a_processor_transformers_cannot_build_is_a_clear_startup_error():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("with torchvision the Qwen2-VL processor builds")
    with pytest.raises(ValueError, match="could not build its processor.*torchvision"):
        build_app(ScriptArguments(model=get_tiny_vlm_path("qwen2-vl"), backend="transformers", device="cpu"))
