import json
import math
import textwrap

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from trl.testing import get_tiny_model_path, get_tiny_tokenizer_path, load_test_dataset
from trl.trainer.preference_data import tokenize_reward_example
from trl.trainer.reward_config import RewardConfig
from trl.trainer.reward_trainer import RewardTrainer
from trl.trainer.utils import compute_accuracy

from .testing_utils import run_accelerate, snapshot


MODEL = get_tiny_model_path("qwen2-seq-cls")


def make_config(tmp_path, **kwargs) -> RewardConfig:
    defaults = dict(
        output_dir=str(tmp_path),
        report_to="none",
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_steps=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
    )
    defaults.update(kwargs)
    return RewardConfig(**defaults)


def test_config_defaults_follow_the_reference():
    args = RewardConfig(output_dir="out")
    expected = {
        "learning_rate": 1e-4, "logging_steps": 10, "gradient_checkpointing": True, "model_init_kwargs": None,
        "trust_remote_code": False, "chat_template_path": None, "disable_dropout": True, "dataset_num_proc": None,
        "eos_token": None, "max_length": 1024, "pad_to_multiple_of": None, "center_rewards_coefficient": None,
        "activation_offloading": False, "pad_token": None,
    }  # fmt: skip
    assert {name: getattr(args, name) for name in expected} == expected
    with pytest.raises(ValueError, match="center_rewards_coefficient"):
        RewardConfig(output_dir="out", center_rewards_coefficient=-1.0)


def test_tokenisation_of_whole_sequences():
    tokenizer = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path("chatml"))
    explicit = {"prompt": "What is 1 plus 1?", "chosen": " It is 2.", "rejected": " zzz."}
    ids = tokenize_reward_example(explicit, tokenizer, eos_token=tokenizer.eos_token)
    assert ids["chosen_ids"] == tokenizer("What is 1 plus 1? It is 2." + tokenizer.eos_token)["input_ids"]
    conversation = load_test_dataset("conversational_implicit_prompt_preference")[0]
    ids = tokenize_reward_example(conversation, tokenizer)
    expected = tokenizer.apply_chat_template(conversation["rejected"], tokenize=True, return_dict=True)["input_ids"]
    assert ids["rejected_ids"] == list(expected)


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
    trainer = RewardTrainer(MODEL, args=make_config(tmp_path), train_dataset=load_test_dataset(config_name))
    before = snapshot(trainer.model)
    trainer.train()
    unchanged = [name for name, param in trainer.model.named_parameters() if torch.equal(param, before[name])]
    assert not unchanged, unchanged[:5]
    logged = trainer.state.log_history[0]
    assert {"accuracy", "min_reward", "mean_reward", "max_reward", "margin", "num_tokens"} <= set(logged)
    assert logged["min_reward"] <= logged["mean_reward"] <= logged["max_reward"]


def test_accuracy_rises_above_chance_on_learnable_preferences(tmp_path):
    train = load_test_dataset("standard_preference")
    test = load_test_dataset("standard_preference", split="test")
    args = make_config(tmp_path, max_steps=12, learning_rate=3e-3, per_device_train_batch_size=8)
    trainer = RewardTrainer(MODEL, args=args, train_dataset=train, eval_dataset=test, compute_metrics=compute_accuracy)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_accuracy"] == 1.0 and after["eval_accuracy"] > before["eval_accuracy"]
    assert after["eval_loss"] < before["eval_loss"] < 0.75


def test_loss_follows_the_bradley_terry_formula_with_margin_and_centring(tmp_path):
    data = load_test_dataset("standard_preference").select(range(4))
    data = data.add_column("margin", [0.5, -1.0, 2.0, 0.0])
    args = make_config(tmp_path, center_rewards_coefficient=0.01)
    trainer = RewardTrainer(MODEL, args=args, train_dataset=data)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    torch.testing.assert_close(batch["margin"], torch.tensor([0.5, -1.0, 2.0, 0.0]))
    rewards = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    chosen, rejected = rewards[:4], rewards[4:]
    expected = -F.logsigmoid(chosen - rejected - batch["margin"]).mean() + 0.01 * ((chosen + rejected) ** 2).mean()
    torch.testing.assert_close(trainer.compute_loss(trainer.model, batch), expected)
    # Raising a pair's margin raises the loss.
    batch["margin"] = batch["margin"] + 1.0
    assert trainer.compute_loss(trainer.model, batch) > expected


def test_causal_lm_checkpoint_gets_a_new_score_head(tmp_path):
    with pytest.warns(UserWarning, match="newly initialised"):
        trainer = RewardTrainer(get_tiny_model_path("qwen2"), args=make_config(tmp_path),
                                train_dataset=load_test_dataset("standard_preference"))  # fmt: skip
    assert trainer.model.config.num_labels == 1 and trainer.model.score.out_features == 1
    trainer.train()
    with pytest.raises(ValueError, match="AutoModelForSequenceClassification"):
        RewardTrainer(AutoModelForCausalLM.from_pretrained(get_tiny_model_path("qwen2")), args=make_config(tmp_path),
                      train_dataset=load_test_dataset("standard_preference"))  # fmt: skip


