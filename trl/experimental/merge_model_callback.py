"""[`MergeModelCallback`]: merge the trained policy with its base (or reference) model using
[mergekit](https://github.com/arcee-ai/mergekit), at the end of training or at every checkpoint.

mergekit is optional (`pip install mergekit`); it is imported only when a merge runs.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import TrainerCallback

from ..import_utils import is_mergekit_available


__all__ = [
    "MergeConfig",
    "MergeModelCallback",
    "get_config_model_id",
    "is_mergekit_available",
    "merge_models",
    "upload_model_to_hf",
]

MergeMethod = Literal["linear", "ties", "dare_ties", "slerp"]


def _require_mergekit() -> None:
    if not is_mergekit_available():
        raise ImportError(
            "MergeModelCallback merges models with mergekit, which is not installed. Install it with "
            "`pip install mergekit`."
        )


@dataclass
class MergeConfig:
    """How to merge the policy (the trained model) with the target (its base or reference model).

    Args:
        method (`str`, *optional*, defaults to `"linear"`):
            mergekit merge method: `"linear"` (weighted average), `"ties"`, `"dare_ties"` (sparsified task vectors
            relative to the target) or `"slerp"` (spherical interpolation with factor `t_values`).
        policy_model_path (`str` or `None`, *optional*, defaults to `None`):
            The policy checkpoint; set by the callback.
        target_model_path (`str` or `None`, *optional*, defaults to `None`):
            The model to merge with; the callback uses the trained model's base (`config._name_or_path`) when `None`.
        policy_model_weight (`float`, *optional*, defaults to `0.5`):
            Weight of the policy (`linear`, `ties`, `dare_ties`).
        target_model_weight (`float`, *optional*, defaults to `0.5`):
            Weight of the target (`linear`, `ties`, `dare_ties`).
        policy_model_density (`list[float]`, *optional*, defaults to `[1.0, 0.7, 0.1]`):
            Fraction of the policy's task vector kept (`ties`, `dare_ties`); a list is a gradient over the layers.
        target_model_density (`list[float]`, *optional*, defaults to `[1.0]`):
            Same for the target.
        normalize (`float`, *optional*, defaults to `1.0`):
            Normalise the weights to sum to one (`linear`, `ties`, `dare_ties`) when non-zero.
        t_values (`float`, *optional*, defaults to `0.5`):
            Interpolation factor of `slerp` (0 is the target, 1 the policy).
        dtype (`str`, *optional*, defaults to `"float16"`):
            dtype of the merged weights.
    """

    method: MergeMethod = "linear"
    policy_model_path: str | None = None
    target_model_path: str | None = None
    policy_model_weight: float = 0.5
    target_model_weight: float = 0.5
    policy_model_density: list[float] = field(default_factory=lambda: [1.0, 0.7, 0.1])
    target_model_density: list[float] = field(default_factory=lambda: [1.0])
    normalize: float = 1.0
    t_values: float = 0.5
    dtype: str = "float16"

    def __post_init__(self):
        if self.method not in ("linear", "ties", "dare_ties", "slerp"):
            raise ValueError(f"MergeConfig.method must be linear, ties, dare_ties or slerp (got {self.method!r}).")

    def to_dict(self) -> dict[str, Any]:
        """The mergekit configuration (the structure of a mergekit YAML file) for this merge."""
        if self.policy_model_path is None or self.target_model_path is None:
            raise ValueError("MergeConfig needs policy_model_path and target_model_path before a merge.")
        if self.method == "slerp":
            return {
                "merge_method": "slerp",
                "base_model": self.target_model_path,
                "models": [{"model": self.target_model_path}, {"model": self.policy_model_path}],
                "parameters": {"t": self.t_values},
                "dtype": self.dtype,
            }
        policy: dict[str, Any] = {"weight": self.policy_model_weight}
        target: dict[str, Any] = {"weight": self.target_model_weight}
        merge: dict[str, Any] = {
            "merge_method": self.method,
            "models": [
                {"model": self.policy_model_path, "parameters": policy},
                {"model": self.target_model_path, "parameters": target},
            ],
            "parameters": {"normalize": self.normalize},
            "dtype": self.dtype,
        }
        if self.method in ("ties", "dare_ties"):
            policy["density"] = self.policy_model_density
            target["density"] = self.target_model_density
            merge["base_model"] = self.target_model_path
        return merge

    def create(self) -> Any:
        """The `mergekit.config.MergeConfiguration` of [`to_dict`] (needs mergekit)."""
        _require_mergekit()
        from mergekit.config import MergeConfiguration

        return MergeConfiguration.model_validate(self.to_dict())


def merge_models(config: Any, out_path: str) -> None:
    """Run a mergekit merge and write the merged model (and tokenizer) to `out_path`.

    Args:
        config (`mergekit.config.MergeConfiguration`):
            The merge, e.g. from [`MergeConfig.create`].
        out_path (`str`):
            Output directory.
    """
    _require_mergekit()
    import torch
    from mergekit.merge import MergeOptions, run_merge

    options = MergeOptions(
        cuda=torch.cuda.is_available(), copy_tokenizer=True, lazy_unpickle=False, low_cpu_memory=False
    )
    run_merge(config, out_path=out_path, options=options)


def upload_model_to_hf(folder_path: str, repo_id: str) -> None:
    """Push a merged model folder to a (new or existing) Hub model repository.

    Args:
        folder_path (`str`):
            Local folder with the merged model.
        repo_id (`str`):
            Hub repository id, e.g. `"user/model-merged"`.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    repo = api.create_repo(repo_id, repo_type="model", exist_ok=True)
    api.upload_folder(folder_path=folder_path, repo_id=repo.repo_id, repo_type="model")


