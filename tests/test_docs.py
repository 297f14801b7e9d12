"""The docs stay true to the code: the configuration reference is the generator's output,
and every relative link in README.md, docs/*.md and the benchmarks' READMEs points at a file
(and heading) that exists.

No Ray, no model: a few seconds (the generator imports the config modules).
"""

from __future__ import annotations

import re
import shlex
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


def _job_commands(text: str):
    """(job, flags) of each ``ray-ner JOB ...`` or ``python -m jobs.JOB ...`` line in the text's fenced shell blocks."""
    for block in re.findall(r"^```(?:bash|sh)\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            for i, word in enumerate(words[:-1]):
                job = words[i + 1] if word.endswith("ray-ner") else words[i + 1][5:] if word == "-m" and words[i + 1].startswith("jobs.") else None
                if job:
                    yield job, [w.split("=", 1)[0] for w in words[i + 2 :] if w.startswith("--")]
                    break


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_in_the_docs_use_flags_their_job_has(doc):
    """A renamed or removed flag fails here."""
    from jobs.__main__ import JOBS
    from jobs.cli import build_parser

    unknown = []
    for job, flags in _job_commands(doc.read_text(encoding="utf-8")):
        assert job in JOBS, f"{doc.name}: unknown job {job!r}"
        main = __import__(JOBS[job][0], fromlist=["main"])
        cls = next(v for k, v in vars(main).items() if k.endswith("Config") and isinstance(v, type) and v.__module__ != "jobs.cli")
        known = set(build_parser(cls, "").__dict__["_option_string_actions"])
        unknown += [f"ray-ner {job} {flag}" for flag in flags if flag not in known and flag != "--help"]
    assert not unknown, f"{doc.relative_to(ROOT)} uses flags that do not exist: {unknown}"
