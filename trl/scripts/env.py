"""`trl env`: print the versions and hardware a bug report needs."""

from __future__ import annotations

import importlib.metadata
import os
import platform

from .utils import TrlParser, get_git_commit_hash


# (label, distribution name) of the optional packages trl can use.
OPTIONAL_PACKAGES = (
    ("bitsandbytes", "bitsandbytes"),
    ("DeepSpeed", "deepspeed"),
    ("Liger-Kernel", "liger-kernel"),
    ("LLM-Blender", "llm-blender"),
    ("OpenAI", "openai"),
    ("PEFT", "peft"),
    ("vLLM", "vllm"),
)


def package_version(distribution: str) -> str:
    """
    Installed version of a distribution, or `"not installed"`.

    Args:
        distribution (`str`):
            The distribution name on PyPI, e.g. `"liger-kernel"`.
    """
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def trl_version() -> str:
    """The trl version, with `+<7-character commit>` when trl is imported from a git checkout."""
    import trl

    commit = get_git_commit_hash("trl")
    return f"{trl.__version__}+{commit[:7]}" if commit else trl.__version__


def accelerator_names() -> str:
    """The names of the visible accelerators, comma-separated, or `"cpu"`."""
    import torch

    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return ", ".join(xpu.get_device_name(i) for i in range(xpu.device_count()))
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def accelerate_config() -> str:
    """The default accelerate config file, rendered as a nested list, or `"not found"`."""
    from accelerate.commands.config import default_config_file, load_config_from_file

    if not os.path.isfile(default_config_file):
        return "not found"
    config = load_config_from_file(default_config_file).to_dict()
    return "".join(f"\n  - {key}: {value}" for key, value in config.items())


def get_env_info() -> dict[str, str]:
    """
    The environment as `{label: value}`, in the order `trl env` prints it.

    Returns:
        `dict[str, str]`: Platform, Python, trl, PyTorch, accelerators, transformers, accelerate (version and
        default config), datasets, huggingface_hub and the optional packages (`"not installed"` when absent).
    """
    info = {
        "Platform": platform.platform(),
        "Python version": platform.python_version(),
        "TRL version": trl_version(),
        "PyTorch version": package_version("torch"),
        "accelerator(s)": accelerator_names(),
        "Transformers version": package_version("transformers"),
        "Accelerate version": package_version("accelerate"),
        "Accelerate config": accelerate_config(),
        "Datasets version": package_version("datasets"),
        "HF Hub version": package_version("huggingface_hub"),
    }
    for label, distribution in OPTIONAL_PACKAGES:
        info[f"{label} version"] = package_version(distribution)
    return info


def print_env() -> None:
    """Print the environment in the format the bug-report template asks for."""
    lines = [f"- {key}: {value}" for key, value in get_env_info().items()]
    print("\nCopy-paste the following information when reporting an issue:\n")
    print("\n".join(lines))
    print()


def make_parser(subparsers=None, prog: str | None = None) -> TrlParser:
    """
    The (argument-less) parser of `trl env`.

    Args:
        subparsers (`argparse._SubParsersAction` or `None`, *optional*, defaults to `None`):
            When given, `env` is added to them.
        prog (`str` or `None`, *optional*, defaults to `None`):
            Program name shown in the usage line.
    """
    description = "Print the environment information to paste into a bug report."
    if subparsers is not None:
        return subparsers.add_parser("env", help=description, description=description)
    return TrlParser(prog=prog, description=description)


def main() -> None:
    """Run `trl env`."""
    print_env()


if __name__ == "__main__":
    make_parser().parse_args_and_config()
    main()
