"""The `BaseTrainer.__init__` skeleton: step order, the pad-token rule, auxiliary models, loss normalisation."""

import pytest
import torch
from transformers import AutoTokenizer

from trl import DPOConfig, DPOTrainer, PRMConfig, PRMTrainer, SFTConfig, SFTTrainer
from trl.testing import get_tiny_model_path, get_tiny_tokenizer_path, load_test_dataset
from trl.trainer.model_utils import prepare_auxiliary_model


MODEL = get_tiny_model_path("qwen2")
STEPS = [
    "_resolve_args",
    "_validate",
    "_setup_model",
    "_setup_model_init",
    "_setup_processing_class",
    "_setup_peft",
    "_setup_pad_token",
    "_setup_auxiliary_models",
    "_resolve_options",
    "_prepare_dataset",
    "_default_collator",
    "_after_init",
]


def config(cls, tmp_path, **kwargs):
    defaults = dict(output_dir=str(tmp_path), report_to="none", save_strategy="no", gradient_checkpointing=False,
                    disable_tqdm=True, max_steps=1, seed=0)  # fmt: skip
    defaults.update(kwargs)
    return cls(**defaults)


def recording(trainer_class):
    """A subclass of `trainer_class` that records the skeleton steps it runs, in order."""
    calls = []

    def wrap(name):
        def step(self, *args, **kwargs):
            calls.append(name)
            return getattr(trainer_class, name)(self, *args, **kwargs)

        return step

    return type("Recording", (trainer_class,), {name: wrap(name) for name in STEPS}), calls


def test_steps_run_once_in_the_fixed_order(tmp_path):
    cls, calls = recording(SFTTrainer)
    train = load_test_dataset("standard_language_modeling").select(range(4))
    evals = {"a": train.select(range(2)), "b": train.select(range(2))}
    cls(MODEL, args=config(SFTConfig, tmp_path), train_dataset=train, eval_dataset=evals)
    # One `_prepare_dataset` per dataset: train, then each evaluation set.
    expected = (
        STEPS[: STEPS.index("_prepare_dataset")] + ["_prepare_dataset"] * 3 + ["_default_collator", "_after_init"]
    )
    assert calls == expected


def test_validation_runs_before_any_model_loads(tmp_path):
    cls, calls = recording(SFTTrainer)
    with pytest.raises(ValueError, match="needs a train_dataset"):
        cls(MODEL, args=config(SFTConfig, tmp_path))
    assert calls == ["_resolve_args", "_validate"]


def test_a_passed_collator_skips_the_default(tmp_path):
    cls, calls = recording(SFTTrainer)
    train = load_test_dataset("standard_language_modeling").select(range(2))
    trainer = cls(MODEL, args=config(SFTConfig, tmp_path), train_dataset=train, data_collator=lambda rows: rows)
    assert "_default_collator" not in calls and trainer.data_collator([1]) == [1]


# ------------------------------------------------------------------------------------------------- pad token
def test_pad_token_falls_back_on_eos_without_changing_the_tokenizer(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("llama3"))
    assert tokenizer.pad_token is None
    train = load_test_dataset("standard_language_modeling").select(range(2))
    trainer = SFTTrainer(MODEL, args=config(SFTConfig, tmp_path), train_dataset=train, processing_class=tokenizer)
    assert trainer.pad_token_id == tokenizer.eos_token_id
    assert trainer.data_collator.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.pad_token is None  # the user's tokenizer is left as passed


def test_config_pad_token_is_honoured(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("llama3"))
    train = load_test_dataset("standard_language_modeling").select(range(2))
    args = config(SFTConfig, tmp_path, pad_token="<|begin_of_text|>")
    with pytest.warns(FutureWarning, match="pad_token"):
        trainer = SFTTrainer(MODEL, args=args, train_dataset=train, processing_class=tokenizer)
    assert trainer.pad_token_id == trainer.data_collator.pad_token_id == tokenizer.bos_token_id
    assert tokenizer.pad_token is None


