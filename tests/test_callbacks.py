"""Callbacks of trl.trainer.callbacks and trl.experimental: each trains a tiny model and checks what it writes."""

import io
import sys
import types

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

from trl import BEMACallback, RichProgressCallback, WeaveCallback
from trl.testing import get_tiny_model_path, get_tiny_tokenizer_path, load_test_dataset


MODEL = get_tiny_model_path("qwen2")


def lm_dataset(rows: int = 8) -> Dataset:
    ids = [[1 + (i + j) % 50 for j in range(6)] for i in range(rows)]
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def make_trainer(tmp_path, callbacks=(), eval_dataset=None, **kwargs) -> Trainer:
    defaults = dict(
        output_dir=str(tmp_path),
        report_to=[],
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        max_steps=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    defaults.update(kwargs)
    model = AutoModelForCausalLM.from_pretrained(MODEL)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**defaults),
        train_dataset=lm_dataset(),
        eval_dataset=eval_dataset,
        callbacks=list(callbacks),
    )
    trainer.processing_class = AutoTokenizer.from_pretrained(get_tiny_tokenizer_path())
    return trainer


class WeightRecorder(TrainerCallback):
    """Float32 CPU copies of the trainable weights at the start and at the end of every step."""

    def __init__(self):
        self.steps = {}

    def _record(self, step, model):
        self.steps[step] = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._record(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._record(state.global_step, model)


def expected_bema(recorded, callback, start, steps):
    """BEMA by the formula of the module docstring, from the recorded weights."""
    theta0 = recorded[start]
    ema = {n: v.clone() for n, v in theta0.items()}
    bema = {n: v.clone() for n, v in theta0.items()}
    for step in steps:
        t = step - start
        beta = max((callback.lag + callback.multiplier * t) ** -callback.ema_power, callback.min_ema_multiplier)
        alpha = (callback.lag + callback.multiplier * t) ** -callback.bias_power
        for name, theta in recorded[step].items():
            ema[name] = (1 - beta) * ema[name] + beta * theta
            bema[name] = alpha * (theta - theta0[name]) + ema[name]
    return bema


# ---------------------------------------------------------------------------------------------------- rich progress
def test_rich_progress_draws_bars_and_the_last_metrics(tmp_path):
    from rich.console import Console

    console = Console(file=io.StringIO(), record=True, width=100, force_terminal=True)
    callback = RichProgressCallback(console=console)
    trainer = make_trainer(
        tmp_path, callbacks=[callback], eval_dataset=lm_dataset(4), eval_strategy="steps", eval_steps=2
    )
    trainer.train()
    text = console.export_text()
    assert "Training" in text and "4/4" in text
    assert "Evaluating" in text  # the evaluation bar is shown while evaluating
    assert "Last logged metrics" in text
    assert "eval_loss" in callback.metrics and "loss" in callback.metrics
    assert float(callback.metrics["eval_loss"]) == pytest.approx(trainer.state.log_history[-2]["eval_loss"], 1e-3)
    assert callback.live is None and callback.prediction_task is None  # the panel is closed at the end


def test_rich_progress_without_rich_names_the_install(monkeypatch):
    from trl.trainer import rich_progress

    monkeypatch.setattr(rich_progress, "is_rich_available", lambda: False)
    with pytest.raises(ImportError, match="pip install rich"):
        rich_progress.RichProgressCallback()


# ---------------------------------------------------------------------------------------------------- BEMA
@pytest.mark.parametrize(
    ("kwargs", "updated_at"),
    [
        (dict(update_freq=1), [1, 2, 3, 4]),
        (dict(update_freq=2), [2, 4]),
        (dict(update_freq=1, update_after=2), [3, 4]),
        (dict(update_freq=1, ema_power=0.0), [1, 2, 3, 4]),  # no EMA: BEMA = θ_t + α_t (θ_t − θ_0)
    ],
)
def test_bema_follows_the_formula_and_saves_the_model(tmp_path, kwargs, updated_at):
    recorder, callback = WeightRecorder(), BEMACallback(lag=2, **kwargs)
    trainer = make_trainer(tmp_path, callbacks=[recorder, callback])
    trainer.train()
    assert callback.num_updates == len(updated_at)
    expected = expected_bema(recorder.steps, callback, kwargs.get("update_after", 0), updated_at)
    saved = load_file(tmp_path / "bema" / "model.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(dict(zip(callback.names, callback.bema, strict=True))[name], value)
        if name in saved:
            torch.testing.assert_close(saved[name].float(), value)
    # Saving swapped the BEMA weights in and out: the trained model keeps its own weights.
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(param.detach().float(), recorder.steps[4][name])


def test_bema_rejects_a_zero_update_frequency():
    with pytest.raises(ValueError, match="update_freq >= 1"):
        BEMACallback(update_freq=0)


def test_bema_updates_the_dpo_reference_model(tmp_path):
    from trl import DPOConfig
    from trl.experimental.bema_for_ref_model import BEMACallback as RefBEMACallback
    from trl.experimental.bema_for_ref_model import DPOTrainer

    callback = RefBEMACallback(update_freq=1, lag=2, update_ref_model=True, ref_model_update_freq=2)
    args = DPOConfig(
        output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
        save_strategy="no", disable_tqdm=True, gradient_checkpointing=False, seed=0,
    )  # fmt: skip
    trainer = DPOTrainer(
        MODEL, args=args, train_dataset=load_test_dataset("standard_preference"), callbacks=[callback]
    )
    before = {n: p.detach().clone() for n, p in trainer.ref_model.named_parameters()}
    recorder = WeightRecorder()
    trainer.add_callback(recorder)
    trainer.train()
    # Copied at step 2 only (step 3 is not a multiple of 2): the reference holds the BEMA of step 2.
    assert callback.num_ref_model_updates == 1
    expected = expected_bema({0: before, **recorder.steps}, callback, 0, [1, 2])
    for name, param in trainer.ref_model.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name].to(param.dtype))
    assert any(not torch.equal(before[n], p) for n, p in trainer.ref_model.named_parameters())


