import json
import math
import textwrap

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl.testing import get_tiny_model_path, get_tiny_tokenizer_path, load_test_dataset
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.dpo_config import DPO_LOSS_TYPES, DPOConfig
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.preference_data import tokenize_preference_example, truncate_prompt_completions
from trl.trainer.utils import compute_accuracy

from .testing_utils import StopAt, perturbed_model, run_accelerate, snapshot


MODEL = get_tiny_model_path("qwen2")


def make_config(tmp_path, **kwargs) -> DPOConfig:
    defaults = dict(
        output_dir=str(tmp_path),
        report_to="none",
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        beta=0.5,
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
    )
    defaults.update(kwargs)
    return DPOConfig(**defaults)


def first_batch(trainer: DPOTrainer, size: int = 4) -> dict[str, torch.Tensor]:
    return trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(size)]))


def full_forward_token_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent per-token log-probs `[R, T-1]` from the full logits, and the mask of completion targets."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return logps, batch["completion_mask"][:, 1:].bool()


@pytest.fixture(scope="module")
def tokenized_train(tmp_path_factory):
    """The standard preference data tokenised once (trainers skip tokenisation of pre-tokenised data)."""
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("tokenize")), report_to="none")
    trainer = DPOTrainer(MODEL, args=args, train_dataset=load_test_dataset("standard_preference"))
    return trainer.train_dataset


# ------------------------------------------------------------------------------------------------- config
def test_config_defaults_follow_the_reference():
    args = DPOConfig(output_dir="out")
    expected = {
        "learning_rate": 1e-6, "logging_steps": 10, "gradient_checkpointing": True, "model_init_kwargs": None,
        "trust_remote_code": False, "router_aux_loss_coef": None, "disable_dropout": True, "dataset_num_proc": None,
        "max_length": 1024, "truncation_mode": "keep_start", "padding_free": False, "pad_to_multiple_of": None,
        "precompute_ref_log_probs": False, "precompute_ref_batch_size": None, "loss_type": ["sigmoid"],
        "loss_weights": None, "ld_alpha": None, "f_divergence_type": "reverse_kl", "f_alpha_divergence_coef": 0.5,
        "label_smoothing": 0.0, "beta": 0.1, "use_weighting": False, "discopop_tau": 0.05,
        "activation_offloading": False, "sync_ref_model": False, "ref_model_mixup_alpha": 0.6,
        "ref_model_sync_steps": 512, "pad_token": None, "ref_model_init_kwargs": None, "model_adapter_name": None,
        "ref_adapter_name": None, "force_use_ref_model": False, "use_logits_to_keep": False,
        "label_pad_token_id": -100, "max_prompt_length": None, "max_completion_length": None, "tools": None,
        "use_liger_loss": False, "base_model_attribute_name": "model", "reference_free": False, "rpo_alpha": None,
        "generate_during_eval": False, "padding_value": None,
    }  # fmt: skip
    assert {name: getattr(args, name) for name in expected} == expected
    assert DPOConfig(output_dir="out", loss_type="ipo").loss_type == ["ipo"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(loss_type=["sigmoid", "nope"]), "Unknown loss_type"),
        (dict(loss_type=["sigmoid", "bco_pair"], loss_weights=[1.0]), "one weight per loss type"),
        (dict(reference_free=True, precompute_ref_log_probs=True), "reference_free"),
        (dict(sync_ref_model=True, precompute_ref_log_probs=True), "sync_ref_model"),
        (dict(loss_type="robust", label_smoothing=0.5), "label_smoothing"),
        (dict(loss_type="nca_pair", f_divergence_type="js_divergence"), "no f-divergence form"),
        (dict(ld_alpha=1.5), "ld_alpha"),
        (dict(beta=0.0), "beta"),
        (dict(truncation_mode="middle"), "truncation_mode"),
        (dict(max_prompt_length=0), "max_prompt_length"),
        (dict(loss_type="aot", use_weighting=True), "use_weighting"),
    ],
)
def test_invalid_config_raises_before_loading(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DPOConfig(output_dir="out", **kwargs)


def test_loss_type_list_and_weights_from_the_command_line():
    from trl.scripts.utils import TrlParser

    (args,) = TrlParser((DPOConfig,)).parse_args_into_dataclasses(
        ["--output_dir", "o", "--loss_type", "sigmoid", "bco_pair", "sft", "--loss_weights", "0.8", "0.2", "1.0"]
    )
    assert args.loss_type == ["sigmoid", "bco_pair", "sft"]
    assert args.loss_weights == [0.8, 0.2, 1.0]


# ------------------------------------------------------------------------------------------- tokenisation
def test_prompt_and_completion_ids_concatenate_to_the_whole_text():
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("chatml"))
    example = {"prompt": "What is 2 plus 2?", "chosen": " The answer is 4.", "rejected": " zzz zzz."}
    ids = tokenize_preference_example(example, tokenizer, eos_token=tokenizer.eos_token)
    whole = tokenizer(example["prompt"] + example["chosen"] + tokenizer.eos_token)["input_ids"]
    assert ids["prompt_ids"] + ids["chosen_ids"] == whole
    assert ids["chosen_ids"][-1] == tokenizer.eos_token_id
    assert ids["prompt_ids"] == tokenizer(example["prompt"])["input_ids"]


