"""The reference-model machinery shared by DPO, KTO and BCO (`trl.trainer.reference`)."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from trl.testing import get_tiny_model_path, load_test_dataset
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.dpo_config import DPOConfig
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.kto_config import KTOConfig
from trl.trainer.kto_trainer import KTOTrainer
from trl.trainer.reference import ReferenceModelMixin, validate_reference_options


MODEL = get_tiny_model_path("qwen2")


def kto_config(tmp_path, **kwargs) -> KTOConfig:
    defaults = dict(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4, per_device_eval_batch_size=4,
        max_steps=1, learning_rate=1e-2, logging_steps=1, save_strategy="no", gradient_checkpointing=False,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    defaults.update(kwargs)
    return KTOConfig(**defaults)


@pytest.fixture(scope="module")
def unpaired():
    return load_test_dataset("standard_unpaired_preference").select(range(12))


def frozen(model: torch.nn.Module) -> bool:
    return not model.training and not any(param.requires_grad for param in model.parameters())


def test_dpo_and_the_unpaired_trainers_share_the_mixin():
    assert issubclass(DPOTrainer, ReferenceModelMixin) and issubclass(KTOTrainer, ReferenceModelMixin)


def test_invalid_reference_combinations_raise(tmp_path):
    from peft import LoraConfig

    model = AutoModelForCausalLM.from_pretrained(MODEL)
    kto, dpo = kto_config(tmp_path), DPOConfig(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(ValueError, match="same object"):
        validate_reference_options(kto, model, model, None)
    validate_reference_options(kto, MODEL, MODEL, None)  # the same id loads two models: fine
    with pytest.raises(ValueError, match="ref_model_init_kwargs"):
        validate_reference_options(
            kto_config(tmp_path, ref_model_init_kwargs={"dtype": "float32"}), MODEL, model, None
        )
    with pytest.raises(ValueError, match="drop ref_model.$"):  # KTO has no force_use_ref_model to suggest
        validate_reference_options(kto, MODEL, MODEL, LoraConfig(r=2))
    with pytest.raises(ValueError, match="force_use_ref_model=True"):
        validate_reference_options(dpo, MODEL, MODEL, LoraConfig(r=2))
    with pytest.raises(ValueError, match="sync_ref_model"):
        validate_reference_options(kto_config(tmp_path, sync_ref_model=True), MODEL, None, LoraConfig(r=2))


def test_setup_ref_model_loads_freezes_copies_or_defers(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = AutoModelForCausalLM.from_pretrained(MODEL)
    loaded = ReferenceModelMixin._setup_ref_model(model, MODEL, kto_config(tmp_path))
    assert loaded is not model and frozen(loaded)
    explicit = AutoModelForCausalLM.from_pretrained(MODEL).train()
    assert ReferenceModelMixin._setup_ref_model(model, explicit, kto_config(tmp_path)) is explicit and frozen(explicit)
    copy = ReferenceModelMixin._setup_ref_model(model, None, kto_config(tmp_path))
    assert frozen(copy) and all(param.requires_grad for param in model.parameters())  # the policy stays trainable
    for (name, param), ref_param in zip(model.named_parameters(), copy.parameters()):
        assert torch.equal(param, ref_param) and param.data_ptr() != ref_param.data_ptr(), name
    precompute = kto_config(tmp_path, precompute_ref_log_probs=True)
    assert ReferenceModelMixin._setup_ref_model(model, None, precompute) is None
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(MODEL), LoraConfig(r=2))
    assert ReferenceModelMixin._setup_ref_model(peft_model, None, kto_config(tmp_path)) is None
    reference_free = DPOConfig(output_dir=str(tmp_path), report_to="none", reference_free=True)
    assert ReferenceModelMixin._setup_ref_model(model, None, reference_free) is None


def test_reference_context_runs_in_eval_mode_with_adapters_disabled(tmp_path, unpaired):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trainer = KTOTrainer(MODEL, args=kto_config(tmp_path), train_dataset=unpaired, peft_config=lora)
    assert trainer.ref_model is None and trainer._reference_description() == "base model (adapters disabled)"
    policy = trainer.accelerator.unwrap_model(trainer.model)
    policy.train()
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 8]])}
    with trainer._reference_model() as reference:
        assert reference is policy and not reference.training
        ref_logits = reference(**inputs).logits
    assert policy.training  # restored
    base = AutoModelForCausalLM.from_pretrained(MODEL).eval()
    torch.testing.assert_close(ref_logits, base(**inputs).logits)
    assert not torch.allclose(policy.eval()(**inputs).logits, ref_logits)  # the adapters are back on


def test_initial_policy_as_reference_is_refused_once_trained(tmp_path, unpaired):
    args = kto_config(tmp_path, precompute_ref_log_probs=True)
    trainer = KTOTrainer(MODEL, args=args, train_dataset=unpaired)
    assert trainer.ref_model is None and trainer._reference_description() == "frozen initial policy, precomputed"
    trainer.train()
    assert {"ref_logps", "ref_kl_logps"} <= set(trainer.train_dataset.column_names)
    with pytest.raises(ValueError, match="not precomputed before training"):
        with trainer._reference_model():
            pass


def test_reference_columns_keep_dataset_order_with_any_batch_size(tmp_path, unpaired):
    reference = AutoModelForCausalLM.from_pretrained(MODEL)
    trainer = KTOTrainer(MODEL, ref_model=reference, args=kto_config(tmp_path), train_dataset=unpaired)
    rows = trainer.train_dataset.select_columns(["prompt_ids", "completion_ids", "label"])

    def score(batch):
        return trainer.compute_ref_log_probs({k: v for k, v in batch.items() if not k.startswith("kl_")})[0], batch[
            "input_ids"
        ][:, 0].float()

    trainer.args.precompute_ref_batch_size = 5  # 12 rows: batches of 5, 5 and 2
    logps, first_tokens = trainer._compute_reference_columns(rows, 4, score)
    assert first_tokens == [float(ids[0]) for ids in rows["prompt_ids"]]
    single = [trainer.compute_ref_log_probs(trainer.data_collator([row]))[0].item() for row in rows.select(range(3))]
    assert logps[:3] == pytest.approx(single, abs=1e-4)


def test_sync_ref_model_registers_the_callback(tmp_path, unpaired):
    trainer = KTOTrainer(MODEL, args=kto_config(tmp_path, sync_ref_model=True), train_dataset=unpaired)
    callbacks = [c for c in trainer.callback_handler.callbacks if isinstance(c, SyncRefModelCallback)]
    assert len(callbacks) == 1 and callbacks[0].ref_model is trainer.ref_model
    with pytest.raises(ValueError, match="precompute_ref_log_probs"):
        kto_config(tmp_path, sync_ref_model=True, precompute_ref_log_probs=True)


def test_iterable_datasets_cannot_hold_precomputed_columns(tmp_path, unpaired):
    trainer = KTOTrainer(MODEL, args=kto_config(tmp_path, precompute_ref_log_probs=True), train_dataset=unpaired)
    with pytest.raises(ValueError, match="map-style"):
        trainer._with_ref_log_probs(Dataset.from_dict({"a": [1]}).to_iterable_dataset(), 2, "eval")
