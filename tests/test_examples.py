"""Every example script carries a PEP 723 header and compiles; the online-preference examples run offline."""

import py_compile
import runpy
from pathlib import Path

import pytest


EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "scripts").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.stem)
def test_example_has_a_pep_723_header_and_compiles(path):
    text = path.read_text()
    assert text.startswith("# /// script\n") and "\n# ///\n" in text, f"{path.name} lacks a PEP 723 header"
    assert '"trl' in text.split("\n# ///\n")[0], f"{path.name}'s header does not depend on trl"
    py_compile.compile(str(path), doraise=True)


@pytest.mark.parametrize("name", ["online_dpo", "nash_md", "xpo"])
def test_online_preference_example_trains(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = next(path for path in EXAMPLES if path.stem == name)
    trainer = runpy.run_path(str(path), run_name="__main__")["trainer"]
    assert trainer.state.global_step == trainer.args.max_steps == 10
    assert all("loss" in row for row in trainer.state.log_history[:-1])