def test_bema_for_ref_model_takes_the_stable_parameters_then_its_own():
    import inspect

    from trl.experimental.bema_for_ref_model.callback import BEMACallback as RefBEMACallback

    stable = list(inspect.signature(BEMACallback).parameters)
    assert list(inspect.signature(RefBEMACallback).parameters) == [
        *stable,
        "update_ref_model",
        "ref_model_update_freq",
        "ref_model_update_after",
    ]
    callback = RefBEMACallback(7, 0.25, lag=3, device="cpu", update_ref_model=True, ref_model_update_freq=5)
    assert (callback.update_freq, callback.ema_power, callback.lag, callback.ref_model_update_freq) == (7, 0.25, 3, 5)
    with pytest.raises(ValueError, match="ref_model_update_freq"):
        RefBEMACallback(update_ref_model=True, ref_model_update_freq=0)
    with pytest.raises(ValueError, match="update_freq >= 1"):
        RefBEMACallback(update_freq=0)


# ---------------------------------------------------------------------------------------------------- Weave
class FakeWeave(types.ModuleType):
    """Records what the callback sends to Weave's imperative evaluation API."""

    def __init__(self):
        super().__init__("weave")
        self.projects, self.evaluations = [], []

    def init(self, project):
        self.projects.append(project)

    def EvaluationLogger(self, model, dataset):  # noqa: N802 (weave's name)
        fake = self

        class _Prediction:
            def __init__(self, inputs, output):
                self.record = {"inputs": inputs, "output": output, "scores": {}, "finished": False}

            def log_score(self, scorer, score):
                self.record["scores"][scorer] = score

            def finish(self):
                self.record["finished"] = True

        class _Logger:
            def __init__(self):
                self.evaluation = {"model": model, "dataset": dataset, "predictions": [], "summary": None}
                fake.evaluations.append(self.evaluation)

            def log_prediction(self, inputs, output):
                prediction = _Prediction(inputs, output)
                self.evaluation["predictions"].append(prediction.record)
                return prediction

            def log_summary(self, summary):
                self.evaluation["summary"] = summary

        return _Logger()


def test_weave_logs_one_scored_evaluation_per_eval(tmp_path, monkeypatch):
    from trl.trainer import weave_callback

    fake = FakeWeave()
    monkeypatch.setitem(sys.modules, "weave", fake)
    monkeypatch.setattr(weave_callback, "is_weave_available", lambda: True)
    # The eval rows carry a loss (input_ids, labels) for Trainer.evaluate and a prompt for the callback.
    eval_dataset = lm_dataset(3).add_column("prompt", ["Hello", "The sky is", "One two"])
    trainer = make_trainer(tmp_path, eval_dataset=eval_dataset, eval_strategy="steps", eval_steps=2)
    callback = WeaveCallback(
        trainer, project_name="trl-test", scorers={"length": lambda p, c: len(c)}, num_prompts=2, model_name="tiny"
    )
    trainer.add_callback(callback)
    trainer.model.generation_config.max_new_tokens = 3
    trainer.model.generation_config.do_sample = False
    trainer.train()
    assert fake.projects == ["trl-test"]
    assert len(fake.evaluations) == 2  # evaluations at steps 2 and 4
    evaluation = fake.evaluations[-1]
    assert evaluation["model"] == "tiny" and evaluation["dataset"] == "eval_dataset"
    assert [p["inputs"]["prompt"] for p in evaluation["predictions"]] == ["Hello", "The sky is"]
    lengths = [len(p["output"]) for p in evaluation["predictions"]]
    assert [p["scores"]["length"] for p in evaluation["predictions"]] == lengths
    assert all(p["finished"] for p in evaluation["predictions"])
    assert evaluation["summary"] == {"length": sum(lengths) / 2, "step": 4}


