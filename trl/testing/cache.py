"""On-disk cache for the testing artifacts: one directory per artifact, named by a hash of everything that built it.

An entry is published only when it is complete, and every reader checks that it still is:

- builds of one key are serialised by a file lock (`<cache>/.locks/<entry>.lock`), across processes, pytest-xdist
  workers and distributed ranks; the lock is an OS lock, so a builder that dies releases it;
- the builder writes into a private staging directory; the files it must have produced (`required`) are checked,
  then a manifest (`.trl-manifest.json`: every file with its size and SHA-256) is written, and the directory is
  renamed into place in one atomic step;
- an entry without a manifest, with a file missing, or whose contents no longer match the manifest (an older cache
  layout, a builder killed by hand, a disk error) is moved aside and rebuilt instead of failing forever.
"""

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path


_PACKAGE_DIR = Path(__file__).resolve().parent
_CACHE_ENV_VAR = "TRL_TESTING_CACHE"
MANIFEST_NAME = ".trl-manifest.json"
_MANIFEST_VERSION = 1
# A build takes seconds; a lock held much longer than this means something is wrong with the cache directory.
_LOCK_TIMEOUT_S = 600.0
# Entries whose contents were hashed in this process: later look-ups only compare file sizes.
_verified: dict[str, dict[str, int]] = {}


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


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(directory: Path) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    entries = {
        p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": _file_digest(p)} for p in files
    }
    manifest = {"version": _MANIFEST_VERSION, "files": entries}
    with open(directory / MANIFEST_NAME, "w") as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())


def _read_manifest(directory: Path) -> dict[str, dict] | None:
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("version") != _MANIFEST_VERSION:
        return None
    files = manifest.get("files")
    return files if isinstance(files, dict) and files else None


def is_complete(directory: str | os.PathLike) -> bool:
    """
    Checks that a cache entry holds every file of its manifest, with the recorded sizes and contents.

    Contents are hashed the first time an entry is checked in a process; later checks compare sizes only.

    Args:
        directory (`str` or `os.PathLike`):
            The entry's directory.

    Returns:
        `bool`: `False` for a missing directory, a missing or unreadable manifest, or any file that differs.
    """
    directory = Path(directory)
    files = _read_manifest(directory)
    if files is None:
        return False
    try:
        sizes = {name: (directory / name).stat().st_size for name in files}
    except OSError:
        return False
    if any(sizes[name] != entry.get("size") for name, entry in files.items()):
        return False
    if _verified.get(str(directory)) == sizes:
        return True
    if any(_file_digest(directory / name) != entry.get("sha256") for name, entry in files.items()):
        return False
    _verified[str(directory)] = sizes
    return True


def _discard(path: Path) -> None:
    # Moved aside first, so a reader never sees a half-deleted entry under the published name.
    trash = path.with_name(f".trash-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _remove_leftovers(root: Path, entry_name: str) -> None:
    # Staging and trash directories of this entry left by a builder that died. Safe: the caller holds the lock.
    for prefix in (f".{entry_name}-", f".trash-{entry_name}-"):
        for leftover in root.glob(f"{prefix}*"):
            shutil.rmtree(leftover, ignore_errors=True)
    _verified.pop(str(root / entry_name), None)


def _build_into(root: Path, target: Path, build: Callable[[Path], None], required: Iterable[str]) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        build(staging)
        missing = [name for name in required if not (staging / name).is_file()]
        if missing:
            raise RuntimeError(
                f"Building the testing artifact {target.name} produced no {', '.join(missing)}; nothing was cached. "
                "This is a bug in the builder: report it with the output of `trl env`."
            )
        _write_manifest(staging)
        os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def cached_build(name: str, arguments: dict, build: Callable[[Path], None], required: Iterable[str] = ()) -> str:
    """
    Returns the cache directory of an artifact, building it first if it is missing, incomplete or corrupt.

    Safe under concurrency and failure: one builder per key at a time (a file lock shared by every process), a build
    published only once its `required` files exist and its manifest is written, with one atomic rename. A reader
    that finds an entry without a valid manifest (a crash, a hand edit, an older cache layout) rebuilds it.

    Args:
        name (`str`):
            Human-readable prefix of the directory name.
        arguments (`dict`):
            Build arguments, part of the content hash.
        build (`Callable[[Path], None]`):
            Writes the artifact into the given (empty, existing) directory.
        required (`Iterable[str]`, *optional*, defaults to `()`):
            Files, relative to the directory, that a complete build must contain (e.g. `"config.json"`,
            `"model.safetensors"`, `"tokenizer.json"`).

    Returns:
        `str`: Path of the directory `<cache>/<name>-<hash12>`.
    """
    from filelock import FileLock, Timeout

    root = get_cache_dir()
    target = root / f"{name}-{content_hash(arguments)}"
    if is_complete(target):
        return str(target)
    locks = root / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock_path = locks / f"{target.name}.lock"
    try:
        with FileLock(str(lock_path), timeout=_LOCK_TIMEOUT_S):
            # Another process may have built it while this one waited for the lock.
            if is_complete(target):
                return str(target)
            _remove_leftovers(root, target.name)
            if target.exists():
                _discard(target)
            _build_into(root, target, build, required)
    except Timeout as error:
        raise TimeoutError(
            f"Waited {_LOCK_TIMEOUT_S:.0f} s for another process building {target.name} (lock {lock_path}). If no "
            f"such process is running, delete the lock file, or point {_CACHE_ENV_VAR} at a fresh directory."
        ) from error
    return str(target)
