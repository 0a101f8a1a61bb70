"""The documentation stays true: every link of README.md and docs/*.md resolves (files and `#anchors`), and every
heading of docs/troubleshooting.md is the text of a message trl raises."""

import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(match) for match in re.findall(r"^#{1,6} (.+?)\s*$", text, re.M)}


def _links(page: Path) -> list[str]:
    text = _INLINE_CODE.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    return [first or second for first, second in _LINK.findall(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_links_resolve(page):
    broken = []
    for link in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):  # http(s), mailto: not checked offline
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link} (no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path})")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link} (no heading #{anchor} in {path.name})")
    assert not broken, f"broken links in {page.relative_to(ROOT)}: {broken}"


def test_troubleshooting_headings_are_messages_trl_raises():
    headings = re.findall(r"^### (.+)$", (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8"), re.M)
    assert len(headings) >= 20
    source = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "trl").rglob("*.py"))
    # Adjacent string literals ("...a " newline "b...") are one message.
    source = re.sub(r"\"\s*\n\s*[rf]?\"", "", source)
    missing = [heading for heading in headings if heading not in source]
    assert not missing, f"troubleshooting headings no longer in any trl message: {missing}"


def test_slug():
    assert _slug("Dataset mixtures") == "dataset-mixtures"
    assert _slug("`trl env`") == "trl-env"
    assert _slug("Multi-GPU, DeepSpeed and FSDP") == "multi-gpu-deepspeed-and-fsdp"
