"""Checkpoint files that trl writes itself: extra trainer state without pickle, and atomic checkpoint directories.

Extra state (running statistics, rollout buffers, random states) is a nested structure of dicts, lists, scalars and
tensors. It is stored as two files: `<stem>.safetensors` holds the tensors, `<stem>.json` holds the structure, the
scalars, a format version and a manifest (name, dtype, shape) of every tensor. Neither format can run code when read,
and [`load_state`] rejects anything that does not match its manifest with a `ValueError` naming the file.

A checkpoint `checkpoint-N` is written into the sibling staging directory `.tmp-checkpoint-N` and renamed into place
once every file is complete, so `get_last_checkpoint` (which matches `checkpoint-<digits>` only) never picks a partial
one. Staging directories left by a crash are ignored on resume and removed before the next save.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import warnings
from typing import Any

import numpy as np
import torch


FORMAT = "trl-checkpoint-state"
FORMAT_VERSION = 1
STAGING_PREFIX = ".tmp-"
_TENSOR_KEY = "__tensor__"


# ------------------------------------------------------------------------------------------- state files
def state_stem(name: str, process_index: int, world_size: int) -> str:
    """The file stem of one process's state: `name` alone in a single-process run, `name_<rank>` otherwise."""
    return f"{name}_{process_index}" if world_size > 1 else name


def save_state(state: dict[str, Any], directory: str, stem: str) -> None:
    """Write `state` as `<directory>/<stem>.safetensors` (tensors) and `<directory>/<stem>.json` (everything else).

    Args:
        state (`dict[str, Any]`):
            Nested dicts (string keys), lists or tuples (read back as lists), `bool`, `int`, `float`, `str`, `None`
            and tensors (saved from the CPU; read back on the CPU).
        directory (`str`):
            Where to write the two files (created if missing).
        stem (`str`):
            Their common name, e.g. from [`state_stem`].
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    encoded = _encode(state, "", tensors)
    manifest = {name: {"dtype": _dtype_name(tensor), "shape": list(tensor.shape)} for name, tensor in tensors.items()}
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, f"{stem}.safetensors"))
    # The JSON is written last: its presence marks a complete pair.
    document = {"format": FORMAT, "version": FORMAT_VERSION, "tensors": manifest, "state": encoded}
    with open(os.path.join(directory, f"{stem}.json"), "w", encoding="utf-8") as file:
        json.dump(document, file)


def load_state(directory: str, stem: str) -> dict[str, Any] | None:
    """Read what [`save_state`] wrote, checking it against its manifest; `None` when `<stem>.json` does not exist.

    Raises:
        `ValueError`: a file is missing, unreadable, or does not match the manifest (tampered with, corrupted, or
            written by another version).
    """
    json_path = os.path.join(directory, f"{stem}.json")
    tensors_path = os.path.join(directory, f"{stem}.safetensors")
    if not os.path.isfile(json_path):
        if os.path.exists(tensors_path):
            raise _corrupt(json_path, f"is missing although {os.path.basename(tensors_path)} exists")
        return None
    document = _read_document(json_path)
    tensors = _read_tensors(tensors_path, document["tensors"])
    return _decode(document["state"], tensors, json_path)


def _corrupt(path: str, problem: str) -> ValueError:
    return ValueError(
        f"{path} {problem}. The checkpoint is corrupted, was tampered with, or was written by an incompatible trl "
        "version; resume from another checkpoint, or train without `resume_from_checkpoint`."
    )


def _read_document(json_path: str) -> dict[str, Any]:
    try:
        with open(json_path, encoding="utf-8") as file:
            document = json.load(file)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _corrupt(json_path, f"is not valid JSON ({error})") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise _corrupt(json_path, f'is not a trl checkpoint state file (no `"format": "{FORMAT}"`)')
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
        raise _corrupt(json_path, f"has format version {version!r}; this trl reads versions 1 to {FORMAT_VERSION}")
    missing = [key for key in ("tensors", "state") if key not in document]
    if missing:
        raise _corrupt(json_path, f"lacks the keys {missing}")
    if not isinstance(document["tensors"], dict) or not all(
        isinstance(entry, dict) and {"dtype", "shape"} <= entry.keys() for entry in document["tensors"].values()
    ):
        raise _corrupt(json_path, "has a malformed tensor manifest (expected {name: {dtype, shape}})")
    return document


def _read_tensors(tensors_path: str, manifest: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not os.path.isfile(tensors_path):
        raise _corrupt(tensors_path, "is missing")
    try:
        tensors = load_file(tensors_path, device="cpu")
    except Exception as error:  # safetensors raises its own error type for a malformed header
        raise _corrupt(tensors_path, f"is not a valid safetensors file ({error})") from error
    if tensors.keys() != manifest.keys():
        extra, absent = sorted(tensors.keys() - manifest.keys()), sorted(manifest.keys() - tensors.keys())
        raise _corrupt(
            tensors_path, f"does not hold the tensors its manifest lists (unexpected {extra}, missing {absent})"
        )
    for name, tensor in tensors.items():
        expected = manifest[name]
        if _dtype_name(tensor) != expected["dtype"] or list(tensor.shape) != expected["shape"]:
            raise _corrupt(
                tensors_path,
                f"holds `{name}` as {_dtype_name(tensor)}{list(tensor.shape)}, but the manifest says "
                f"{expected['dtype']}{expected['shape']}",
            )
    return tensors


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able copy of `value`; tensors move to `tensors` under their path and leave a `{"__tensor__": path}`."""
    if isinstance(value, torch.Tensor):
        name = path or "."
        if name in tensors:
            raise ValueError(f"Two tensors of the checkpoint state share the name {name!r}; rename a key.")
        # A private contiguous CPU copy: safetensors refuses views that share memory.
        tensors[name] = value.detach().to("cpu").contiguous().clone()
        return {_TENSOR_KEY: name}
    if isinstance(value, dict):
        if _TENSOR_KEY in value or not all(isinstance(key, str) for key in value):
            raise TypeError(
                f"Checkpoint state at {path or '<root>'!r}: keys must be strings other than {_TENSOR_KEY!r}."
            )
        return {key: _encode(item, f"{path}.{key}" if path else key, tensors) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(item, f"{path}.{index}" if path else str(index), tensors) for index, item in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"Checkpoint state at {path or '<root>'!r} is a {type(value).__name__}: only dicts, lists, scalars, strings "
        "and tensors can be saved (convert it in `extra_state_dict()`)."
    )


