"""The checkpoint side of [`BaseTrainer`]: one mechanism for extra state, and checkpoints written atomically.

- **Extra state.** `extra_state_dict()` returns everything besides the model, optimizer and scheduler that a resumed
  run needs to continue exactly: the random states of this process (Python, NumPy, torch, accelerator), running
  statistics (`self.running`, e.g. BCO's reward mean δ), and what subclasses add (the online trainers' rollout
  buffer and generation random state). It is written per process as `extra_state[_<rank>].{json,safetensors}`
  (see `trl.trainer.checkpoint_state`; no pickle) and handed back to `load_extra_state_dict(state)` on resume.
- **Atomic checkpoints.** Every file of `checkpoint-N` is written into `.tmp-checkpoint-N`; after every process has
  written its part, the main process renames it to `checkpoint-N`. A crash or a full disk leaves no partial
  `checkpoint-N` for `resume_from_checkpoint=True` to pick, and the error names the cause and the last complete
  checkpoint.

transformers' own checkpoint files (`optimizer.pt`, `scheduler.pt`, `scaler.pt`, and `rng_state*.pth` of checkpoints
written before this mechanism) are read by `Trainer` with `torch.load(..., weights_only=True)`, which refuses to
build arbitrary objects; `training_args.bin` is never read on resume.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from .checkpoint_state import (
    capture_rng_state,
    load_state,
    parse_rng_state,
    publish,
    remove_stale_staging,
    restore_rng_state,
    save_state,
    staging_dir,
    state_stem,
    write_failure_message,
)


EXTRA_STATE_NAME = "extra_state"
LEGACY_RUNNING_STATE_FILE = "running.json"


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed; no partial checkpoint was left (the message names the last complete one)."""


