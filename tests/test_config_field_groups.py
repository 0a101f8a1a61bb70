"""Factoring repeated config field blocks into `base_config.py` leaves every config's fields as they were: names,
types, defaults, help metadata and class docstrings are compared with `tests/data/config_fields_snapshot.json`,
recorded before the refactor."""

import dataclasses
import json
from pathlib import Path

import pytest

import trl
from trl.trainer.base_config import _ModelLoadingFields, _ReferenceSyncFields


SNAPSHOT = json.loads((Path(__file__).parent / "data" / "config_fields_snapshot.json").read_text())


def _annotation(cls, name):
    # Read from the classes, not `field.type`: `HfArgumentParser` narrows `field.type` in place (e.g. `str | None`
    # becomes `str`) whenever a parser is built in the same process.
    for klass in cls.__mro__:
        annotations = klass.__dict__.get("__annotations__", {})
        if name in annotations:
            return str(annotations[name])
    raise AssertionError(f"{cls.__name__}.{name} has no annotation")


def describe(cls):
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "<MISSING>"
        try:
            json.dumps(default)
        except TypeError:
            default = repr(default)
        out[f.name] = {
            "name": f.name,
            "type": _annotation(cls, f.name),
            "default": default,
            "help": f.metadata.get("help"),
        }
    return out


@pytest.mark.parametrize("name", sorted(SNAPSHOT))
def test_config_fields_are_unchanged(name):
    cls = getattr(trl, name)
    before = {row["name"]: row for row in SNAPSHOT[name]["fields"]}
    # JSON turns tuples into lists: compare both sides through JSON.
    assert json.loads(json.dumps(describe(cls))) == before
    assert cls.__doc__ == SNAPSHOT[name]["doc"]


@pytest.mark.parametrize("name", ["DPOConfig", "KTOConfig"])
def test_reference_sync_fields_come_from_one_mixin(name):
    cls = getattr(trl, name)
    assert issubclass(cls, _ReferenceSyncFields)
    for field in dataclasses.fields(_ReferenceSyncFields):
        assert field.name not in cls.__dict__.get("__annotations__", {}), field.name
    config = cls(output_dir="unused", report_to="none", sync_ref_model=True, ref_model_sync_steps=3)
    assert (config.sync_ref_model, config.ref_model_sync_steps, config.ref_model_mixup_alpha) == (True, 3, 0.6)


@pytest.mark.parametrize(
    "name",
    ["DPOConfig", "SFTConfig", "RewardConfig", "PRMConfig", "CPOConfig", "ORPOConfig", "KTOConfig", "BCOConfig"],
)
def test_model_loading_fields_come_from_one_mixin(name):
    cls = getattr(trl, name)
    assert issubclass(cls, _ModelLoadingFields)
    config = cls(
        output_dir="unused", report_to="none", model_init_kwargs='{"dtype": "float32"}', trust_remote_code=True
    )
    assert config.model_init_kwargs == {"dtype": "float32"} and config.trust_remote_code is True
