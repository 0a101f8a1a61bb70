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
from functools import lru_cache
from itertools import chain
from types import ModuleType
from typing import Any


@lru_cache
def _is_package_available(name: str, distribution: str | None = None) -> bool:
    if importlib.util.find_spec(name) is None:
        return False
    try:
        importlib.metadata.version(distribution or name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def is_peft_available() -> bool:
    return _is_package_available("peft")


def is_vllm_available() -> bool:
    return _is_package_available("vllm")


def is_liger_kernel_available() -> bool:
    return _is_package_available("liger_kernel", "liger-kernel")


def is_deepspeed_available() -> bool:
    return _is_package_available("deepspeed")


def is_llm_blender_available() -> bool:
    return _is_package_available("llm_blender", "llm-blender")


def is_openai_available() -> bool:
    return _is_package_available("openai")


def is_mergekit_available() -> bool:
    return _is_package_available("mergekit")


def is_math_verify_available() -> bool:
    return _is_package_available("math_verify", "math-verify")


def is_rich_available() -> bool:
    return _is_package_available("rich")


def is_weave_available() -> bool:
    return _is_package_available("weave")


def is_bitsandbytes_available() -> bool:
    return _is_package_available("bitsandbytes")


def is_sklearn_available() -> bool:
    return _is_package_available("sklearn", "scikit-learn")


def is_fastapi_available() -> bool:
    return _is_package_available("fastapi")


def is_uvicorn_available() -> bool:
    return _is_package_available("uvicorn")


def is_requests_available() -> bool:
    return _is_package_available("requests")


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