def test_a_merge_across_the_boundary_keeps_the_prompt_tokens():
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("chatml"))
    # A trailing space merges with the next word when the two are tokenised together.
    example = {"prompt": "The sky is ", "chosen": "blue", "rejected": "green"}
    ids = tokenize_preference_example(example, tokenizer)
    assert ids["prompt_ids"] == tokenizer("The sky is ")["input_ids"]
    assert ids["chosen_ids"] == tokenizer("blue", add_special_tokens=False)["input_ids"]


def test_conversational_rows_are_rendered_with_the_chat_template():
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("llama3"))
    example = load_test_dataset("conversational_preference")[0]
    ids = tokenize_preference_example(example, tokenizer)
    whole = tokenizer.apply_chat_template(example["prompt"] + example["chosen"], tokenize=True, return_dict=True)
    assert ids["prompt_ids"] + ids["chosen_ids"] == list(whole["input_ids"])
    assert ids["prompt_ids"].count(tokenizer.bos_token_id) == 1  # the template's BOS, not a second one
    prompt = tokenizer.apply_chat_template(
        example["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    assert ids["prompt_ids"] == list(prompt["input_ids"])


def test_truncation_keeps_the_prompt_end_and_the_completion_start():
    example = {"prompt_ids": [1, 2, 3, 4, 5], "chosen_ids": [6, 7, 8], "rejected_ids": [9]}
    assert truncate_prompt_completions(example, ("chosen", "rejected"), 2, 2) == {
        "prompt_ids": [4, 5],
        "chosen_ids": [6, 7],
        "rejected_ids": [9],
    }
    assert truncate_prompt_completions(example, ("chosen", "rejected"), None, None) == example


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize(
    "config_name",
    [
        "standard_preference",
        "conversational_preference",
        "standard_implicit_prompt_preference",
        "conversational_implicit_prompt_preference",
    ],
)
def test_each_dataset_format_trains_and_changes_weights(tmp_path, config_name):
    trainer = DPOTrainer(MODEL, args=make_config(tmp_path), train_dataset=load_test_dataset(config_name))
    before = snapshot(trainer.model)
    trainer.train()
    unchanged = [name for name, param in trainer.model.named_parameters() if torch.equal(param, before[name])]
    assert not unchanged, unchanged[:5]
    assert trainer.state.log_history[-1]["train_loss"] is not None
    metrics = {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected", "logits/chosen", "logits/rejected"}  # fmt: skip
    assert metrics <= set(trainer.state.log_history[0])


def test_first_step_sigmoid_loss_is_log2_with_a_frozen_copy(tmp_path):
    """Policy == frozen copy at step 1, so every log-ratio is 0 and −log σ(0) = ln 2 exactly."""
    trainer = DPOTrainer(
        MODEL, args=make_config(tmp_path, max_steps=1), train_dataset=load_test_dataset("standard_preference")
    )
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert first["rewards/margins"] == 0.0 and first["rewards/chosen"] == 0.0


@pytest.mark.parametrize("loss_type", DPO_LOSS_TYPES)
def test_every_loss_type_trains_and_changes_weights(tmp_path, tokenized_train, loss_type):
    args = make_config(tmp_path, loss_type=loss_type, per_device_train_batch_size=2)
    trainer = DPOTrainer(MODEL, args=args, train_dataset=tokenized_train.select(range(8)))
    before = snapshot(trainer.model)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    changed = [name for name, param in trainer.model.named_parameters() if not torch.equal(param, before[name])]
    assert "lm_head.weight" in changed and len(changed) > len(before) // 2
    if loss_type == "bco_pair":
        assert trainer.running.mean != 0.0  # the running reward mean δ is tracked


def test_multi_loss_is_the_weighted_sum_of_the_single_losses(tmp_path, tokenized_train):
    args = make_config(tmp_path, loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0])
    trainer = DPOTrainer(MODEL, ref_model=perturbed_model(), args=args, train_dataset=tokenized_train)
    batch = first_batch(trainer)
    trainer.model.eval()  # eval mode: the bco_pair running mean stays fixed across the four calls
    multi = trainer.compute_loss(trainer.model, batch)
    singles = {}
    for loss_type in ("sigmoid", "bco_pair", "sft"):
        trainer.loss_types, trainer.args.loss_weights = [loss_type], None
        singles[loss_type] = trainer.compute_loss(trainer.model, batch)
    expected = 0.8 * singles["sigmoid"] + 0.2 * singles["bco_pair"] + 1.0 * singles["sft"]
    torch.testing.assert_close(multi, expected)
    assert len({round(value.item(), 4) for value in singles.values()}) == 3


# ------------------------------------------------------------------------------------------ reference model
def test_precomputed_reference_equals_on_the_fly_and_is_computed_once(tmp_path, tokenized_train):
    eval_dataset = load_test_dataset("standard_preference", split="test")
    on_the_fly = DPOTrainer(
        MODEL, ref_model=perturbed_model(), args=make_config(tmp_path, max_steps=1), train_dataset=tokenized_train,
        eval_dataset=eval_dataset,
    )  # fmt: skip
    reference = perturbed_model()
    calls = []
    reference.register_forward_hook(lambda *_: calls.append(1))
    args = make_config(tmp_path, max_steps=1, precompute_ref_log_probs=True, precompute_ref_batch_size=3)
    precomputed = DPOTrainer(
        MODEL, ref_model=reference, args=args, train_dataset=tokenized_train, eval_dataset=eval_dataset
    )

    expected_eval = on_the_fly.evaluate()
    actual_eval = precomputed.evaluate()
    assert actual_eval["eval_loss"] == pytest.approx(expected_eval["eval_loss"], abs=1e-5)
    assert actual_eval["eval_loss"] != pytest.approx(math.log(2), abs=1e-3)  # a reference unlike the policy
    eval_calls = len(calls)
    assert eval_calls == 3  # 8 eval rows in batches of 3

    on_the_fly.train()
    precomputed.train()
    assert precomputed.state.log_history[0]["loss"] == pytest.approx(on_the_fly.state.log_history[0]["loss"], abs=1e-5)
    assert len(calls) == eval_calls + math.ceil(len(tokenized_train) / 3)  # only the precomputation ran it
    assert {"ref_chosen_logps", "ref_rejected_logps"} <= set(precomputed.train_dataset.column_names)
    precomputed.evaluate()
    assert len(calls) == eval_calls + math.ceil(len(tokenized_train) / 3)  # eval columns reused


def test_precompute_without_ref_model_uses_the_initial_policy(tmp_path, tokenized_train):
    eval_dataset = load_test_dataset("standard_preference", split="test")
    args = make_config(tmp_path, precompute_ref_log_probs=True, eval_strategy="steps", eval_steps=2)
    trainer = DPOTrainer(MODEL, args=args, train_dataset=tokenized_train, eval_dataset=eval_dataset)
    assert trainer.ref_model is None
    trainer.train()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert "eval_loss" in trainer.state.log_history[-2]  # the eval data was precomputed before training
    with pytest.raises(ValueError, match="initial policy"):
        trainer.evaluate(tokenized_train.select(range(4)))  # a dataset that was not precomputed


def test_peft_reference_disables_adapters_without_a_copy(tmp_path, tokenized_train, monkeypatch):
    from peft import LoraConfig

    import trl.trainer.reference as reference_module

    def no_copy(*args, **kwargs):
        raise AssertionError("a reference copy was made")

    monkeypatch.setattr(reference_module, "create_reference_model", no_copy)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = DPOTrainer(MODEL, args=make_config(tmp_path), train_dataset=tokenized_train, peft_config=peft_config)
    assert trainer.ref_model is None
    before = snapshot(trainer.model)
    trainer.train()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # lora_B starts at 0
    for name, param in trainer.model.named_parameters():
        if "lora_B" in name:
            assert not torch.equal(param, before[name]), name
        elif "lora_" not in name:
            assert torch.equal(param, before[name]), name
    # After training the policy differs from its reference (the base with adapters disabled).
    trainer.model.eval()
    batch = first_batch(trainer)
    ref_chosen, _ = trainer.compute_ref_log_probs(batch)
    scores = trainer._policy_scores(trainer.model, batch)
    assert not torch.allclose(ref_chosen, scores.chosen_logps)
    with trainer.model.disable_adapter():
        logps, mask = full_forward_token_logps(trainer.model, batch)
    torch.testing.assert_close(ref_chosen, (logps * mask)[:4].sum(-1), rtol=1e-5, atol=1e-4)


def test_ref_adapter_name_selects_the_reference_adapter(tmp_path, tokenized_train):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(MODEL), lora, adapter_name="policy")
    model.add_adapter(
        "reference", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    args = make_config(tmp_path, model_adapter_name="policy", ref_adapter_name="reference")
    trainer = DPOTrainer(model, args=args, train_dataset=tokenized_train)
    batch = first_batch(trainer)
    trainer.model.eval()
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(batch)
    assert trainer.model.active_adapter == "policy"
    model.set_adapter("reference")
    logps, mask = full_forward_token_logps(model, batch)
    model.set_adapter("policy")
    expected = (logps * mask).sum(-1)
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), expected, rtol=1e-5, atol=1e-4)


