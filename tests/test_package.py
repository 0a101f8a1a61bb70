import importlib
import subprocess
import sys

import pytest

import trl


def test_every_public_name_imports():
    for name in trl.__all__:
        assert getattr(trl, name) is not None, name


def test_import_trl_stays_light():
    code = "import sys, trl; print('torch' in sys.modules, 'transformers' in sys.modules, 'datasets' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "False", "False"]


def test_experimental_warns_and_keeps_reference_paths(monkeypatch):
    monkeypatch.delenv("TRL_EXPERIMENTAL_SILENCE", raising=False)
    sys.modules.pop("trl.experimental", None)
    with pytest.warns(UserWarning, match="trl.experimental"):
        experimental = importlib.import_module("trl.experimental")
    assert issubclass(experimental.TRLExperimentalWarning, UserWarning)
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOConfig

    assert CPOTrainer is trl.CPOTrainer
    assert ORPOConfig is trl.ORPOConfig


def test_experimental_warning_can_be_silenced():
    code = "import warnings; warnings.simplefilter('error'); import trl.experimental"
    env = {"TRL_EXPERIMENTAL_SILENCE": "1", "PATH": ""}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
