"""Model cards written by every trainer next to the saved weights."""

from __future__ import annotations

import os
import platform
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import jinja2
import yaml


_TRL_CITATION = """@misc{trl,
    title        = {{trl: Post-training for Transformer Language Models}},
    author       = {The trl developers},
    year         = 2026,
    howpublished = {\\url{https://github.com/huggingface/trl}}
}"""


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def render_model_card(
    template_file: str,
    base_model: str | None,
    model_name: str,
    hub_model_id: str | None,
    dataset_name: str | None,
    tags: list[str],
    trainer_name: str,
    paper: dict[str, str],
    trl_version: str,
) -> str:
    """Render a model card (YAML metadata + markdown body) from a template in `trl/templates/`.

    Args:
        template_file (`str`):
            Template name, e.g. `"lm_model_card.md"`.
        base_model (`str` or `None`):
            Hub id of the model that was fine-tuned.
        model_name (`str`):
            Name of the trained model.
        hub_model_id (`str` or `None`):
            Hub repository the model is pushed to.
        dataset_name (`str` or `None`):
            Dataset used for training.
        tags (`list[str]`):
            Metadata tags.
        trainer_name (`str`):
            The method, e.g. `"SFT"`.
        paper (`dict[str, str]`):
            The method's paper: `title`, `id` (arXiv id) and `citation` (BibTeX), each optional.
        trl_version (`str`):
            Version of trl that trained the model.
    """
    metadata = {"library_name": "transformers", "model_name": model_name, "tags": list(dict.fromkeys(tags))}
    if base_model:
        metadata["base_model"] = base_model
    if dataset_name:
        metadata["datasets"] = [dataset_name]
    template = resources.files("trl.templates").joinpath(template_file).read_text(encoding="utf-8")
    body = jinja2.Template(template).render(
        model_name=model_name,
        base_model=base_model,
        hub_model_id=hub_model_id or model_name,
        dataset_name=dataset_name,
        trainer_name=trainer_name,
        paper_title=paper.get("title"),
        paper_id=paper.get("id"),
        trainer_citation=paper.get("citation"),
        trl_citation=_TRL_CITATION,
        versions={
            "TRL": trl_version,
            "Transformers": _package_version("transformers"),
            "PyTorch": _package_version("torch"),
            "Datasets": _package_version("datasets"),
            "Tokenizers": _package_version("tokenizers"),
            "Python": platform.python_version(),
        },
    )
    return f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n\n{body}"


def write_model_card(
    trainer: Any, model_name: str | None, dataset_name: str | None, tags: str | list[str] | None, output_dir: str
) -> None:
    """Write the `README.md` model card of `trainer`'s run into `output_dir`.

    Args:
        trainer ([`BaseTrainer`]):
            The trainer (its model, config, `_template_file`, `_tag_names`, `_name` and `_paper`).
        model_name (`str` or `None`):
            Name of the trained model; `None` uses the output directory's name.
        dataset_name (`str` or `None`):
            Dataset used for training.
        tags (`str`, `list[str]` or `None`):
            Extra tags for the card's metadata.
        output_dir (`str`):
            Where to write the card.
    """
    from .. import __version__

    base_model = getattr(getattr(trainer.model, "config", None), "_name_or_path", None)
    if base_model and os.path.isdir(base_model):
        base_model = None  # a local path says nothing to a reader of the card
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    card = render_model_card(
        template_file=trainer._template_file,
        base_model=base_model,
        model_name=model_name or os.path.basename(os.path.normpath(output_dir)),
        hub_model_id=getattr(trainer, "hub_model_id", None) or trainer.args.hub_model_id,
        dataset_name=dataset_name,
        tags=["generated_from_trainer", *tags, *trainer._tag_names],
        trainer_name=trainer._name,
        paper=trainer._paper,
        trl_version=__version__,
    )
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as file:
        file.write(card)