def _decode(value: Any, tensors: dict[str, torch.Tensor], json_path: str) -> Any:
    if isinstance(value, dict):
        if _TENSOR_KEY in value:
            name = value[_TENSOR_KEY]
            if len(value) != 1 or not isinstance(name, str) or name not in tensors:
                raise _corrupt(json_path, f"refers to a tensor {name!r} that its safetensors file does not hold")
            return tensors[name]
        return {key: _decode(item, tensors, json_path) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item, tensors, json_path) for item in value]
    return value


# ------------------------------------------------------------------------------------------- random states
def capture_rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and accelerator (CUDA, XPU, ...) random states, as checkpoint state."""
    python_version, python_internal, python_gauss = random.getstate()
    bit_generator, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": python_version, "internal": list(python_internal), "gauss_next": python_gauss},
        "numpy": {
            "bit_generator": bit_generator,
            "keys": [int(key) for key in keys],
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "cpu": torch.get_rng_state(),
    }
    device_type, module = _accelerator_module()
    if module is not None:
        states = module.get_rng_state_all() if hasattr(module, "get_rng_state_all") else [module.get_rng_state()]
        state["accelerator"] = {"type": device_type, "states": list(states)}
    return state


def parse_rng_state(state: dict[str, Any]) -> dict[str, Any]:
    """Check a [`capture_rng_state`] structure read from a checkpoint and convert it to what the setters take.

    Raises:
        `ValueError`: a part is missing or has the wrong type.
    """
    python, numpy_state = state["python"], state["numpy"]
    internal = python["internal"]
    if not isinstance(internal, list) or not all(isinstance(item, int) for item in internal):
        raise ValueError("the Python random state is not a list of integers")
    keys = numpy_state["keys"]
    if not isinstance(keys, list) or not all(isinstance(key, int) for key in keys):
        raise ValueError("the NumPy random state is not a list of integers")
    if not isinstance(state["cpu"], torch.Tensor) or state["cpu"].dtype != torch.uint8:
        raise ValueError("the torch CPU random state is not a uint8 tensor")
    return {
        "python": (int(python["version"]), tuple(internal), python["gauss_next"]),
        "numpy": (
            str(numpy_state["bit_generator"]),
            np.asarray(keys, dtype=np.uint32),
            int(numpy_state["pos"]),
            int(numpy_state["has_gauss"]),
            float(numpy_state["cached_gaussian"]),
        ),
        "cpu": state["cpu"],
        "accelerator": state.get("accelerator"),
    }


def restore_rng_state(parsed: dict[str, Any]) -> None:
    """Set the random states returned by [`parse_rng_state`]."""
    random.setstate(parsed["python"])
    np.random.set_state(parsed["numpy"])
    torch.set_rng_state(parsed["cpu"])
    saved = parsed["accelerator"]
    device_type, module = _accelerator_module()
    if module is None or saved is None:
        return
    states = saved["states"]
    if saved["type"] == device_type and hasattr(module, "set_rng_state_all") and len(states) == module.device_count():
        module.set_rng_state_all(states)
    elif saved["type"] == device_type and len(states) == 1:
        module.set_rng_state(states[0])
    else:
        warnings.warn(
            f"The checkpoint holds {len(states)} {saved['type']} random state(s) but this process sees "
            f"{module.device_count()} {device_type} device(s): the accelerator random state is not restored, so "
            "sampling differs from the interrupted run.",
            UserWarning,
            stacklevel=2,
        )


def _accelerator_module() -> tuple[str | None, Any]:
    if not torch.accelerator.is_available():
        return None, None
    device_type = torch.accelerator.current_accelerator().type
    return device_type, torch.get_device_module(device_type)


# ------------------------------------------------------------------------------------------- atomic directories
def staging_dir(final_dir: str) -> str:
    """The sibling directory a checkpoint is written into before it is renamed to `final_dir`."""
    parent, name = os.path.split(os.path.normpath(final_dir))
    return os.path.join(parent, f"{STAGING_PREFIX}{name}")


def remove_stale_staging(run_dir: str) -> None:
    """Delete the staging directories of `run_dir`: any that exist were left by a save that did not finish."""
    if not os.path.isdir(run_dir):
        return
    for name in os.listdir(run_dir):
        if name.startswith(STAGING_PREFIX):
            shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)


def publish(staging: str, final_dir: str) -> None:
    """Rename the complete `staging` directory to `final_dir`, replacing a checkpoint of the same name if any."""
    if not os.path.isdir(staging) and os.path.isdir(final_dir):
        return  # another node's main process (`save_on_each_node` on a shared filesystem) published it
    replaced = None
    if os.path.isdir(final_dir):
        # Set aside rather than delete first: `final_dir` is missing only between two renames.
        replaced = f"{staging}.replaced"
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final_dir, replaced)
    os.replace(staging, final_dir)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)


def write_failure_message(error: BaseException | None, final_dir: str, run_dir: str) -> str:
    """Why writing `final_dir` failed and which checkpoint of `run_dir` a resumed run would use instead.

    Args:
        error (`BaseException` or `None`):
            What this process raised, `None` when another process failed.
        final_dir (`str`):
            The checkpoint that was being written.
        run_dir (`str`):
            The directory that holds the checkpoints.
    """
    from transformers.trainer_utils import get_last_checkpoint

    name = os.path.basename(os.path.normpath(final_dir))
    cause = "another process failed to write its part" if error is None else describe_os_error(error)
    last = get_last_checkpoint(run_dir) if os.path.isdir(run_dir) else None
    where = (
        f"The last complete checkpoint is {last}; `resume_from_checkpoint=True` resumes from it."
        if last is not None
        else "There is no complete checkpoint in this directory yet."
    )
    free = _free_space(run_dir)
    return f"Writing {name} failed: {cause}{free}. No partial {name} was left. {where}"


def describe_os_error(error: BaseException) -> str:
    """The real cause of a failed write, e.g. "no space left on device", whatever library wrapped it."""
    code = getattr(error, "errno", None)
    if code is not None:
        return f"{os.strerror(code).lower()} ({error})"
    text = str(error)
    # torch and safetensors wrap the OS error in their own exceptions; its text survives.
    if "no space left" in text.lower() or f"os error {errno.ENOSPC}" in text:
        return f"no space left on device ({text})"
    return f"{type(error).__name__}: {text}"


def _free_space(run_dir: str) -> str:
    try:
        return f" ({shutil.disk_usage(run_dir).free / 2**30:.2f} GiB free on {run_dir})"
    except OSError:
        return ""
