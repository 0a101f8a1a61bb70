"""On-disk cache for the testing artifacts: one directory per artifact, named by a hash of everything that built it."""

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


_PACKAGE_DIR = Path(__file__).resolve().parent
_CACHE_ENV_VAR = "TRL_TESTING_CACHE"


def get_cache_dir() -> Path:
    """
    Returns the root directory of the testing cache.

    Returns:
        `Path`: The value of the `TRL_TESTING_CACHE` environment variable, or `~/.cache/trl/testing`.
    """
    root = os.environ.get(_CACHE_ENV_VAR)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "trl" / "testing"


def _library_versions() -> dict[str, str]:
    # Saved configs and random initialisation may change with these libraries, so they are part of the key.
    import tokenizers
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def _builder_files() -> list[Path]:
    # Everything the builders read: their own source, the corpus and the chat templates.
    sources = sorted(_PACKAGE_DIR.glob("*.py"))
    templates = sorted((_PACKAGE_DIR / "templates").glob("*.jinja"))
    return [*sources, *templates, _PACKAGE_DIR / "data" / "corpus.txt"]


def content_hash(arguments: dict) -> str:
    """
    Hashes the builder sources, the corpus, the chat templates, the library versions and the build arguments.

    Args:
        arguments (`dict`):
            JSON-serialisable build arguments.

    Returns:
        `str`: The first 12 hexadecimal digits of the SHA-256 digest.
    """
    digest = hashlib.sha256()
    for path in _builder_files():
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(json.dumps(_library_versions(), sort_keys=True).encode())
    digest.update(json.dumps(arguments, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def cached_build(name: str, arguments: dict, build: Callable[[Path], None]) -> str:
    """
    Returns the cache directory of an artifact, building it first if it is missing.

    The artifact is built into a temporary sibling directory and moved into place with one atomic `os.rename`, so
    concurrent builders (pytest-xdist workers) never see a half-written directory: the first rename wins and the
    others discard their copy.

    Args:
        name (`str`):
            Human-readable prefix of the directory name.
        arguments (`dict`):
            Build arguments, part of the content hash.
        build (`Callable[[Path], None]`):
            Writes the artifact into the given (empty, existing) directory.

    Returns:
        `str`: Path of the directory `<cache>/<name>-<hash12>`.
    """
    root = get_cache_dir()
    target = root / f"{name}-{content_hash(arguments)}"
    if target.is_dir():
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        build(staging)
        os.rename(staging, target)
    except OSError:
        # Another process renamed its copy first; theirs is complete and identical.
        if not target.is_dir():
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return str(target)