def test_peft_trains_adapters_and_the_score_head(tmp_path):
    from peft import LoraConfig

    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS")
    trainer = RewardTrainer(MODEL, args=make_config(tmp_path), train_dataset=load_test_dataset("standard_preference"),
                            peft_config=peft_config)  # fmt: skip
    before = snapshot(trainer.model)
    trainer.train()
    for name, param in trainer.model.named_parameters():
        trained = "lora_B" in name or ("modules_to_save" in name and "score" in name)
        if trained:
            assert not torch.equal(param, before[name]), name
        elif "lora_" not in name and "modules_to_save" not in name:
            assert torch.equal(param, before[name]), name
    # A causal-LM task type is corrected (with a warning) and the head is added to modules_to_save.
    with pytest.warns(UserWarning, match="SEQ_CLS"):
        trainer = RewardTrainer(MODEL, args=make_config(tmp_path), train_dataset=load_test_dataset("standard_preference"),
                                peft_config=LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))  # fmt: skip
    assert any(
        "modules_to_save" in name and "score" in name
        for name, p in trainer.model.named_parameters()
        if p.requires_grad
    )


def test_long_pairs_are_dropped_and_legacy_columns_accepted(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    short, long = tokenizer("a b")["input_ids"], tokenizer(" ".join(["word"] * 40))["input_ids"]
    data = Dataset.from_dict(
        {"input_ids_chosen": [short, long, short], "attention_mask_chosen": [[1] * 2, [1] * 40, [1] * 2],
         "input_ids_rejected": [short, short, short], "attention_mask_rejected": [[1] * 2] * 3}
    )  # fmt: skip
    with pytest.warns(UserWarning, match="Dropped 1 of 3"):
        trainer = RewardTrainer(MODEL, args=make_config(tmp_path, max_length=16), train_dataset=data)
    assert trainer.train_dataset.column_names == ["chosen_ids", "rejected_ids"]
    assert len(trainer.train_dataset) == 2
    with pytest.raises(ValueError, match="'chosen' and 'rejected'"):
        RewardTrainer(MODEL, args=make_config(tmp_path), train_dataset=Dataset.from_dict({"text": ["a"]}))


def test_eval_and_model_card(tmp_path):
    evals = {"std": load_test_dataset("standard_preference", split="test")}
    trainer = RewardTrainer(MODEL, args=make_config(tmp_path, max_steps=1),
                            train_dataset=load_test_dataset("standard_preference"), eval_dataset=evals)  # fmt: skip
    metrics = trainer.evaluate()
    assert {"eval_std_loss", "eval_std_accuracy", "eval_std_margin", "eval_std_mean_reward"} <= set(metrics)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "final")
    assert model.config.num_labels == 1
    assert "reward-trainer" in (tmp_path / "final" / "README.md").read_text()


_DISTRIBUTED_SCRIPT = """
import json, sys
from trl.trainer.reward_config import RewardConfig
from trl.trainer.reward_trainer import RewardTrainer
from trl.testing import get_tiny_model_path, load_test_dataset

output_dir = sys.argv[1]
args = RewardConfig(output_dir=output_dir, report_to="none", per_device_train_batch_size=2, max_steps=2,
                    learning_rate=1e-2, logging_steps=1, save_strategy="no", gradient_checkpointing=False,
                    disable_tqdm=True, seed=0)
trainer = RewardTrainer(get_tiny_model_path("qwen2-seq-cls"), args=args, train_dataset=load_test_dataset("standard_preference"))
trainer.train()
if trainer.accelerator.is_main_process:
    with open(f"{output_dir}/log.json", "w") as file:
        json.dump(trainer.state.log_history, file)
"""


@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    script = tmp_path / "train_reward.py"
    script.write_text(textwrap.dedent(_DISTRIBUTED_SCRIPT))
    run_accelerate([str(script), str(tmp_path)], num_processes=2, timeout=120)
    two = json.loads((tmp_path / "log.json").read_text())
    single = RewardTrainer(
        MODEL, args=make_config(tmp_path / "single"), train_dataset=load_test_dataset("standard_preference")
    )
    single.train()
    for step in range(2):
        for key in ("loss", "accuracy", "margin", "min_reward", "max_reward", "num_tokens"):
            expected = single.state.log_history[step][key]
            assert two[step][key] == pytest.approx(expected, rel=1e-4, abs=1e-5), key
    assert math.isfinite(two[-1]["train_loss"])


def test_reward_script_trains_from_the_command_line_arguments(tmp_path):
    from trl.scripts import reward
    from trl.scripts.utils import parse_script_args
    from trl.testing import get_dataset_path

    args = parse_script_args(
        reward.make_parser(),
        ["--model_name_or_path", get_tiny_model_path("qwen2"), "--dataset_name", get_dataset_path(),
         "--dataset_config", "standard_implicit_prompt_preference", "--output_dir", str(tmp_path), "--max_steps", "1",
         "--report_to", "none", "--save_strategy", "no", "--use_peft", "--gradient_checkpointing", "false"],
    )  # fmt: skip
    assert args[2].lora_task_type == "SEQ_CLS"
    reward.main(*args)
    assert (tmp_path / "adapter_config.json").exists()