def test_sync_target_model_mixes_weights():
    source, target = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        source.weight.fill_(1.0), target.weight.fill_(3.0)
    SyncRefModelCallback.sync_target_model(source, target, alpha=0.25)
    torch.testing.assert_close(target.weight, torch.full((2, 2), 0.25 * 1.0 + 0.75 * 3.0))


def test_sync_ref_model_moves_the_reference_towards_the_policy(tmp_path, tokenized_train):
    args = make_config(tmp_path, max_steps=1, sync_ref_model=True, ref_model_sync_steps=1, ref_model_mixup_alpha=0.5)
    trainer = DPOTrainer(MODEL, args=args, train_dataset=tokenized_train)
    reference_before = snapshot(trainer.ref_model)
    trainer.train()
    for name, param in trainer.ref_model.named_parameters():
        expected = 0.5 * trainer.model.get_parameter(name).detach() + 0.5 * reference_before[name]
        torch.testing.assert_close(param, expected)


def test_reference_free_scores_the_policy_alone(tmp_path, tokenized_train):
    args = make_config(tmp_path, max_steps=1, reference_free=True, beta=0.1)
    trainer = DPOTrainer(MODEL, args=args, train_dataset=tokenized_train)
    assert trainer.ref_model is None
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["rewards/chosen"] == pytest.approx(0.1 * first["logps/chosen"], rel=1e-5)
    assert first["rewards/rejected"] == pytest.approx(0.1 * first["logps/rejected"], rel=1e-5)


