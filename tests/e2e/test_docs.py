"""The documentation's Python runs as written: every ```python block of the README and docs/,
in a fresh interpreter, in a folder holding the `case.pdf` the examples submit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from services.core.config import REPO_ROOT
from tests.documents import paragraph, pdf_file
from tests.running import Services

pytestmark = pytest.mark.stack
PAGES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
BLOCKS = [(page.relative_to(REPO_ROOT), i, code) for page in PAGES
          for i, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))]


@pytest.mark.parametrize(("page", "index", "code"), BLOCKS, ids=[f"{p}#{i}" for p, i, _ in BLOCKS])
def test_a_python_block_of_the_docs_runs_as_written(
    services: Services, tmp_path: Path, page: Path, index: int, code: str
) -> None:
    pdf_file(tmp_path, "case.pdf", [paragraph(17 + p, 1200) for p in range(2)])
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ))
    assert run.returncode == 0, (page, index, run.stdout, run.stderr[-3000:])
    if "submit(" in code:
        assert "DocumentCompleted" in run.stdout, (run.stdout, services.logs())


def test_the_readme_has_a_runnable_example() -> None:
    assert any(page.name == "README.md" for page, _, _ in BLOCKS)
