"""The project's documents exist wherever they are cited, and so do the parts cited by name."""

from __future__ import annotations

import re
from pathlib import Path

from splitnn.experiments.report import REPORT_FILE

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("splitnn", "bench", "tests")
STUDY = ROOT / "docs" / "study.md"
_DOCUMENT = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b")
_DEFECT = re.compile(r"\bdefects? (\d+)")
_TABLE = re.compile(r"\bTable ([A-Z])\b")
_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _sources() -> list[Path]:
    here = Path(__file__).resolve()
    files = [p for top in SOURCES for p in sorted((ROOT / top).rglob("*.py"))]
    return [p for p in files if p.resolve() != here and "_pb2" not in p.name]


def cited_documents(text: str) -> set[str]:
    """The Markdown files a source text names, e.g. {"docs/study.md"}; the report that
    `splitnn-experiments report` writes into a results folder is an output, not a document."""
    return {doc for doc in _DOCUMENT.findall(text) if Path(doc).name != REPORT_FILE}


def study_parts() -> tuple[set[int], set[str]]:
    """The numbered defects and the lettered tables of docs/study.md."""
    text = STUDY.read_text()
    section = text.split("## Defects of the reference code", 1)[1].split("\n## ", 1)[0]
    defects = {int(n) for n in re.findall(r"^(\d+)\. \*\*", section, flags=re.MULTILINE)}
    tables = set(re.findall(r"^### Table ([A-Z]):", text, flags=re.MULTILINE))
    return defects, tables


def test_cited_documents_parse() -> None:
    text = 'see docs/study.md, "defect 3", and README.md; not x.mdx, a.md5 or RESULTS/tables.md'
    assert cited_documents(text) == {"docs/study.md", "README.md"}


def test_every_cited_document_exists() -> None:
    missing = {
        f"{path.relative_to(ROOT)}: {doc}"
        for path in _sources()
        for doc in cited_documents(path.read_text())
        if not (ROOT / doc).is_file()
    }
    assert not missing


def test_cited_defects_and_tables_are_in_the_study() -> None:
    defects, tables = study_parts()
    assert defects == set(range(1, 10))
    assert {"A", "B", "C"} <= tables
    unknown: set[str] = set()
    for path in _sources():
        text = path.read_text()
        if "study.md" not in text:
            continue
        unknown |= {
            f"{path.name}: defect {n}" for n in _DEFECT.findall(text) if int(n) not in defects
        }
        unknown |= {f"{path.name}: Table {t}" for t in _TABLE.findall(text) if t not in tables}
    assert not unknown


def test_document_links_resolve() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = {
        f"{page.relative_to(ROOT)}: {target}"
        for page in pages
        for target in _LINK.findall(page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    }
    assert not broken
    readme = (ROOT / "README.md").read_text()
    assert {f"docs/{p.name}" for p in pages[1:]} <= set(_LINK.findall(readme))