# -------------------------------------------------------------------------------- forward pass and variants
def test_padding_free_and_logits_to_keep_do_not_change_the_loss(tmp_path, tokenized_train):
    trainer = DPOTrainer(MODEL, ref_model=perturbed_model(), args=make_config(tmp_path), train_dataset=tokenized_train)
    batch = first_batch(trainer)
    trainer.model.eval()
    padded = trainer.compute_loss(trainer.model, batch)
    trainer.args.padding_free = True
    flattened = trainer.compute_loss(trainer.model, batch)
    trainer.args.padding_free = False
    trainer._logits_to_keep_supported = False
    full_logits = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(flattened, padded, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full_logits, padded, rtol=1e-5, atol=1e-6)


def test_sequence_log_probs_are_sums_over_completion_tokens(tmp_path, tokenized_train):
    trainer = DPOTrainer(MODEL, args=make_config(tmp_path), train_dataset=tokenized_train)
    batch = first_batch(trainer)
    scores = trainer._policy_scores(trainer.model, batch)
    logps, mask = full_forward_token_logps(trainer.model, batch)
    torch.testing.assert_close(torch.cat([scores.chosen_logps, scores.rejected_logps]), (logps * mask).sum(-1))
    torch.testing.assert_close(scores.chosen_lengths, mask[:4].sum(-1))
    nll = -(logps[:4] * mask[:4]).sum() / mask[:4].sum()
    torch.testing.assert_close(scores.nll_loss, nll)


