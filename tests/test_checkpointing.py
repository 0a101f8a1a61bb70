"""Extra checkpoint state (safetensors + JSON, validated on load) and atomic checkpoints."""

import errno
import json
import os
import pickle
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint, sort_checkpoints

from trl import SFTConfig, SFTTrainer
from trl.testing import get_tiny_model_path, load_test_dataset
from trl.trainer.checkpoint_state import (
    capture_rng_state,
    describe_os_error,
    load_state,
    parse_rng_state,
    restore_rng_state,
    save_state,
)
from trl.trainer.checkpointing import CheckpointWriteError

from .testing_utils import StopAt


class RecordRandomState(TrainerCallback):
    """Records a draw-free fingerprint of the Python, NumPy and torch random states at the start of every step."""

    def __init__(self):
        self.states: dict[int, tuple] = {}

    def on_step_begin(self, args, state, control, **kwargs):
        self.states[state.global_step + 1] = (
            random.getstate(),
            np.random.get_state()[1].tolist(),
            torch.get_rng_state().tolist(),
        )


class _WritesMarker:
    """A pickle payload: unpickling it creates `path` (the test asserts it never exists)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_pickle_payload(target, marker) -> None:
    target.write_bytes(pickle.dumps(_WritesMarker(str(marker))))


# ------------------------------------------------------------------------------------------- state files
def test_nested_state_round_trips_with_dtypes_shapes_and_scalars(tmp_path):
    state = {
        "step": 7,
        "ratio": 0.25,
        "name": "grpo",
        "flag": True,
        "nothing": None,
        "pair": (1, 2),
        "buffer": {
            "slices": [
                {"ids": torch.arange(6).reshape(2, 3), "mask": torch.tensor([True, False])},
                {"ids": torch.zeros(0, 3, dtype=torch.long), "logps": torch.randn(2, 3, dtype=torch.bfloat16)},
            ],
            "tokens": [3.0, 0.0],
        },
        "view": torch.arange(10)[2:5],  # a view of a larger tensor is saved as its own values
    }
    save_state(state, str(tmp_path), "extra_state")
    loaded = load_state(str(tmp_path), "extra_state")
    assert {key: loaded[key] for key in ("step", "ratio", "name", "flag", "nothing")} == {
        "step": 7, "ratio": 0.25, "name": "grpo", "flag": True, "nothing": None,
    }  # fmt: skip
    assert loaded["pair"] == [1, 2]  # tuples come back as lists
    first, second = loaded["buffer"]["slices"]
    assert torch.equal(first["ids"], torch.arange(6).reshape(2, 3)) and first["mask"].tolist() == [True, False]
    assert second["ids"].shape == (0, 3) and second["ids"].dtype == torch.long
    assert torch.equal(second["logps"], state["buffer"]["slices"][1]["logps"])
    assert loaded["buffer"]["tokens"] == [3.0, 0.0] and loaded["view"].tolist() == [2, 3, 4]
    assert load_state(str(tmp_path), "absent") is None


def test_unsupported_values_are_refused_when_saving(tmp_path):
    with pytest.raises(TypeError, match=r"'model' is a Linear"):
        save_state({"model": torch.nn.Linear(1, 1)}, str(tmp_path), "s")
    with pytest.raises(TypeError, match="keys must be strings"):
        save_state({"moments": {1: 2.0}}, str(tmp_path), "s")


def test_rng_state_round_trips_python_numpy_and_torch():
    saved = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(3))
    json.dumps(saved["python"]), json.dumps(saved["numpy"])  # JSON-able as they are
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    restore_rng_state(parse_rng_state(saved))
    assert random.random() == expected[0] and np.random.rand() == expected[1]
    assert torch.equal(torch.rand(3), expected[2])


@pytest.fixture
def saved_state(tmp_path):
    save_state({"step": 3, "rng": torch.get_rng_state(), "logps": torch.ones(2)}, str(tmp_path), "extra_state")
    return tmp_path


def test_invalid_json_is_rejected_with_the_file_named(saved_state):
    path = saved_state / "extra_state.json"
    path.write_text(path.read_text()[:-5])
    with pytest.raises(ValueError, match=r"extra_state\.json is not valid JSON.*corrupted, was tampered with"):
        load_state(str(saved_state), "extra_state")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda doc: doc.update(version=99), r"format version 99; this trl reads versions 1 to 1"),
        (lambda doc: doc.pop("format"), r"not a trl checkpoint state file"),
        (lambda doc: doc.pop("tensors"), r"lacks the keys \['tensors'\]"),
        (lambda doc: doc["tensors"]["logps"].update(dtype="int64"), r"holds `logps` as float32\[2\].*int64\[2\]"),
        (lambda doc: doc["state"].update(step={"__tensor__": "../../etc"}), r"refers to a tensor '../../etc'"),
    ],
)
def test_edited_manifest_is_rejected(saved_state, edit, message):
    path = saved_state / "extra_state.json"
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=message):
        load_state(str(saved_state), "extra_state")


def test_tensor_replaced_with_another_dtype_is_rejected(saved_state):
    save_file(
        {"rng": torch.get_rng_state(), "logps": torch.ones(2, dtype=torch.float64)},
        str(saved_state / "extra_state.safetensors"),
    )
    with pytest.raises(ValueError, match=r"extra_state\.safetensors holds `logps` as float64\[2\]"):
        load_state(str(saved_state), "extra_state")
    save_file({"rng": torch.get_rng_state()}, str(saved_state / "extra_state.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['logps'\]"):
        load_state(str(saved_state), "extra_state")


def test_pickle_in_place_of_the_tensors_is_rejected_without_running_it(saved_state, tmp_path):
    marker = tmp_path / "code_ran"
    write_pickle_payload(saved_state / "extra_state.safetensors", marker)
    with pytest.raises(ValueError, match=r"extra_state\.safetensors is not a valid safetensors file"):
        load_state(str(saved_state), "extra_state")
    assert not marker.exists()


def test_missing_half_of_the_pair_is_rejected(saved_state):
    (saved_state / "extra_state.safetensors").unlink()
    with pytest.raises(ValueError, match=r"extra_state\.safetensors is missing"):
        load_state(str(saved_state), "extra_state")
    save_file({}, str(saved_state / "other.safetensors"))
    with pytest.raises(ValueError, match=r"other\.json is missing although other\.safetensors exists"):
        load_state(str(saved_state), "other")


def test_write_errors_name_the_real_cause():
    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device")).startswith("no space left on device")
    wrapped = RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull }) (os error 28)")
    assert describe_os_error(wrapped).startswith("no space left on device")
    assert describe_os_error(RuntimeError("boom")) == "RuntimeError: boom"


# ------------------------------------------------------------------------------------------- trainers
def make_trainer(output_dir, **overrides) -> SFTTrainer:
    values = dict(
        output_dir=str(output_dir), report_to="none", per_device_train_batch_size=4, max_steps=3, learning_rate=1e-2,
        logging_steps=1, save_strategy="steps", save_steps=1, max_length=64, seed=0,
    )  # fmt: skip
    values.update(overrides)
    extra = {key: values.pop(key) for key in ("callbacks", "eval_dataset") if key in values}
    dataset = load_test_dataset("standard_language_modeling")
    return SFTTrainer(get_tiny_model_path("qwen2"), args=SFTConfig(**values), train_dataset=dataset, **extra)


def test_checkpoint_holds_extra_state_and_no_pickled_rng(tmp_path):
    make_trainer(tmp_path, max_steps=1).train()
    files = set(os.listdir(tmp_path / "checkpoint-1"))
    assert {"extra_state.json", "extra_state.safetensors", "trainer_state.json", "model.safetensors"} <= files
    assert not any(name.startswith("rng_state") for name in files)
    assert [name for name in os.listdir(tmp_path) if name.startswith(".tmp-")] == []
    state = load_state(str(tmp_path / "checkpoint-1"), "extra_state")
    assert set(state) == {"rng", "total_train_tokens"} and state["rng"]["cpu"].dtype == torch.uint8


def test_num_tokens_resumes_exactly_when_saves_fall_between_logs(tmp_path):
    # Logged at steps 2 and 4, saved at step 3: the count at the checkpoint was never logged, so only the extra
    # state can continue it.
    schedule = dict(max_steps=4, logging_steps=2, save_steps=3)
    straight = make_trainer(tmp_path / "straight", save_strategy="no", **schedule)
    straight.train()
    make_trainer(tmp_path / "out", max_steps=3, logging_steps=2, save_steps=3).train()
    resumed = make_trainer(tmp_path / "out", **schedule)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))

    def logged(trainer):
        return {entry["step"]: entry["num_tokens"] for entry in trainer.state.log_history if "num_tokens" in entry}

    assert logged(straight)[4] > logged(straight)[2] > 0
    assert logged(resumed)[4] == logged(straight)[4]
    # A running total is logged as it stands at the logging step, not averaged over the window.
    per_step = make_trainer(tmp_path / "per_step", save_strategy="no", max_steps=4, logging_steps=1)
    per_step.train()
    assert logged(straight) == {step: logged(per_step)[step] for step in (2, 4)}


def test_disk_full_at_checkpoint_2_leaves_checkpoint_1_and_resume_is_exact(tmp_path, monkeypatch):
    straight_rng = RecordRandomState()
    straight = make_trainer(tmp_path / "straight", save_strategy="no", callbacks=[straight_rng])
    straight.train()
    output_dir = tmp_path / "out"
    real_save = torch.save

    def full_disk_at_checkpoint_2(obj, f, *args, **kwargs):
        if "checkpoint-2" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk_at_checkpoint_2)
    with pytest.raises(CheckpointWriteError) as failure:
        make_trainer(output_dir).train()
    message = str(failure.value)
    assert "Writing checkpoint-2 failed: no space left on device" in message and "GiB free" in message
    assert f"The last complete checkpoint is {output_dir / 'checkpoint-1'}" in message
    assert failure.value.errno == errno.ENOSPC
    assert sorted(os.listdir(output_dir)) == ["README.md", "checkpoint-1"]  # no checkpoint-2, no staging directory
    assert get_last_checkpoint(str(output_dir)) == str(output_dir / "checkpoint-1")

    monkeypatch.setattr(torch, "save", real_save)
    resumed_rng = RecordRandomState()
    resumed = make_trainer(output_dir, callbacks=[resumed_rng])
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
    assert sorted(resumed_rng.states) == [2, 3]  # random states restored from checkpoint-1's extra state
    # NumPy and torch continue as in the uninterrupted run. Python's state is not reproducible between two fresh
    # runs (a dependency draws from it a varying number of times), so it is checked against the checkpoint.
    assert all(resumed_rng.states[step][1:] == straight_rng.states[step][1:] for step in (2, 3))
    saved = parse_rng_state(load_state(str(output_dir / "checkpoint-1"), "extra_state")["rng"])
    assert resumed_rng.states[2][0] == saved["python"]
    for (name, param), other in zip(straight.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(param, other, msg=name)


def test_failure_before_any_checkpoint_says_there_is_none(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda *args, **kwargs: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    with pytest.raises(CheckpointWriteError, match=r"input/output error.*There is no complete checkpoint"):
        make_trainer(tmp_path, max_steps=1).train()
    assert not (tmp_path / "checkpoint-1").exists()


def test_stale_staging_directory_is_ignored_on_resume_and_removed(tmp_path):
    make_trainer(tmp_path, max_steps=3, callbacks=[StopAt(1)]).train()
    stale = tmp_path / ".tmp-checkpoint-2"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    assert get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-1")
    assert sort_checkpoints(str(tmp_path)) == [str(tmp_path / "checkpoint-1")]
    resumed = make_trainer(tmp_path, save_total_limit=1)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 3
    assert sorted(name for name in os.listdir(tmp_path) if "checkpoint" in name) == ["checkpoint-3"]


def test_tampered_extra_state_stops_the_resume_without_running_code(tmp_path):
    make_trainer(tmp_path, max_steps=1).train()
    marker = tmp_path / "code_ran"
    write_pickle_payload(tmp_path / "checkpoint-1" / "extra_state.safetensors", marker)
    with pytest.raises(ValueError, match=r"checkpoint-1/extra_state\.safetensors is not a valid safetensors file"):
        make_trainer(tmp_path, max_steps=2).train(resume_from_checkpoint=True)
    assert not marker.exists()


def test_state_of_another_shape_names_the_trainer_and_the_file(tmp_path):
    make_trainer(tmp_path, max_steps=1).train()
    save_state({"rng": {"python": 1}}, str(tmp_path / "checkpoint-1"), "extra_state")
    with pytest.raises(ValueError, match=r"extra_state\.json does not hold the state SFTTrainer expects"):
        make_trainer(tmp_path, max_steps=2).train(resume_from_checkpoint=True)


def test_pickled_rng_of_an_older_checkpoint_is_read_with_weights_only(tmp_path):
    # transformers reads `rng_state.pth` with `torch.load(..., weights_only=True)`: a payload is refused, not run.
    make_trainer(tmp_path, max_steps=1).train()
    checkpoint = tmp_path / "checkpoint-1"
    for name in ("extra_state.json", "extra_state.safetensors"):
        (checkpoint / name).unlink()
    marker = tmp_path / "code_ran"
    write_pickle_payload(checkpoint / "rng_state.pth", marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        make_trainer(tmp_path, max_steps=2).train(resume_from_checkpoint=True)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- online trainers
def make_grpo(output_dir, **overrides):
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    values = dict(
        output_dir=str(output_dir), report_to="none", max_steps=2, per_device_train_batch_size=4, num_generations=2,
        max_completion_length=8, logging_steps=1, save_strategy="steps", save_steps=1, learning_rate=1e-2, seed=0,
        num_iterations=2, gradient_checkpointing=False,
    )  # fmt: skip
    values.update(overrides)

    def even_tokens(completion_ids, **kwargs):
        return [sum(token % 2 == 0 for token in ids) / max(len(ids), 1) for ids in completion_ids]

    dataset = load_test_dataset("standard_prompt_only")
    return GRPOTrainer(
        get_tiny_model_path("qwen2"), reward_funcs=even_tokens, args=GRPOConfig(**values), train_dataset=dataset
    )


def test_rollout_state_is_part_of_the_extra_state(tmp_path):
    trainer = make_grpo(tmp_path, max_steps=1)
    trainer.train()
    files = os.listdir(tmp_path / "checkpoint-1")
    # Pickles left are transformers' own: optimizer and scheduler (read with weights_only=True), training_args.bin
    # (never read on resume).
    assert sorted(name for name in files if name.endswith((".pt", ".pth", ".bin"))) == [
        "optimizer.pt", "scheduler.pt", "training_args.bin",
    ]  # fmt: skip
    rollout = load_state(str(tmp_path / "checkpoint-1"), "extra_state")["rollout"]
    assert rollout["step"] == 1 and rollout["entropy_coef"] == trainer._entropy_coef
    saved, live = rollout["buffer"]["slices"], trainer._buffer.slices
    assert len(saved) == len(live) and saved[0].keys() == live[0].keys()
    assert all(torch.equal(saved[0][key], live[0][key].cpu()) for key in live[0])
    assert torch.equal(rollout["generation_rng"]["cpu"], trainer._generation_rng.state_dict()["cpu"])


def test_pickled_rollout_state_of_an_older_checkpoint_is_never_unpickled(tmp_path):
    make_grpo(tmp_path, max_steps=1).train()
    checkpoint = tmp_path / "checkpoint-1"
    for name in ("extra_state.json", "extra_state.safetensors"):
        (checkpoint / name).unlink()
    marker = tmp_path / "code_ran"
    write_pickle_payload(checkpoint / "rollout_state.pt", marker)
    resumed = make_grpo(tmp_path)
    with pytest.warns(UserWarning, match=r"rollout_state\.pt is a pickle from an older trl and is not read"):
        resumed.train(resume_from_checkpoint=True)
    assert not marker.exists() and resumed.state.global_step == 2


@pytest.mark.distributed
@pytest.mark.xdist_group("distributed")
def test_two_processes_write_one_checkpoint_each_with_its_own_state_and_resume_exactly(tmp_path):
    from pathlib import Path

    from .testing_utils import run_accelerate

    script = str(Path(__file__).parent / "scripts" / "checkpoint_and_resume.py")
    run_accelerate([script, str(tmp_path), "full"], num_processes=2)
    checkpoint = tmp_path / "full" / "checkpoint-1"
    files = set(os.listdir(checkpoint))
    assert {f"extra_state_{rank}.{ext}" for rank in (0, 1) for ext in ("json", "safetensors")} <= files
    assert "extra_state.json" not in files and not any(
        name.startswith(".tmp-") for name in os.listdir(checkpoint.parent)
    )
    states = [load_state(str(checkpoint), f"extra_state_{rank}") for rank in (0, 1)]
    assert all(state["rollout"]["step"] == 1 for state in states)
    # Each process buffers its own completions, sampled from its own generation stream.
    assert not torch.equal(
        states[0]["rollout"]["generation_rng"]["cpu"], states[1]["rollout"]["generation_rng"]["cpu"]
    )
    run_accelerate([script, str(tmp_path), "resume"], num_processes=2)
    full = [(tmp_path / f"full-rank-{rank}.txt").read_text().split() for rank in (0, 1)]
    resumed = [(tmp_path / f"resume-rank-{rank}.txt").read_text().split() for rank in (0, 1)]
    assert full[0][0] == "2" and resumed == full  # the step-2 loss of the resumed run equals the uninterrupted one


def test_best_checkpoint_is_recorded_under_its_final_name_and_kept_by_rotation(tmp_path):
    dataset = load_test_dataset("standard_language_modeling")
    trainer = make_trainer(
        tmp_path, max_steps=3, eval_strategy="steps", eval_steps=1, save_total_limit=1, load_best_model_at_end=True,
        eval_dataset=dataset.select(range(4)),
    )  # fmt: skip
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best == str(tmp_path / f"checkpoint-{trainer.state.best_global_step}") and os.path.isdir(best)
    kept = sorted(name for name in os.listdir(tmp_path) if "checkpoint" in name)
    assert kept == sorted({"checkpoint-3", os.path.basename(best)})
    saved = json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())
    assert saved["best_model_checkpoint"] == best
