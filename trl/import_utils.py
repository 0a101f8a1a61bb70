"""Availability checks for optional dependencies and the lazy module used by ``trl/__init__.py``.

Every optional feature (vLLM, Liger, DeepSpeed, PEFT, ...) is imported only when it is used, so ``import trl`` works
with the core dependencies alone and stays fast.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from itertools import chain
from types import ModuleType
from typing import Any


# Import name -> distribution name, for the optional packages whose two names differ (the version is read from the
# distribution's metadata, the availability from the import system).
PACKAGE_DISTRIBUTION_MAPPING: dict[str, str] = {
    "liger_kernel": "liger-kernel",
    "llm_blender": "llm-blender",
    "math_verify": "math-verify",
    "sklearn": "scikit-learn",
    "openreward": "openreward",
    "harbor": "harbor",
}

# Oldest liger-kernel whose fused losses trl calls with the keywords it uses.
LIGER_KERNEL_MIN_VERSION = "0.8.2"


class TRLExperimentalWarning(UserWarning):
    """Warning emitted when `trl.experimental` (or a stable module that wraps an experimental feature) is imported."""


@lru_cache
def _package_version(name: str) -> str | None:
    """The installed version of the package importable as `name`, or `None` when it is missing."""
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.metadata.version(PACKAGE_DISTRIBUTION_MAPPING.get(name, name))
    except importlib.metadata.PackageNotFoundError:
        return None


def _is_package_available(name: str, min_version: str | None = None) -> bool:
    """Whether `name` is importable and, when `min_version` is given, installed at that version or newer.

    Args:
        name (`str`):
            The import name (`"liger_kernel"`, not `"liger-kernel"`).
        min_version (`str` or `None`, *optional*, defaults to `None`):
            Oldest acceptable version (PEP 440).
    """
    installed = _package_version(name)
    if installed is None:
        return False
    if min_version is None:
        return True
    from packaging.version import Version

    return Version(installed) >= Version(min_version)


# Every check takes `min_version`: callers written against the reference pass it by keyword to some of them, and a
# missing keyword would fail at their module import.
def is_peft_available(min_version: str | None = None) -> bool:
    return _is_package_available("peft", min_version)


def is_vllm_available(min_version: str | None = None) -> bool:
    return _is_package_available("vllm", min_version)


def is_liger_kernel_available(min_version: str = LIGER_KERNEL_MIN_VERSION) -> bool:
    return _is_package_available("liger_kernel", min_version)


def is_deepspeed_available(min_version: str | None = None) -> bool:
    return _is_package_available("deepspeed", min_version)


def is_llm_blender_available(min_version: str | None = None) -> bool:
    return _is_package_available("llm_blender", min_version)


def is_openai_available(min_version: str | None = None) -> bool:
    return _is_package_available("openai", min_version)


def is_mergekit_available(min_version: str | None = None) -> bool:
    return _is_package_available("mergekit", min_version)


def is_math_verify_available(min_version: str | None = None) -> bool:
    return _is_package_available("math_verify", min_version)


def is_rich_available(min_version: str | None = None) -> bool:
    return _is_package_available("rich", min_version)


def is_weave_available(min_version: str | None = None) -> bool:
    return _is_package_available("weave", min_version)


def is_bitsandbytes_available(min_version: str | None = None) -> bool:
    return _is_package_available("bitsandbytes", min_version)


def is_sklearn_available(min_version: str | None = None) -> bool:
    return _is_package_available("sklearn", min_version)


def is_fastapi_available(min_version: str | None = None) -> bool:
    return _is_package_available("fastapi", min_version)


def is_uvicorn_available(min_version: str | None = None) -> bool:
    return _is_package_available("uvicorn", min_version)


def is_requests_available(min_version: str | None = None) -> bool:
    return _is_package_available("requests", min_version)


def is_aiohttp_available(min_version: str | None = None) -> bool:
    return _is_package_available("aiohttp", min_version)


def is_jmespath_available(min_version: str | None = None) -> bool:
    return _is_package_available("jmespath", min_version)


def is_unsloth_available(min_version: str | None = None) -> bool:
    return _is_package_available("unsloth", min_version)


def is_harbor_available(min_version: str | None = None) -> bool:
    return _is_package_available("harbor", min_version)


def is_openreward_available(min_version: str | None = None) -> bool:
    return _is_package_available("openreward", min_version)


@contextmanager
def suppress_warning(category: type[Warning]) -> Iterator[None]:
    """Ignore warnings of `category` (and its subclasses) inside the block; other warnings still show.

    Args:
        category (`type[Warning]`):
            The warning class to ignore.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category)
        yield


def suppress_experimental_warning() -> AbstractContextManager[None]:
    """Context manager that imports `trl.experimental` modules without the [`TRLExperimentalWarning`].

    Stable code that re-exports an experimental feature uses it, so users see the warning only when they import
    `trl.experimental` themselves.
    """
    return suppress_warning(TRLExperimentalWarning)


def require(available: bool, feature: str, install: str) -> None:
    """Raise an ``ImportError`` with an install hint when an optional dependency is missing.

    Args:
        available (`bool`):
            Result of the matching ``is_*_available`` check.
        feature (`str`):
            What the user asked for, e.g. ``"use_vllm=True"``.
        install (`str`):
            The pip command that fixes it, e.g. ``"pip install trl[vllm]"``.
    """
    if not available:
        raise ImportError(
            f"{feature} needs an optional dependency that is not installed. Install it with `{install}`."
        )