def test_rpo_alpha_adds_the_chosen_nll(tmp_path, tokenized_train):
    trainer = DPOTrainer(MODEL, ref_model=perturbed_model(), args=make_config(tmp_path), train_dataset=tokenized_train)
    batch = first_batch(trainer)
    trainer.model.eval()
    plain = trainer.compute_loss(trainer.model, batch)
    trainer.args.rpo_alpha = 0.5
    with_nll = trainer.compute_loss(trainer.model, batch)
    logps, mask = full_forward_token_logps(trainer.model, batch)
    nll = -(logps[:4] * mask[:4]).sum() / mask[:4].sum()
    torch.testing.assert_close(with_nll, plain + 0.5 * nll)
    assert trainer._metrics["eval"]["nll_loss"][-1] == pytest.approx(nll.item(), rel=1e-5)


def test_ld_alpha_weighs_tokens_past_the_shorter_completion(tmp_path, tokenized_train):
    trainer = DPOTrainer(MODEL, args=make_config(tmp_path, ld_alpha=0.25), train_dataset=tokenized_train)
    batch = first_batch(trainer)
    scores = trainer._policy_scores(trainer.model, batch)
    logps, mask = full_forward_token_logps(trainer.model, batch)
    lengths = mask.sum(-1)
    shared = torch.minimum(lengths[:4], lengths[4:]).repeat(2)
    position = mask.long().cumsum(-1)
    public = mask & (position <= shared[:, None])
    expected = (logps * public).sum(-1) + 0.25 * (logps * (mask & ~public)).sum(-1)
    torch.testing.assert_close(torch.cat([scores.chosen_logps, scores.rejected_logps]), expected)
    assert not torch.allclose(expected, (logps * mask).sum(-1))


def test_use_weighting_scales_each_pair_by_its_wpo_weight(tmp_path, tokenized_train):
    trainer = DPOTrainer(MODEL, ref_model=perturbed_model(), args=make_config(tmp_path), train_dataset=tokenized_train)
    batch = first_batch(trainer)
    trainer.model.eval()
    logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps, mask = full_forward_token_logps(trainer.model, batch)
    aligned = logps - (torch.logsumexp(2 * logits, -1) - 2 * torch.logsumexp(logits, -1))
    weights = torch.exp((aligned * mask).sum(-1) / mask.sum(-1))
    pair_weights = (weights[:4] * weights[4:]).clamp(max=1.0)
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(batch)
    policy = (logps * mask).sum(-1)
    per_pair = -F.logsigmoid(0.5 * ((policy[:4] - ref_chosen) - (policy[4:] - ref_rejected)))
    trainer.args.use_weighting = True
    torch.testing.assert_close(trainer.compute_loss(trainer.model, batch), (pair_weights * per_pair).mean())
    assert (pair_weights < 1).all()


def test_moe_router_aux_loss_is_added_and_logged(tmp_path, tokenized_train):
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=1024, hidden_size=32, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True,
        router_aux_loss_coef=0.1, max_position_embeddings=512, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("chatml"))
    trainer = DPOTrainer(MixtralForCausalLM(config), args=make_config(tmp_path, max_steps=1), train_dataset=tokenized_train,
                         processing_class=tokenizer)  # fmt: skip
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["aux_loss"] > 0
    assert first["loss"] == pytest.approx(math.log(2) + 0.1 * first["aux_loss"], rel=1e-5)


