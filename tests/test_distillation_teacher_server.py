"""DistillationTrainer with `use_teacher_server=True`: the teacher's log-probs come from a `trl vllm-serve --backend
transformers` server on CPU, and no teacher model is loaded by the trainer."""

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl import DistillationConfig, DistillationTrainer
from trl.losses import distillation_loss
from trl.testing import get_tiny_model_path, load_test_dataset
from trl.trainer.distillation_teacher_server import TeacherServer, TeacherServerScores, teacher_server_divergence
from trl.trainer.rollout_utils import policy_inputs

from .testing_utils import cpu_generation_server, free_port, snapshot


STUDENT = get_tiny_model_path("qwen2")
TEACHER = get_tiny_model_path("qwen2", size="small")


def make_config(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path), report_to="none", max_steps=2, per_device_train_batch_size=2, max_length=64,
        max_completion_length=6, logging_steps=1, save_strategy="no", learning_rate=1e-2, seed=0,
        gradient_checkpointing=False, vllm_server_timeout=60,
    )  # fmt: skip
    return DistillationConfig(**{**defaults, **overrides})


def server_config(tmp_path, url, **overrides):
    return make_config(tmp_path, use_teacher_server=True, teacher_model_server_url=url, **overrides)


@pytest.fixture(scope="module")
def teacher_url(tmp_path_factory):
    with cpu_generation_server(TEACHER, tmp_path_factory.mktemp("teacher_server")) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def teacher():
    return AutoModelForCausalLM.from_pretrained(TEACHER).eval()


def test_config_accepts_only_what_a_server_can_score(tmp_path):
    url = "http://127.0.0.1:1"
    args = server_config(tmp_path, url)  # the defaults: reverse KL on the sampled token
    assert (args.use_teacher_server, args.beta, args.loss_top_k) == (True, 1.0, 1)
    server_config(tmp_path, url, beta=0.0, loss_top_k=5)
    server_config(tmp_path, url, beta=0.5)
    cases = [
        (dict(teacher_model_server_url=None), "teacher_model_server_url must be set"),
        (dict(teacher_model_server_url="  "), "teacher_model_server_url must be set"),
        (dict(beta=0.0, loss_top_k=0), "loss_top_k must be positive"),
        (dict(reverse_kl_top_1_mode="argmax"), "reverse_kl_top_1_mode='sampled'"),
        (dict(beta=0.5, loss_top_k=2), "loss_top_k must be 1"),
        (dict(loss_top_k=0), "loss_top_k must be 1"),
        (dict(use_liger_kernel=True), "use_liger_kernel=False"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            server_config(tmp_path, overrides.pop("teacher_model_server_url", url), **overrides)


@pytest.mark.parametrize(
    ("beta", "top_k", "add_tail"), [(0.0, 3, True), (0.0, 2, False), (1.0, 1, True), (0.5, 1, True)]
)
def test_divergence_from_served_log_probs_equals_the_local_top_k_loss(beta, top_k, add_tail):
    """What the server answers (top-k log-probs, the sampled token's log-prob) is all the top-k loss needs."""
    torch.manual_seed(0)
    student, teacher_logits = torch.randn(7, 11, requires_grad=True), torch.randn(7, 11) * 2
    sampled = torch.randint(0, 11, (7,))
    sampled[0] = teacher_logits[0].argmax()  # the teacher's top-1 is the sampled token: a support of one
    expected, expected_N = distillation_loss(
        student, teacher_logits, beta=beta, temperature=0.7, top_k=top_k, add_tail=add_tail, sampled_ids_N=sampled
    )
    logps = torch.log_softmax(teacher_logits / 0.7, dim=-1)
    top = logps.topk(top_k if beta == 0 else 1)
    actual = logps.gather(1, sampled[:, None])
    ids, values = {0.0: (top.indices, top.values), 1.0: (sampled[:, None], actual)}.get(
        beta, (torch.cat([top.indices, sampled[:, None]], 1), torch.cat([top.values, actual], 1))
    )
    served = TeacherServerScores(actual[:, 0], ids, values)
    loss, divergence_N = teacher_server_divergence(student, served, beta, temperature=0.7, add_tail=add_tail)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(divergence_N, expected_N, rtol=1e-5, atol=1e-6)
    (gradient,) = torch.autograd.grad(loss, student)
    (expected_gradient,) = torch.autograd.grad(expected, student)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-5, atol=1e-6)


def test_padding_and_out_of_vocabulary_ids_leave_the_support():
    """`-inf` entries (the server had fewer than K tokens) and ids past the student's logits (a teacher with a wider,
    padded embedding) are not in the support; their mass stays in the tail."""
    logps = torch.log_softmax(torch.randn(2, 6), dim=-1)
    student = torch.randn(2, 4)
    top = logps.topk(2)
    ids = torch.cat([top.indices.clamp(max=3), torch.tensor([[5], [0]])], 1)
    values = torch.cat([top.values, torch.tensor([[-1.0], [-float("inf")]])], 1)
    loss, _ = teacher_server_divergence(student, TeacherServerScores(values[:, 0], ids, values), beta=0.0)
    reference, _ = teacher_server_divergence(
        student, TeacherServerScores(values[:, 0], top.indices.clamp(max=3), top.values), beta=0.0
    )
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, reference)


