import importlib
import subprocess
import sys
from pathlib import Path

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


# Layering (docs/architecture.md): lower layers never import the layers above them, not even for type checking.
_FORBIDDEN_IMPORTS = {
    "generation": ("trl.scripts", "trl.cli"),
    "losses": ("trl.trainer", "trl.scripts", "trl.generation", "trl.cli"),
    "kernels": ("trl.trainer", "trl.scripts", "trl.generation", "trl.cli"),
}


def _imported_modules(path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    package = "trl." + ".".join(path.relative_to(Path(trl.__file__).parent).parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
            else:
                names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(_FORBIDDEN_IMPORTS))
def test_lower_layers_do_not_import_upper_layers(layer):
    offenders = []
    for path in sorted((Path(trl.__file__).parent / layer).rglob("*.py")):
        for name in _imported_modules(path):
            if name.startswith(_FORBIDDEN_IMPORTS[layer]):
                offenders.append(f"{path.name} imports {name}")
    assert offenders == []


# The lazy packages list their names once, in their `if TYPE_CHECKING:` imports.
def test_lazy_packages_export_their_type_checking_imports():
    import trl.generation
    import trl.judges
    import trl.trainer
    from trl.import_utils import lazy_import_structure

    structure = lazy_import_structure(trl.__file__)
    assert structure["judges"][0] == "AllTrueJudge" and "SFTTrainer" in structure["trainer"]
    assert trl.SFTTrainer.__module__ == "trl.trainer.sft_trainer" and trl.__version__
    # `from .judges import *` in trl/trainer/__init__.py stands for the `__all__` of trl.judges (via trl.trainer.judges).
    assert lazy_import_structure(trl.trainer.__file__)["judges"] == trl.judges.__all__
    assert trl.trainer.get_judge is trl.judges.get_judge and trl.trainer.PairRMJudge is trl.PairRMJudge
    assert set(trl.generation.__all__) >= {"SamplingParams", "TransformersBackend", "VLLMClient", "base"}


@pytest.mark.parametrize(
    "block, message",
    [
        ("x = 1\n", "exactly one"),
        ("if TYPE_CHECKING:\n    import os\n", "may hold only"),
        ("if TYPE_CHECKING:\n    from .a import b as c\n", "no `as`"),
        ("if TYPE_CHECKING:\n    from .a import *\n", "no literal `__all__`"),
    ],
)
def test_lazy_import_structure_refuses_what_it_cannot_map(tmp_path, block, message):
    from trl.import_utils import lazy_import_structure

    (tmp_path / "a.py").write_text("b = 1\n")
    (tmp_path / "__init__.py").write_text(block)
    with pytest.raises(ValueError, match=message):
        lazy_import_structure(str(tmp_path / "__init__.py"))