# -------------------------------------------------------------------------------------------- evaluation
def test_eval_metrics_and_compute_metrics(tmp_path, tokenized_train):
    evals = {
        "std": load_test_dataset("standard_preference", split="test"),
        "conv": load_test_dataset("conversational_preference", split="test"),
    }
    trainer = DPOTrainer(
        MODEL, ref_model=perturbed_model(), args=make_config(tmp_path), train_dataset=tokenized_train,
        eval_dataset=evals, compute_metrics=compute_accuracy,
    )  # fmt: skip
    metrics = trainer.evaluate()
    for name in evals:
        for key in ("loss", "rewards/chosen", "rewards/margins", "logps/rejected", "logits/chosen", "accuracy"):
            assert f"eval_{name}_{key}" in metrics, key
        # compute_metrics sees the (chosen, rejected) rewards: its accuracy is the rewards accuracy.
        assert metrics[f"eval_{name}_accuracy"] == pytest.approx(metrics[f"eval_{name}_rewards/accuracies"])


def test_save_writes_model_and_card(tmp_path, tokenized_train):
    trainer = DPOTrainer(
        MODEL, args=make_config(tmp_path, max_steps=1), train_dataset=tokenized_train.select(range(4))
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "final").config.model_type == "qwen2"
    card = (tmp_path / "final" / "README.md").read_text()
    assert "DPO" in card and "2305.18290" in card
    rows = trainer._derived_quantities()
    assert rows["reference"] == "frozen initial policy" and rows["loss"] == "1·sigmoid"


# -------------------------------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors(tmp_path, tokenized_train):
    from peft import LoraConfig

    args = make_config(tmp_path)
    with pytest.raises(ValueError, match="'chosen' and 'rejected'"):
        DPOTrainer(MODEL, args=args, train_dataset=Dataset.from_dict({"prompt": ["a"], "chosen": ["b"]}))
    with pytest.raises(ValueError, match="unpaired preference"):
        DPOTrainer(MODEL, args=args, train_dataset=load_test_dataset("standard_unpaired_preference"))
    with pytest.raises(ValueError, match="force_use_ref_model"):
        DPOTrainer(MODEL, ref_model=MODEL, args=args, train_dataset=tokenized_train, peft_config=LoraConfig(r=2))
    with pytest.raises(ValueError, match="sync_ref_model"):
        DPOTrainer(MODEL, args=make_config(tmp_path, sync_ref_model=True), train_dataset=tokenized_train,
                   peft_config=LoraConfig(r=2))  # fmt: skip
    with pytest.raises(ValueError, match="reference_free"):
        DPOTrainer(
            MODEL, ref_model=MODEL, args=make_config(tmp_path, reference_free=True), train_dataset=tokenized_train
        )
    with pytest.raises(ValueError, match="model_init_kwargs"):
        DPOTrainer(AutoModelForCausalLM.from_pretrained(MODEL), args=make_config(tmp_path, model_init_kwargs={"dtype": "float32"}),
                   train_dataset=tokenized_train)  # fmt: skip
    with pytest.raises(ValueError, match="train_dataset"):
        DPOTrainer(MODEL, args=args)
    iterable = tokenized_train.to_iterable_dataset()
    trainer = DPOTrainer(MODEL, args=make_config(tmp_path, precompute_ref_log_probs=True), train_dataset=iterable)
    with pytest.raises(ValueError, match="map-style"):
        trainer.train()


# ---------------------------------------------------------------------------------------------- processes
_DISTRIBUTED_SCRIPT = """
import json, sys
from trl.trainer.dpo_config import DPOConfig
from trl.trainer.dpo_trainer import DPOTrainer
from trl.testing import get_tiny_model_path, load_test_dataset

output_dir = sys.argv[1]
args = DPOConfig(output_dir=output_dir, report_to="none", per_device_train_batch_size=2, max_steps=2,
                 learning_rate=1e-2, beta=0.5, logging_steps=1, save_strategy="no", gradient_checkpointing=False,
                 disable_tqdm=True, seed=0, precompute_ref_log_probs=True)
trainer = DPOTrainer(get_tiny_model_path("qwen2"), args=args, train_dataset=load_test_dataset("standard_preference"))
trainer.train()
if trainer.accelerator.is_main_process:
    with open(f"{output_dir}/log.json", "w") as file:
        json.dump(trainer.state.log_history, file)
"""


@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    script = tmp_path / "train_dpo.py"
    script.write_text(textwrap.dedent(_DISTRIBUTED_SCRIPT))
    run_accelerate([str(script), str(tmp_path)], num_processes=2, timeout=120)
    two = json.loads((tmp_path / "log.json").read_text())
    args = make_config(tmp_path / "single", precompute_ref_log_probs=True)
    single = DPOTrainer(MODEL, args=args, train_dataset=load_test_dataset("standard_preference"))
    single.train()
    for step in range(2):
        for key in ("loss", "rewards/margins", "logps/chosen", "logps/rejected", "logits/chosen"):
            assert two[step][key] == pytest.approx(single.state.log_history[step][key], rel=1e-4, abs=1e-5), key


