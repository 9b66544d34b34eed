"""Every reference to docs/method.md in the code, config, rules and README resolves to a heading."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "method.md"
SOURCES = ["workflow_scripts", "rules", "config", "benchmarks", "Snakefile", "Makefile", "README.md"]
REF = re.compile(r"method\.md[^\n]{0,48}")


def references(text: str) -> set[str]:
    """``F<n>``, ``stage <n>`` and ``section <x.y>`` ids cited after "method.md" on a line."""
    out: set[str] = set()
    for m in REF.finditer(text):
        tail = m.group(0)
        for a, b in re.findall(r"F(\d+)(?:\s*[-–]\s*F(\d+))?", tail):
            out |= {f"F{i}" for i in range(int(a), int(b or a) + 1)}
        for group in re.findall(r"stages? (\d+(?:(?:,| and) \d+)*)", tail):
            out |= {f"Stage {n}" for n in re.findall(r"\d+", group)}
        out |= {f"§{n}" for n in re.findall(r"(?:section|§)\s*(\d+(?:\.\d+)?)", tail)}
    return out


def headings(doc: str) -> set[str]:
    """The ids the document defines: ``### F12.``, ``### Stage 7.``, ``## 4.1 ...`` / ``## 3.``."""
    ids: set[str] = set()
    for line in doc.splitlines():
        if not line.startswith("#"):
            continue
        title = line.lstrip("#").strip()
        if m := re.match(r"(F\d+)\.", title):
            ids.add(m.group(1))
        elif m := re.match(r"Stage (\d+)\.", title):
            ids.add(f"Stage {m.group(1)}")
        elif m := re.match(r"(\d+(?:\.\d+)?)\.?\s", title):
            ids.add(f"§{m.group(1)}")
    return ids


def missing(doc: str, text: str) -> set[str]:
    return references(text) - headings(doc)


def test_resolver_reports_what_is_not_there():
    doc = "### F1. x\n### Stage 4. y\n## 4.1 Evaluation\n"
    assert missing(doc, "see docs/method.md F1, stage 4 and section 4.1") == set()
    assert missing(doc, "docs/method.md F99") == {"F99"}
    assert missing(doc, "docs/method.md F1-F3") == {"F2", "F3"}


def test_every_reference_in_the_project_resolves():
    doc = DOC.read_text()
    files = []
    for name in SOURCES:
        path = REPO / name
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    problems = {}
    found = set()
    for path in files:
        if path.suffix not in {".py", ".smk", ".yaml", ".md", ""} or "__pycache__" in path.parts:
            continue
        text = path.read_text(errors="replace")
        found |= references(text)
        if bad := missing(doc, text):
            problems[str(path.relative_to(REPO))] = sorted(bad)
    assert found, "no reference to method.md found: the scan is broken"
    assert not problems, problems