def test_padding_value_wins_over_the_tokenizer(tmp_path):
    pairs = load_test_dataset("standard_preference").select(range(2))
    trainer = DPOTrainer(MODEL, args=config(DPOConfig, tmp_path, padding_value=7), train_dataset=pairs)
    assert trainer.pad_token_id == trainer.data_collator.pad_token_id == 7


# --------------------------------------------------------------------------------------------- auxiliary models
def test_auxiliary_models_are_frozen_in_eval_mode_without_dropout():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5), torch.nn.Linear(3, 1)).train()
    prepared = prepare_auxiliary_model(model, args=None)
    assert not prepared.training
    assert not any(param.requires_grad for param in prepared.parameters())
    assert prepared[1].p == 0.0
    prepared.train()  # a wrapper switching modes does not bring the noise back
    x = torch.randn(4, 3)
    assert torch.equal(prepared(x), prepared(x))


def test_dpo_reference_copy_is_frozen_and_the_policy_trains(tmp_path):
    pairs = load_test_dataset("standard_preference").select(range(2))
    trainer = DPOTrainer(MODEL, args=config(DPOConfig, tmp_path), train_dataset=pairs)
    reference = trainer.ref_model
    assert reference is not None and reference is not trainer.model
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    assert all(m.p == 0.0 for m in reference.modules() if isinstance(m, torch.nn.Dropout))
    assert any(p.requires_grad for p in trainer.model.parameters())


# -------------------------------------------------------------------------------------------- loss normalisation
@pytest.mark.parametrize(
    ("trainer_class", "mode", "accepts_loss_kwargs", "scaled"),
    [(SFTTrainer, "tokens", True, True), (PRMTrainer, "tokens", True, True), (DPOTrainer, "examples", False, False)],
)
def test_declared_mode_sets_the_trainer_flags(trainer_class, mode, accepts_loss_kwargs, scaled):
    assert trainer_class.loss_normalization == mode
    from trl.trainer.base_trainer import _LOSS_NORMALIZATIONS

    assert _LOSS_NORMALIZATIONS[mode] == (accepts_loss_kwargs, scaled)


TOKENS_MODE_CASES = [
    (SFTTrainer, SFTConfig, "standard_prompt_completion"),
    # The PRM's score head is new (a causal checkpoint): it is initialised from `args.seed`, so both runs start from
    # the same weights whatever ran before in the process (it used to follow the global RNG, hence the flakiness).
    (PRMTrainer, PRMConfig, "standard_stepwise_supervision"),
]


@pytest.mark.parametrize(("trainer_class", "config_class", "data"), TOKENS_MODE_CASES)
def test_tokens_mode_accumulation_equals_the_large_batch(tmp_path, trainer_class, config_class, data):
    # Normalised by labelled tokens: 2 micro-batches of 2 must give the step of one batch of 4.
    dataset = load_test_dataset(data).select(range(4))
    weights = {}
    for name, (batch, accumulation) in {"large": (4, 1), "accumulated": (2, 2)}.items():
        args = config(
            config_class, tmp_path / name, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
            optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", max_grad_norm=0.0,
        )  # fmt: skip
        trainer = trainer_class(get_tiny_model_path("qwen2"), args=args, train_dataset=dataset)
        assert trainer.model_accepts_loss_kwargs and trainer.loss_is_scaled_for_ga
        before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        trainer.train()
        weights[name] = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    moved = [k for k in before if not torch.equal(before[k], weights["large"][k])]
    assert moved, "the step changed no weight"
    for key, value in weights["large"].items():
        torch.testing.assert_close(value, weights["accumulated"][key], rtol=1e-4, atol=1e-5)


