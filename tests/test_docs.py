"""The docs stay true to the code: the configuration reference is the generator's output,
and every relative link in README.md, docs/*.md and the benchmarks' READMEs points at a file
(and heading) that exists.

No Ray, no model: a few seconds (the generator imports the config modules).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").glob("**/README.md"))]
# [text](target) outside code spans and fenced blocks; the target up to a space or ")"
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def test_configuration_reference_is_generated_from_the_config_dataclasses():
    from jobs.config_docs import render

    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == render(), "docs/configuration.md is stale: run `python -m jobs.config_docs > docs/configuration.md`"


def _anchors(path: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(doc):
    missing = []
    for target in LINK.findall(_prose(doc.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # http(s)://, mailto:
        path, _, anchor = target.partition("#")
        file = (doc.parent / path) if path else doc
        if not file.exists():
            missing.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)} links to files or headings that do not exist: {missing}"


def test_the_link_check_sees_links():
    """Guard against a pattern that matches nothing and so passes everything."""
    sample = "See [the guide](docs/tagging.md#output) and `[not](a-link)`, [site](https://ray.io)."
    assert LINK.findall(_prose(sample)) == ["docs/tagging.md#output", "https://ray.io"]
