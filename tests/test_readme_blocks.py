"""Every ```python block of README.md and of the docs pages it links runs as written: each in a
fresh interpreter in an empty temporary directory (the blocks make their own small checkpoints),
with 8 fake CPU devices for a block that builds a mesh. The number of blocks found is checked,
so a formatting change cannot make the extraction skip one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The pages and how many Python blocks each holds.
EXPECTED = {"README.md": 3, "docs/vision.md": 1}


def python_blocks(text: str) -> list[str]:
    """The body of each fenced block opened by a line of exactly ```python."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def linked_pages() -> list[str]:
    """README.md and the Markdown pages it links to."""
    readme = (ROOT / "README.md").read_text()
    return ["README.md", *sorted(set(re.findall(r"\]\(([\w/.-]+\.md)(?:#[\w-]*)?\)", readme)))]


def test_the_blocks_found_are_the_expected_ones():
    found = {page: len(python_blocks((ROOT / page).read_text())) for page in linked_pages()}
    assert {page: n for page, n in found.items() if n} == EXPECTED
    # Every fence that opens a Python block is one the extraction reads.
    for page in EXPECTED:
        fences = re.findall(r"^\s*```\s*py(?:thon)?\b.*$", (ROOT / page).read_text(), flags=re.M)
        assert len(fences) == EXPECTED[page], fences


def test_the_extraction_reads_whole_blocks():
    text = "x\n```python\na = 1\n\nb = 2\n```\n```bash\nls\n```\n```python\nc = 3\n```\n"
    assert python_blocks(text) == ["a = 1\n\nb = 2\n", "c = 3\n"]


@pytest.mark.parametrize("page,index", [(page, i) for page, n in EXPECTED.items() for i in range(n)])
def test_block_runs(page, index, tmp_path):
    block = python_blocks((ROOT / page).read_text())[index]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("XLA_FLAGS", None)  # tests/conftest.py's 8 devices: only the blocks that say they need them
    if "make_mesh" in block:
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{page} block {index + 1} failed:\n{result.stderr[-3000:]}"
