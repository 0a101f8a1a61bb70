"""The testing cache under concurrency and failure: one builder per key, complete entries only, self-healing."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

import trl.testing.cache as cache_module
from trl.testing import get_tiny_model_path, get_tiny_tokenizer_path


def _entries(root: Path) -> list[str]:
    # Lock files live under `.locks`; everything else hidden would be a leftover staging or trash directory.
    return sorted(p.name for p in root.iterdir() if p.name != ".locks")


def _run_builder(root: Path, log: Path, ready: Path | None = None, hang: bool = False) -> subprocess.Popen:
    """Starts a process that builds the key `{"n": 1}` with a slow builder that appends to `log` when it runs."""
    code = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from trl.testing.cache import cached_build

        def build(directory):
            with open({str(log)!r}, "a") as handle:
                handle.write("built\\n")
            (directory / "part.txt").write_text("half")
            if {str(ready) if ready else ""!r}:
                Path({str(ready)!r}).write_text("ready")
            time.sleep(3600 if {hang} else 1.0)
            (directory / "whole.txt").write_text("whole")

        print(cached_build("thing", {{"n": 1}}, build, required=("whole.txt",)))
        """
    )
    env = {**os.environ, "TRL_TESTING_CACHE": str(root)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_paths_are_stable_and_cached_files_are_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_TESTING_CACHE", str(tmp_path))
    path = get_tiny_model_path("qwen2")
    assert Path(path).parent == tmp_path
    assert re.fullmatch(r"qwen2-tiny-chatml-[0-9a-f]{12}", Path(path).name)
    weights = Path(path) / "model.safetensors"
    modified = weights.stat().st_mtime_ns
    assert get_tiny_model_path("qwen2") == path
    assert weights.stat().st_mtime_ns == modified
    # Only the finished directory is left behind: no staging directories.
    assert _entries(tmp_path) == [Path(path).name]


def test_builds_are_byte_identical(tmp_path, monkeypatch):
    paths = []
    for name in ("a", "b"):
        monkeypatch.setenv("TRL_TESTING_CACHE", str(tmp_path / name))
        paths.append(Path(get_tiny_model_path("llama")))
    assert paths[0].name == paths[1].name
    files = sorted(p.name for p in paths[0].iterdir())
    assert "model.safetensors" in files and "tokenizer.json" in files
    for file in files:
        assert (paths[0] / file).read_bytes() == (paths[1] / file).read_bytes(), file


def test_hash_depends_on_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_TESTING_CACHE", str(tmp_path))
    assert get_tiny_tokenizer_path("chatml") != get_tiny_tokenizer_path("llama3")
    assert cache_module.content_hash({"x": 1}) == cache_module.content_hash({"x": 1})
    assert cache_module.content_hash({"x": 1}) != cache_module.content_hash({"x": 2})


def test_manifest_lists_every_file_with_size_and_digest(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_TESTING_CACHE", str(tmp_path))
    path = Path(get_tiny_model_path("qwen2"))
    manifest = json.loads((path / cache_module.MANIFEST_NAME).read_text())
    on_disk = sorted(p.name for p in path.iterdir() if p.name != cache_module.MANIFEST_NAME)
    assert sorted(manifest["files"]) == on_disk
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert manifest["files"][name]["size"] == (path / name).stat().st_size > 0


def test_two_processes_building_the_same_key_build_it_once(tmp_path):
    log = tmp_path / "log.txt"
    root = tmp_path / "cache"
    builders = [_run_builder(root, log) for _ in range(2)]
    outputs = [builder.communicate(timeout=120)[0].strip() for builder in builders]
    assert [builder.returncode for builder in builders] == [0, 0]
    assert outputs[0] == outputs[1]
    assert log.read_text() == "built\n"
    assert (Path(outputs[0]) / "whole.txt").read_text() == "whole"
    assert _entries(root) == [Path(outputs[0]).name]


def test_a_builder_killed_half_way_leaves_nothing_published_and_releases_the_lock(tmp_path, monkeypatch):
    log, ready, root = tmp_path / "log.txt", tmp_path / "ready", tmp_path / "cache"
    builder = _run_builder(root, log, ready=ready, hang=True)
    try:
        _wait_for(ready)
        builder.send_signal(signal.SIGKILL)
        builder.wait(timeout=30)
    finally:
        if builder.poll() is None:
            builder.kill()
    target = root / f"thing-{cache_module.content_hash({'n': 1})}"
    assert not target.exists()
    assert any(name.startswith(f".{target.name}-") for name in _entries(root))  # the dead builder's staging dir

    monkeypatch.setenv("TRL_TESTING_CACHE", str(root))
    built = []

    def build(directory):
        built.append(True)
        (directory / "whole.txt").write_text("whole")

    # The dead builder's OS lock died with it: this does not wait, and its staging directory is cleaned up.
    assert cache_module.cached_build("thing", {"n": 1}, build, required=("whole.txt",)) == str(target)
    assert built == [True]
    assert _entries(root) == [target.name]


@pytest.mark.parametrize("damage", ["tokenizer_only", "truncated_weights", "flipped_byte", "no_manifest", "bad_json"])
def test_a_corrupt_entry_is_rebuilt(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("TRL_TESTING_CACHE", str(tmp_path))
    path = Path(get_tiny_model_path("qwen2"))
    weights = path / "model.safetensors"
    original = weights.read_bytes()
    if damage == "tokenizer_only":
        # What rank 1 of a distributed run used to publish: a tokenizer and no weights.
        weights.unlink()
        (path / "config.json").unlink()
    elif damage == "truncated_weights":
        weights.write_bytes(original[: len(original) // 2])
    elif damage == "flipped_byte":
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
    elif damage == "no_manifest":
        (path / cache_module.MANIFEST_NAME).unlink()
    else:
        (path / cache_module.MANIFEST_NAME).write_text("{not json")
    cache_module._verified.clear()  # a new process: nothing verified yet

    assert get_tiny_model_path("qwen2") == str(path)
    assert weights.read_bytes() == original
    assert cache_module.is_complete(path)
    AutoModelForCausalLM.from_pretrained(path)
    AutoTokenizer.from_pretrained(path)
    assert _entries(tmp_path) == [path.name]


def test_a_build_missing_a_required_file_is_not_published(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_TESTING_CACHE", str(tmp_path))

    def build(directory):
        (directory / "tokenizer.json").write_text("{}")

    with pytest.raises(RuntimeError, match=r"produced no model\.safetensors; nothing was cached"):
        cache_module.cached_build("thing", {}, build, required=("tokenizer.json", "model.safetensors"))
    assert _entries(tmp_path) == []


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_TESTING_CACHE", str(tmp_path))

    def build(directory):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cache_module.cached_build("thing", {}, build)
    assert _entries(tmp_path) == []


def test_a_non_zero_rank_builds_a_complete_model(tmp_path, monkeypatch):
    # Inside `accelerate launch`, transformers saves weights on rank 0 only; the cache builder must not.
    import transformers.distributed.mixin as mixin

    monkeypatch.setattr(mixin, "_is_torch_distributed_initialized", lambda: True)
    monkeypatch.setattr(mixin, "_get_torch_distributed_rank", lambda: 1)
    monkeypatch.setenv("TRL_TESTING_CACHE", str(tmp_path))
    path = Path(get_tiny_model_path("qwen2"))
    assert (path / "model.safetensors").is_file()
    assert isinstance(AutoModelForCausalLM.from_pretrained(path), transformers.PreTrainedModel)


def test_default_cache_dir(monkeypatch):
    monkeypatch.delenv("TRL_TESTING_CACHE", raising=False)
    assert cache_module.get_cache_dir() == Path.home() / ".cache" / "trl" / "testing"
