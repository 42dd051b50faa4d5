"""The docs point at things that exist: every repository path the README, docs and deploy
comments name (links, `code` paths) is a real file or folder of this checkout."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md",
        ROOT / "docker-compose.yml", ROOT / "docker-compose.cpu.yml",
        *sorted((ROOT / "deploy").rglob("*.yaml")), *sorted((ROOT / "deploy").rglob("Dockerfile"))]  # fmt: skip
TOP = ("docs", "deploy", "benchmarks", "examples", "tests", "contract", "model_builder",
       "service", "loadtest", "rollout", "testdoubles", "resnet_serving", "fuzz")  # fmt: skip
# A path starting at one of our top-level folders, e.g. docs/deploy.md or service/decode.py.
PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(TOP) + r")/[\w./-]*\w)")
WRITTEN_BY_COMMANDS = {
    "fuzz/corpus",
    "benchmarks/results/model_gpu.json",
    "benchmarks/results/mutation",  # make mutation
}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_named_in_the_docs_exists(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    missing = sorted(
        {
            m
            for m in PATH.findall(text)
            if "*" not in m
            and m not in WRITTEN_BY_COMMANDS
            and not (ROOT / m).exists()
            and not (doc.parent / m).exists()
        }
    )
    assert not missing, f"{doc.relative_to(ROOT)} names paths that do not exist: {missing}"


@pytest.mark.parametrize(
    "doc", [d for d in DOCS if d.suffix == ".md"], ids=lambda p: str(p.relative_to(ROOT))
)
def test_markdown_links_resolve(doc: Path) -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8"))
    local = [link for link in links if "://" not in link and not link.startswith("mailto:")]
    missing = [link for link in local if not (doc.parent / link).exists()]
    assert not missing, f"{doc.relative_to(ROOT)} links to missing files: {missing}"