def get_config_model_id(config: Any) -> str | None:
    """The Hub id or local path a model was loaded from (`config._name_or_path`)."""
    return getattr(config, "_name_or_path", None)


class MergeModelCallback(TrainerCallback):
    """Merge the trained policy with its base model (mergekit) into `<checkpoint>/merged`.

    By default the merge runs once, on the last checkpoint at the end of training; with `merge_at_every_checkpoint`
    it runs on every checkpoint as it is saved. The base model is `merge_config.target_model_path`, or the path the
    trained model was loaded from.

    Args:
        merge_config ([`MergeConfig`] or `None`, *optional*, defaults to `None`):
            The merge; `None` is a linear average with equal weights.
        merge_at_every_checkpoint (`bool`, *optional*, defaults to `False`):
            Merge each checkpoint instead of only the last one.
        push_to_hub (`bool`, *optional*, defaults to `False`):
            Push each merged model to `<hub_model_id or output_dir name>_checkpoint-<step>_merged`.
    """

    def __init__(
        self,
        merge_config: MergeConfig | None = None,
        merge_at_every_checkpoint: bool = False,
        push_to_hub: bool = False,
    ):
        _require_mergekit()
        self.merge_config = merge_config or MergeConfig()
        self.merge_at_every_checkpoint = merge_at_every_checkpoint
        self.push_to_hub = push_to_hub
        self.merged_paths: list[str] = []

    def _merge(self, args: Any, state: Any, model: Any) -> None:
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        self.merge_config.policy_model_path = checkpoint
        if self.merge_config.target_model_path is None:
            self.merge_config.target_model_path = get_config_model_id(getattr(model, "config", None))
        out_path = os.path.join(checkpoint, "merged")
        merge_models(self.merge_config.create(), out_path)
        self.merged_paths.append(out_path)
        if self.push_to_hub:
            repo = args.hub_model_id or os.path.basename(os.path.normpath(args.output_dir))
            upload_model_to_hf(out_path, f"{repo}_checkpoint-{state.global_step}_merged")

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.merge_at_every_checkpoint and state.is_world_process_zero:
            self._merge(args, state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        # The last checkpoint exists only if the trainer saved at the final step.
        if self.merge_at_every_checkpoint or not state.is_world_process_zero:
            return
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(checkpoint):
            warnings.warn(
                f"MergeModelCallback found no checkpoint at the last step ({checkpoint}), so nothing was merged: "
                "set save_strategy='steps' with save_steps dividing max_steps, or merge_at_every_checkpoint=True.",
                stacklevel=2,
            )
            return
        self._merge(args, state, model)