class CheckpointingMixin:
    """Extra checkpoint state and atomic checkpoint saving for a `transformers.Trainer` subclass."""

    # ------------------------------------------------------------------------------------------ extra state
    def extra_state_dict(self) -> dict[str, Any]:
        """This process's state that the model, optimizer and scheduler files do not hold.

        Subclasses extend it (`{**super().extra_state_dict(), "mine": ...}`) with dicts, lists, scalars, strings and
        tensors, and read their part back in [`load_extra_state_dict`].
        """
        state: dict[str, Any] = {"rng": capture_rng_state()}
        if getattr(self, "running", None) is not None:
            state["running"] = self.running.state_dict()
        if hasattr(self, "_total_train_tokens"):
            # The cumulative `num_tokens` metric: exact on resume whatever `logging_steps` and `save_steps` are.
            state["total_train_tokens"] = int(self._total_train_tokens)
        return state

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what [`extra_state_dict`] returned when the checkpoint was written.

        The random states are applied where `Trainer` restores random states (once the resumed epoch's data order
        is replayed), so the draws after a resume are those of the uninterrupted run.
        """
        self._checkpoint_rng_state = parse_rng_state(state["rng"])
        if getattr(self, "running", None) is not None:
            from .utils import RunningMoments

            self.running = RunningMoments(self.accelerator, **{key: float(v) for key, v in state["running"].items()})
        if "total_train_tokens" in state and hasattr(self, "_total_train_tokens"):
            self._total_train_tokens = int(state["total_train_tokens"])

    def _extra_state_stem(self) -> str:
        return state_stem(EXTRA_STATE_NAME, self.args.process_index, self.args.world_size)

    def _save_extra_state(self, directory: str) -> None:
        save_state(self.extra_state_dict(), directory, self._extra_state_stem())

    def _load_extra_state(self, checkpoint: str) -> None:
        stem = self._extra_state_stem()
        state = load_state(checkpoint, stem)
        if state is None:
            self._load_legacy_extra_state(checkpoint)
            return
        try:
            self.load_extra_state_dict(state)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as error:
            raise ValueError(
                f"{os.path.join(checkpoint, stem)}.json does not hold the state {type(self).__name__} expects "
                f"({type(error).__name__}: {error}). The checkpoint was written by another trainer or trl version, "
                "or was tampered with; resume from a checkpoint of this trainer, or train without "
                "`resume_from_checkpoint`."
            ) from error

    def _load_legacy_extra_state(self, checkpoint: str) -> None:
        """A checkpoint without extra-state files: from another trainer, or from a trl that wrote `running.json`."""
        if getattr(self, "running", None) is None:
            return
        from .utils import RunningMoments

        path = os.path.join(checkpoint, LEGACY_RUNNING_STATE_FILE)
        if os.path.isfile(path):  # JSON: safe to read
            self.running = RunningMoments.load_from_json(self.accelerator, path)
            return
        warnings.warn(
            f"{os.path.join(checkpoint, self._extra_state_stem())}.json is missing (a checkpoint from another trainer "
            "or version): the running statistics (e.g. the reward mean δ) restart from 0, so the resumed run does "
            "not continue the interrupted one exactly.",
            UserWarning,
            stacklevel=3,
        )

    def _init_training_state(
        self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
    ):
        # Loaded here, right after `Trainer` restores `self.state` from the checkpoint, so that subclasses may read
        # `self.state.global_step`; every resume passes here, whatever `ignore_data_skip` says.
        self._checkpoint_rng_state = None
        result = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is not None:
            self._load_extra_state(resume_from_checkpoint)
        return result

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is None:
            return
        parsed = getattr(self, "_checkpoint_rng_state", None)
        if parsed is None:
            super()._load_rng_state(checkpoint)  # an older checkpoint's `rng_state*.pth` (read with weights_only)
            return
        restore_rng_state(parsed)
        self._checkpoint_rng_state = None

    # ----------------------------------------------------------------------------------- atomic checkpoints
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Write `checkpoint-<global_step>` into a staging directory on every process, then rename it into place."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        run_dir = self._get_output_dir(trial=trial)
        final_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        staging = staging_dir(final_dir)
        if self.args.should_save:
            remove_stale_staging(run_dir)
        self.accelerator.wait_for_everyone()  # nobody writes into a staging directory that is being removed
        error = None
        try:
            self._write_checkpoint(model, staging, run_dir)
        except Exception as caught:  # torch and safetensors wrap OS errors in their own types
            error = caught
        if not self._every_process_succeeded(error is None):
            self._abandon_checkpoint(staging, error, final_dir, run_dir)
        if self.args.should_save:
            publish(staging, final_dir)
        self.accelerator.wait_for_everyone()  # `checkpoint-N` exists for every process from here on
        if self.args.push_to_hub:
            self._push_from_checkpoint(final_dir)
        if self.args.should_save:
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def _write_checkpoint(self, model: Any, directory: str, run_dir: str) -> None:
        """Every file of the checkpoint, in `Trainer`'s order, into `directory`."""
        self.save_model(directory, _internal_call=True)
        self._record_best_checkpoint(run_dir)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(directory)
            self._save_scaler(directory)
        self._save_extra_state(directory)  # also replaces `Trainer._save_rng_state`'s pickled `rng_state.pth`
        if self.args.should_save:
            self._save_trainer_state(directory)

    def _record_best_checkpoint(self, run_dir: str) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy

        best_step = self.state.best_global_step
        if not best_step or self.args.save_strategy not in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST):
            return
        best_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{best_step}")
        # The checkpoint being written is the best one when its step is: it exists once renamed.
        if best_step == self.state.global_step or os.path.isdir(best_dir):
            self.state.best_model_checkpoint = best_dir

    def _save_trainer_state(self, directory: str) -> None:
        from transformers.trainer import TRAINER_STATE_NAME
        from transformers.trainer_callback import ExportableState

        # Stateful callbacks (early stopping, ...) and the control flags are saved with the state, as `Trainer` does.
        for callback in [*self.callback_handler.callbacks, self.control]:
            if not isinstance(callback, ExportableState):
                continue
            name = type(callback).__name__
            if isinstance(self.state.stateful_callbacks[name], list):
                self.state.stateful_callbacks[name].append(callback.state())
            else:
                self.state.stateful_callbacks[name] = callback.state()
        self.state.save_to_json(os.path.join(directory, TRAINER_STATE_NAME))

    def _every_process_succeeded(self, succeeded: bool) -> bool:
        """Whether every process wrote its part; also the barrier before the rename.

        A process that fails inside a collective save (DeepSpeed, FSDP) leaves the others waiting in that collective:
        this check covers the failures that happen between collectives (plain files, the extra state).
        """
        if self.accelerator.num_processes == 1:
            return succeeded
        failures = torch.tensor([0.0 if succeeded else 1.0], device=self.accelerator.device)
        return float(self.accelerator.reduce(failures, reduction="sum").item()) == 0.0

    def _abandon_checkpoint(self, staging: str, error: BaseException | None, final_dir: str, run_dir: str) -> None:
        import shutil

        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        failure = CheckpointWriteError(write_failure_message(error, final_dir, run_dir))
        failure.errno = getattr(error, "errno", None)
        raise failure from error