def test_generate_during_eval_logs_policy_and_reference_completions(tmp_path, tokenized_train, monkeypatch):
    import importlib.machinery
    import sys
    import types

    logged = []
    wandb = types.ModuleType("wandb")
    wandb.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    wandb.run = object()
    wandb.Table = lambda columns, rows: {"columns": columns, "rows": rows}
    wandb.log = logged.append
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    args = make_config(tmp_path, generate_during_eval=True, max_completion_length=4, per_device_eval_batch_size=2)
    trainer = DPOTrainer(
        MODEL, args=args, train_dataset=tokenized_train, eval_dataset=tokenized_train.select(range(4))
    )
    trainer.evaluate()
    (entry,) = logged
    table = entry["game_log"]
    assert table["columns"] == ["Prompt", "Policy", "Ref Model"] and len(table["rows"]) == 2
    assert all(row[0].startswith("What") or row[0].startswith("How") for row in table["rows"])
    assert all(row[2] for row in table["rows"])  # the reference generated too


def test_generate_during_eval_without_wandb_raises(tmp_path, tokenized_train, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real_find_spec(name, *a)
    )
    with pytest.raises(ValueError, match="wandb"):
        DPOTrainer(MODEL, args=make_config(tmp_path, generate_during_eval=True), train_dataset=tokenized_train)


def test_dpo_script_trains_from_the_command_line_arguments(tmp_path):
    from trl.scripts import dpo
    from trl.scripts.utils import parse_script_args
    from trl.testing import get_dataset_path

    args = parse_script_args(
        dpo.make_parser(),
        ["--model_name_or_path", MODEL, "--dataset_name", get_dataset_path(), "--dataset_config",
         "conversational_preference", "--output_dir", str(tmp_path), "--max_steps", "1", "--report_to", "none",
         "--save_strategy", "no", "--loss_type", "sigmoid", "sft", "--loss_weights", "1.0", "0.5",
         "--gradient_checkpointing", "false"],
    )  # fmt: skip
    assert args[1].loss_type == ["sigmoid", "sft"]
    dpo.main(*args)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.model_type == "qwen2"


def test_create_reference_model_is_a_frozen_copy_or_shares_leading_layers():
    from trl.models import create_reference_model

    model = AutoModelForCausalLM.from_pretrained(MODEL)
    reference = create_reference_model(model)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    for (name, param), ref_param in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(param, ref_param) and param.data_ptr() != ref_param.data_ptr(), name
    shared = create_reference_model(model, num_shared_layers=1)
    layer0, layer1 = "model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"
    assert shared.get_parameter(layer0) is model.get_parameter(layer0)
    assert (
        not model.get_parameter(layer0).requires_grad
        and not model.get_parameter("model.embed_tokens.weight").requires_grad
    )
    assert (
        shared.get_parameter(layer1) is not model.get_parameter(layer1) and model.get_parameter(layer1).requires_grad
    )


def test_bco_pair_running_mean_is_saved_and_restored_on_resume(tmp_path, tokenized_train):
    straight = DPOTrainer(
        MODEL, args=make_config(tmp_path / "a", max_steps=3, loss_type=["bco_pair"]), train_dataset=tokenized_train
    )
    straight.train()
    args = make_config(tmp_path / "b", max_steps=3, loss_type=["bco_pair"], save_strategy="steps", save_steps=2)
    interrupted = DPOTrainer(MODEL, args=args, train_dataset=tokenized_train, callbacks=[StopAt(2)])
    interrupted.train()
    assert not (tmp_path / "b" / "checkpoint-2" / "running.json").exists()  # part of the one extra-state file
    assert (tmp_path / "b" / "checkpoint-2" / "extra_state.json").is_file()
    resumed = DPOTrainer(MODEL, args=args, train_dataset=tokenized_train)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
    assert resumed.running.count == pytest.approx(straight.running.count)
    assert resumed.running.mean == pytest.approx(straight.running.mean, abs=1e-6)
