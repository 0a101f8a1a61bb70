"""trl: post-training for transformer language models (SFT, preference optimisation, RL)."""

from typing import TYPE_CHECKING

from .import_utils import _LazyModule


def _read_version() -> str:
    try:
        from importlib.metadata import version

        return version("trl")
    except Exception:
        return "unknown"


__version__ = _read_version()

_import_structure: dict[str, list[str]] = {}

if TYPE_CHECKING:
    pass
else:
    import sys

    sys.modules[__name__] = _LazyModule(
        __name__,
        globals()["__file__"],
        _import_structure,
        extra_objects={"__version__": __version__},
    )