def test_a_new_score_head_is_initialised_from_the_seed(tmp_path):
    dataset = load_test_dataset("standard_stepwise_supervision").select(range(2))
    heads = []
    for draws in (0, 7):
        torch.rand(draws)  # a different global RNG state before each construction
        trainer = PRMTrainer(MODEL, args=config(PRMConfig, tmp_path / str(draws)), train_dataset=dataset)
        heads.append(trainer.model.score.weight.detach().clone())
    torch.testing.assert_close(heads[0], heads[1], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ signatures
# The reference's (1.16) positional parameters of each trainer, in order (spec/public_surface_1.16.tsv).
_COMMON = ["args", "data_collator", "train_dataset", "eval_dataset", "processing_class"]
_REF_FAMILY = ["model", "ref_model", *_COMMON, "compute_metrics", "callbacks", "optimizers", "quantization_config",
               "peft_config"]  # fmt: skip
_ZERO_X = ["model", *_COMMON, "model_init", "callbacks", "optimizers", "preprocess_logits_for_metrics", "peft_config",
           "compute_metrics"]  # fmt: skip
_ONLINE = ["model", "reward_funcs", "args", "train_dataset", "eval_dataset", "processing_class",
           "reward_processing_classes", "callbacks", "optimizers", "quantization_config", "peft_config"]  # fmt: skip
REFERENCE_SIGNATURES = {
    "SFTTrainer": [
        "model",
        *_COMMON,
        "compute_loss_func",
        "compute_metrics",
        "callbacks",
        "optimizers",
        "optimizer_cls_and_kwargs",
        "preprocess_logits_for_metrics",
        "quantization_config",
        "peft_config",
        "formatting_func",
    ],  # fmt: skip
    "RewardTrainer": [
        "model",
        *_COMMON,
        "compute_metrics",
        "callbacks",
        "optimizers",
        "optimizer_cls_and_kwargs",
        "preprocess_logits_for_metrics",
        "quantization_config",
        "peft_config",
    ],  # fmt: skip
    "DPOTrainer": _REF_FAMILY,
    "KTOTrainer": _REF_FAMILY,
    "CPOTrainer": _ZERO_X,
    "ORPOTrainer": _ZERO_X,
    "PRMTrainer": [
        "model",
        *_COMMON,
        "model_init",
        "compute_metrics",
        "callbacks",
        "optimizers",
        "preprocess_logits_for_metrics",
        "peft_config",
    ],  # fmt: skip
    "BCOTrainer": [
        "model",
        "ref_model",
        "args",
        "train_dataset",
        "eval_dataset",
        "processing_class",
        "data_collator",
        "model_init",
        "callbacks",
        "optimizers",
        "preprocess_logits_for_metrics",
        "peft_config",
        "compute_metrics",
        "model_adapter_name",
        "ref_adapter_name",
        "embedding_func",
        "embedding_tokenizer",
    ],  # fmt: skip
    "GRPOTrainer": [*_ONLINE, "tools", "rollout_func", "environment_factory"],
    "RLOOTrainer": _ONLINE,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_SIGNATURES))
def test_public_signature_keeps_the_reference_positional_order(name):
    import inspect

    import trl

    parameters = list(inspect.signature(getattr(trl, name).__init__).parameters.values())[1:]  # not self
    positional = [p.name for p in parameters if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    expected = REFERENCE_SIGNATURES[name]
    # The reference's parameters come first and in its order, so positional calls bind as in the reference.
    assert positional[: len(expected)] == expected
    extras = [p.kind for p in parameters if p.name not in positional]
    assert all(kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_KEYWORD) for kind in extras)


def test_trainers_sharing_a_signature_share_one_init():
    from trl import KTOTrainer, RewardTrainer
    from trl.trainer.base_trainer import BaseTrainer
    from trl.trainer.reference import ReferenceModelMixin

    assert "__init__" not in vars(RewardTrainer) and RewardTrainer.__init__ is BaseTrainer.__init__
    assert DPOTrainer.__init__ is KTOTrainer.__init__ is ReferenceModelMixin.__init__