def _module_source_file(from_file: str, level: int, module: str) -> str:
    """The source file of the module that `from <level dots><module> import ...` in `from_file` names."""
    base = os.path.dirname(from_file)
    for _ in range(level - 1):
        base = os.path.dirname(base)
    path = os.path.join(base, *module.split("."))
    return path + ".py" if os.path.isfile(path + ".py") else os.path.join(path, "__init__.py")


def _declared_all(source_file: str) -> list[str]:
    """The literal `__all__` of a module's source, following one `from .x import __all__` re-export."""
    import ast

    for node in ast.parse(open(source_file, encoding="utf-8").read(), source_file).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "__all__" for target in node.targets):
            return list(ast.literal_eval(node.value))
        if isinstance(node, ast.ImportFrom) and node.level and any(alias.name == "__all__" for alias in node.names):
            return _declared_all(_module_source_file(source_file, node.level, node.module or ""))
    raise ValueError(f"{source_file} has no literal `__all__`, which `from ... import *` in a lazy package needs.")


def lazy_import_structure(init_file: str) -> dict[str, list[str]]:
    """
    The public names of a lazy package, read from the `if TYPE_CHECKING:` block of its `__init__.py`.

    That block is the one list of the package's names: type checkers read its imports, and [`install_lazy_module`]
    maps each name to the submodule it is imported from, so the two cannot disagree. `from .submodule import *`
    stands for the names of the submodule's literal `__all__`.

    Args:
        init_file (`str`):
            Path of the package's `__init__.py`.

    Returns:
        `dict[str, list[str]]`: Each submodule (relative to the package, e.g. `"sft_config"`) and the names imported
        from it, in the order of the block.
    """
    import ast

    blocks = [
        node
        for node in ast.parse(open(init_file, encoding="utf-8").read(), init_file).body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
    ]
    if len(blocks) != 1:
        raise ValueError(f"{init_file} needs exactly one top-level `if TYPE_CHECKING:` block, not {len(blocks)}.")
    structure: dict[str, list[str]] = {}
    for statement in blocks[0].body:
        if not (isinstance(statement, ast.ImportFrom) and statement.level == 1 and statement.module):
            raise ValueError(
                f"{init_file}:{statement.lineno}: the `if TYPE_CHECKING:` block of a lazy package may hold only "
                "`from .submodule import Name` lines; move anything else out of it."
            )
        if any(alias.asname is not None for alias in statement.names):
            raise ValueError(
                f"{init_file}:{statement.lineno}: import each name under its own name (no `as`) in the "
                "`if TYPE_CHECKING:` block of a lazy package."
            )
        names = [alias.name for alias in statement.names]
        if names == ["*"]:
            names = _declared_all(_module_source_file(init_file, 1, statement.module))
        structure.setdefault(statement.module, []).extend(names)
    return structure


def install_lazy_module(module_globals: dict[str, Any], extra_objects: dict[str, Any] | None = None) -> None:
    """
    Replace the package whose `__init__.py` calls this by a [`_LazyModule`] of the names its `if TYPE_CHECKING:`
    block imports (see [`lazy_import_structure`]).

    ```python
    if TYPE_CHECKING:
        from .sft_config import SFTConfig
    else:
        install_lazy_module(globals())
    ```

    Args:
        module_globals (`dict[str, Any]`):
            The package's `globals()`.
        extra_objects (`dict[str, Any]`, *optional*):
            Attributes available without any import (e.g. `__version__`).
    """
    name, init_file = module_globals["__name__"], module_globals["__file__"]
    sys.modules[name] = _LazyModule(name, init_file, lazy_import_structure(init_file), extra_objects)


class _LazyModule(ModuleType):
    """A module whose attributes are imported from submodules on first access.

    Args:
        name (`str`):
            The module's ``__name__``.
        module_file (`str`):
            The module's ``__file__``.
        import_structure (`dict[str, list[str]]`):
            Maps each submodule (relative to this package) to the public names it defines.
        extra_objects (`dict[str, Any]`, *optional*):
            Attributes available without any import (e.g. ``__version__``).
    """

    def __init__(
        self,
        name: str,
        module_file: str,
        import_structure: dict[str, list[str]],
        extra_objects: dict[str, Any] | None = None,
    ):
        super().__init__(name)
        self._modules = set(import_structure.keys())
        self._class_to_module = {value: key for key, values in import_structure.items() for value in values}
        self.__all__ = list(import_structure.keys()) + list(chain(*import_structure.values()))
        self.__file__ = module_file
        self.__path__ = [os.path.dirname(module_file)]
        self._objects = extra_objects or {}
        self._name = name
        self._import_structure = import_structure
        # Keep the original module spec so importlib.util.find_spec("trl") and friends keep working.
        original = sys.modules.get(name)
        self.__spec__ = getattr(original, "__spec__", None)
        self.__loader__ = getattr(original, "__loader__", None)

    def __dir__(self):
        result = super().__dir__()
        return result + [attr for attr in self.__all__ if attr not in result]

    def __getattr__(self, name: str) -> Any:
        if name in self._objects:
            return self._objects[name]
        if name in self._modules:
            value = self._get_module(name)
        elif name in self._class_to_module:
            module = self._get_module(self._class_to_module[name])
            value = getattr(module, name)
        else:
            raise AttributeError(f"module {self.__name__} has no attribute {name}")
        setattr(self, name, value)
        return value

    def _get_module(self, module_name: str) -> ModuleType:
        return importlib.import_module("." + module_name, self.__name__)

    def __reduce__(self):
        return (self.__class__, (self._name, self.__file__, self._import_structure))