def test_first_step_loss_equals_a_local_teacher_of_the_same_weights(tmp_path, teacher_url):
    """Training from the server gives the local teacher's losses (on-policy, same sampled completions), with no
    teacher model in the trainer, and changes every student parameter."""
    data = {"train_dataset": load_test_dataset("conversational_prompt_only")}
    data["eval_dataset"] = load_test_dataset("conversational_prompt_completion", split="test")
    served = DistillationTrainer(STUDENT, args=server_config(tmp_path / "s", teacher_url), **data)
    assert served.teacher_model is None and isinstance(served.teacher_server, TeacherServer)
    local = DistillationTrainer(STUDENT, TEACHER, args=make_config(tmp_path / "l"), **data)
    evaluations = [trainer.evaluate() for trainer in (served, local)]  # the dataset completions: no sampling
    assert evaluations[0]["eval_loss"] == pytest.approx(evaluations[1]["eval_loss"], rel=1e-4)
    before = snapshot(served.model)
    served.train()
    local.train()
    losses = [[row["loss"] for row in t.state.log_history if "loss" in row] for t in (served, local)]
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-4)
    assert losses[0][0] > 0
    for name, param in served.model.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not change"


@pytest.mark.parametrize(("beta", "top_k"), [(0.0, 4), (0.5, 1)])
def test_compute_loss_equals_the_local_loss_on_dataset_completions(tmp_path, teacher_url, teacher, beta, top_k):
    args = server_config(tmp_path, teacher_url, beta=beta, loss_top_k=top_k, temperature=0.8, lmbda=0.0)
    trainer = DistillationTrainer(STUDENT, args=args, train_dataset=load_test_dataset("standard_prompt_completion"))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    loss = trainer.compute_loss(trainer.model, batch)
    rows = policy_inputs(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
    inputs = {k: rows[k] for k in ("input_ids", "attention_mask", "position_ids")}
    mask = rows["completion_mask"].bool()
    predicting = slice(inputs["input_ids"].shape[1] - mask.shape[1] - 1, inputs["input_ids"].shape[1] - 1)
    with torch.no_grad():
        student = trainer.model(**inputs).logits[:, predicting][mask]
        teacher_logits = teacher(**inputs).logits[:, predicting][mask]
    expected, _ = distillation_loss(
        student, teacher_logits, beta=beta, temperature=0.8, top_k=top_k, sampled_ids_N=rows["completion_ids"][mask]
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_bad_teacher_servers_are_clear_errors(tmp_path, teacher_url):
    dataset = load_test_dataset("conversational_prompt_only")
    unreachable = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match="teacher_model_server_url=.*trl vllm-serve --model <teacher>"):
        DistillationTrainer(
            STUDENT, args=server_config(tmp_path, unreachable, vllm_server_timeout=0), train_dataset=dataset
        )
    other_tokenizer = AutoTokenizer.from_pretrained(STUDENT)
    other_tokenizer.add_tokens(["<not-in-the-teacher>"])
    with pytest.raises(ValueError, match="1024 tokens that differs from the student's \\(1025 tokens\\)"):
        DistillationTrainer(
            STUDENT, args=server_config(tmp_path, teacher_url), train_dataset=dataset, processing_class=other_tokenizer
        )
    with pytest.warns(UserWarning, match="local teacher .* is not loaded"):
        trainer = DistillationTrainer(
            STUDENT, TEACHER, args=server_config(tmp_path, teacher_url), train_dataset=dataset
        )
    assert trainer.teacher_model is None


def test_a_vllm_teacher_server_needs_temperature_one():
    """vLLM's `prompt_logprobs` are at temperature 1: another temperature is refused at start, not ignored."""
    info = {"backend": "vllm", "base_url": "http://gpu-host:8000"}
    client = SimpleNamespace(base_url=info["base_url"], get_server_info=lambda: info)
    TeacherServer(client, beta=1.0, top_k=1, temperature=1.0).check_server(None)  # no vocabulary reported: no check
    with pytest.raises(ValueError, match="temperature=0.7: the vLLM teacher server at http://gpu-host:8000"):
        TeacherServer(client, beta=1.0, top_k=1, temperature=0.7).check_server(None)


def test_cli_with_a_teacher_server(tmp_path, teacher_url):
    """`trl distillation --config <yaml>` with `use_teacher_server: true` and no local teacher."""
    from trl.testing import get_dataset_path

    from .testing_utils import run_trl_with_yaml

    config = {
        "model_name_or_path": STUDENT, "use_teacher_server": True, "teacher_model_server_url": teacher_url,
        "dataset_name": get_dataset_path(), "dataset_config": "conversational_prompt_only",
        "output_dir": str(tmp_path / "out"), "max_steps": 2, "max_completion_length": 4, "max_length": 64,
        "per_device_train_batch_size": 2, "save_strategy": "no", "report_to": "none", "logging_steps": 1,
        "num_processes": 1, "vllm_server_timeout": 60,
    }  # fmt: skip
    result = run_trl_with_yaml("distillation", config, tmp_path)
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert result.stdout.count("'loss'") == 2, result.stdout[-3000:]
