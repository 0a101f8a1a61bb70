"""The reference's public names that downstream code imports: same module, same keywords, one implementation."""

import importlib
import subprocess
import sys
import warnings

import pytest
import torch

import trl
from trl import import_utils


# ---------------------------------------------------------------------------------------------------- import_utils
def test_every_availability_check_accepts_min_version():
    checks = [
        getattr(import_utils, name) for name in dir(import_utils) if name.startswith("is_") and "available" in name
    ]
    assert len(checks) >= 20
    for check in checks:
        assert check(min_version=None) in (True, False), check.__name__


def test_min_version_compares_the_installed_version():
    # torch is installed: an ancient floor passes, an impossible one fails, and a missing package is never available.
    assert import_utils._is_package_available("torch", min_version="0.1")
    assert not import_utils._is_package_available("torch", min_version="9999.0")
    assert not import_utils.is_weave_available(min_version="0.0") or import_utils.is_weave_available()


def test_liger_default_floor_is_the_reference_minimum():
    import inspect

    default = inspect.signature(import_utils.is_liger_kernel_available).parameters["min_version"].default
    assert default == import_utils.LIGER_KERNEL_MIN_VERSION == "0.8.2"


def test_suppress_warning_only_hides_its_category():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with import_utils.suppress_experimental_warning():
            warnings.warn("hidden", import_utils.TRLExperimentalWarning, stacklevel=1)
            warnings.warn("shown", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["shown"]


def test_experimental_warns_once_with_the_shared_class():
    code = (
        "import warnings; warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import trl.experimental, trl.experimental.kto, trl.experimental.bco, trl.experimental.prm\n"
        "from trl.import_utils import TRLExperimentalWarning\n"
        "print(sum(issubclass(w.category, TRLExperimentalWarning) for w in caught))\n"
        "print(trl.experimental.TRLExperimentalWarning is TRLExperimentalWarning)\n"
    )
    env = {"PATH": "", "TRL_EXPERIMENTAL_SILENCE": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["1", "True"]


@pytest.mark.parametrize("name", ["kto", "bco", "prm", "cpo", "orpo"])
def test_experimental_paths_are_the_stable_classes(name):
    module = importlib.import_module(f"trl.experimental.{name}")
    prefix = name.upper()
    assert getattr(module, f"{prefix}Trainer") is getattr(trl, f"{prefix}Trainer")
    assert getattr(module, f"{prefix}Config") is getattr(trl, f"{prefix}Config")


def test_vllm_client_reexports_the_availability_checks():
    from trl.generation import vllm_client

    assert vllm_client.is_vllm_available is import_utils.is_vllm_available
    assert vllm_client.is_requests_available is import_utils.is_requests_available


# ---------------------------------------------------------------------------------------------------- models
def test_unwrap_model_for_generation_is_one_function():
    from trl.generation.transformers_backend import unwrap_model_for_generation as backend_unwrap
    from trl.models import unwrap_model_for_generation
    from trl.models.utils import unwrap_model_for_generation as utils_unwrap

    assert unwrap_model_for_generation is utils_unwrap is backend_unwrap


class _Checkpointed(torch.nn.Module):
    """Stands in for a `PreTrainedModel`: records the gradient-checkpointing switches."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.is_gradient_checkpointing = True
        self.enabled_with = []

    def gradient_checkpointing_disable(self):
        self.is_gradient_checkpointing = False

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.is_gradient_checkpointing = True
        self.enabled_with.append(gradient_checkpointing_kwargs)


def test_unwrap_turns_checkpointing_off_for_generation_and_back_on():
    from trl.models.utils import unwrap_model_for_generation

    model = _Checkpointed()
    with unwrap_model_for_generation(model, None, gradient_checkpointing_kwargs={"use_reentrant": False}) as plain:
        assert plain is model and not model.is_gradient_checkpointing
    assert model.is_gradient_checkpointing and model.enabled_with == [{"use_reentrant": False}]
    # Without the KV cache, checkpointing costs nothing at generation time: it is left alone.
    with unwrap_model_for_generation(model, None, generation_kwargs={"use_cache": False}):
        assert model.is_gradient_checkpointing


def test_zero3_hook_helpers_are_noops_without_deepspeed():
    from trl.models.utils import add_hooks, get_all_parameters, iter_params, remove_hooks

    linear = torch.nn.Linear(3, 2)
    assert [name for name, _ in get_all_parameters(linear)] == ["weight", "bias"]
    assert iter_params(linear)[0] is linear.weight
    remove_hooks(linear)  # a plain module has no optimizer hooks
    add_hooks(linear)


# ---------------------------------------------------------------------------------------------------- data_utils
def test_data_utils_exposes_literal():
    from typing import Literal

    from trl import data_utils

    assert data_utils.Literal is Literal


# ---------------------------------------------------------------------------------------------------- version
def test_version_names_the_reference_api_generation():
    from pathlib import Path

    from packaging.version import Version

    version = Version(trl.__version__)
    assert trl.__version__ == (Path(trl.__file__).parent.parent / "VERSION").read_text().strip()
    # Downstream code gates features on the reference's versions: these must compare as on a 1.16 pre-release.
    assert version >= Version("0.20") and version >= Version("1.0")
    assert (version.major, version.minor) == (1, 16) and version.is_prerelease
    assert "1.16.0.dev0" in (Path(trl.__file__).parent.parent / "README.md").read_text()


def test_trainer_utils_reexports_the_reference_helpers():
    from trl.import_utils import is_peft_available
    from trl.trainer import utils
    from trl.trainer.comet import log_table_to_comet_experiment
    from trl.trainer.model_config import ModelConfig
    from trl.trainer.peft_utils import get_peft_config

    assert utils.ModelConfig is ModelConfig and utils.get_peft_config is get_peft_config
    assert utils.is_peft_available is is_peft_available
    assert utils.log_table_to_comet_experiment is log_table_to_comet_experiment
    assert utils.get_comet_experiment_url() is None  # no comet_ml here