def test_weave_without_weave_names_the_install(tmp_path, monkeypatch):
    from trl.trainer import weave_callback

    monkeypatch.setattr(weave_callback, "is_weave_available", lambda: False)
    with pytest.raises(ImportError, match="pip install weave"):
        WeaveCallback(trainer=None)


# ---------------------------------------------------------------------------------------------------- merge
def fake_mergekit(monkeypatch, calls):
    """Install a stand-in `mergekit` whose `run_merge` records its arguments and writes a marker file."""
    config_module = types.ModuleType("mergekit.config")
    merge_module = types.ModuleType("mergekit.merge")

    class MergeConfiguration:
        @classmethod
        def model_validate(cls, data):
            return {"validated": data}

    def run_merge(config, out_path, options):
        import os

        os.makedirs(out_path, exist_ok=True)
        open(os.path.join(out_path, "merged.txt"), "w").write("ok")
        calls.append((config, out_path))

    config_module.MergeConfiguration = MergeConfiguration
    merge_module.run_merge = run_merge
    merge_module.MergeOptions = lambda **kwargs: kwargs
    package = types.ModuleType("mergekit")
    for name, module in {
        "mergekit": package,
        "mergekit.config": config_module,
        "mergekit.merge": merge_module,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    from trl.experimental import merge_model_callback

    monkeypatch.setattr(merge_model_callback, "is_mergekit_available", lambda: True)
    return merge_model_callback


@pytest.mark.parametrize("every_checkpoint", [False, True])
def test_merge_model_callback_merges_checkpoints_with_the_base(tmp_path, monkeypatch, every_checkpoint):
    calls = []
    module = fake_mergekit(monkeypatch, calls)
    callback = module.MergeModelCallback(module.MergeConfig("ties"), merge_at_every_checkpoint=every_checkpoint)
    trainer = make_trainer(tmp_path, callbacks=[callback], save_strategy="steps", save_steps=2)
    trainer.train()
    steps = [2, 4] if every_checkpoint else [4]
    assert [out for _, out in calls] == [str(tmp_path / f"checkpoint-{s}" / "merged") for s in steps]
    config = calls[-1][0]["validated"]
    assert config["merge_method"] == "ties" and config["base_model"] == MODEL
    assert [m["model"] for m in config["models"]] == [str(tmp_path / "checkpoint-4"), MODEL]
    assert config["models"][0]["parameters"] == {"weight": 0.5, "density": [1.0, 0.7, 0.1]}
    assert (tmp_path / "checkpoint-4" / "merged" / "merged.txt").read_text() == "ok"


def test_merge_config_layouts_per_method():
    from trl.experimental.merge_model_callback import MergeConfig

    linear = MergeConfig(policy_model_path="p", target_model_path="t", policy_model_weight=0.7).to_dict()
    assert linear["models"] == [
        {"model": "p", "parameters": {"weight": 0.7}},
        {"model": "t", "parameters": {"weight": 0.5}},
    ]
    assert "base_model" not in linear
    slerp = MergeConfig("slerp", policy_model_path="p", target_model_path="t", t_values=0.3).to_dict()
    assert slerp["base_model"] == "t" and slerp["parameters"] == {"t": 0.3}
    with pytest.raises(ValueError, match="linear, ties, dare_ties or slerp"):
        MergeConfig("average")


def test_merge_without_mergekit_names_the_install(monkeypatch):
    from trl.experimental import merge_model_callback

    monkeypatch.setattr(merge_model_callback, "is_mergekit_available", lambda: False)
    with pytest.raises(ImportError, match="pip install mergekit"):
        merge_model_callback.MergeModelCallback()


def test_callbacks_module_reexports_the_reference_helpers():
    from trl.data_utils import maybe_apply_chat_template
    from trl.import_utils import is_rich_available
    from trl.models.utils import unwrap_model_for_generation
    from trl.trainer import callbacks

    assert callbacks.maybe_apply_chat_template is maybe_apply_chat_template
    assert callbacks.is_rich_available is is_rich_available
    assert callbacks.unwrap_model_for_generation is unwrap_model_for_generation
    with pytest.raises(ModuleNotFoundError, match="pip install comet_ml"):
        callbacks.log_table_to_comet_experiment("table.csv", None)
