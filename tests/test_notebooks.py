"""The teaching notebooks in `notebooks/`: each runs top to bottom in a real `python3` kernel
(nbclient) and shows what its stored outputs show, so a notebook can neither break nor go stale
silently; the staleness checks catch a doctored notebook; the README lists exactly the notebooks.

`scripts/run_notebooks.py` re-executes them and stores the outputs; these tests use its helpers."""

import copy
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import run_notebooks  # noqa: E402

pytestmark = pytest.mark.notebooks

NOTEBOOKS = run_notebooks.notebook_paths()


def test_there_are_notebooks():
    assert len(NOTEBOOKS) == 8, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_its_stored_outputs_are_current(path):
    stored = nbformat.read(path, as_version=4)
    assert run_notebooks.stored_problems(stored) == [], path.name
    executed = run_notebooks.execute(copy.deepcopy(stored))
    assert run_notebooks.output_differences(stored, executed) == [], (
        f"{path.name}: outputs changed; re-run python scripts/run_notebooks.py {path.stem}")
    assert (ROOT / "docs" / "notebooks" / f"{path.stem}.png").is_file(), "run scripts/run_notebooks.py"


def test_the_kernel_runs_this_interpreter_and_checkout():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os, sys, jimm_linen\nprint(sys.executable)\nprint(jimm_linen.__file__)\n"
        "print(os.environ.get('XLA_FLAGS'))")])
    executable, module, xla_flags = run_notebooks.execute(nb).cells[0].outputs[0].text.splitlines()
    assert Path(executable).resolve() == Path(sys.executable).resolve()
    assert Path(module).resolve() == ROOT / "jimm_linen" / "__init__.py"
    assert xla_flags == "None"  # the suite's 8 fake devices stay out of the notebooks


def _tiny_notebook():
    """Markdown, a cell with output and one without, run and stamped as the script does."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# tiny"),
        nbformat.v4.new_code_cell("x = 21"),
        nbformat.v4.new_code_cell("print(f'x is {x}, at 0x7f3a2b1c4d50, in 0.25 s')\nx * 2"),
    ])
    return run_notebooks.execute(nb)


def test_a_fresh_run_passes_and_varying_text_is_normalised():
    nb = _tiny_notebook()
    assert run_notebooks.stored_problems(nb) == []
    assert run_notebooks.cell_outputs(nb.cells[2]) == [("stdout", "x is 21, at 0x<address>, in <time>\n"),
                                                       ("text/plain", "42")]
    again = run_notebooks.execute(copy.deepcopy(nb))
    assert run_notebooks.output_differences(nb, again) == []


def test_a_doctored_notebook_is_stale():
    """A cell's source edited, its old outputs kept: the digest check fails without running
    anything, and a fresh run's outputs differ even when the digest is re-stamped by hand."""
    nb = _tiny_notebook()
    nb.cells[1].source = "x = 20"
    assert any("code changed" in p for p in run_notebooks.stored_problems(nb))
    nb.metadata["jimm"]["source_sha256"] = run_notebooks.source_digest(nb)
    assert run_notebooks.stored_problems(nb) == []
    diffs = run_notebooks.output_differences(nb, run_notebooks.execute(copy.deepcopy(nb)))
    assert len(diffs) == 1 and diffs[0].startswith("code cell 1 ")


def test_outputs_deleted_or_run_out_of_order_are_caught():
    nb = _tiny_notebook()
    cleared = copy.deepcopy(nb)
    cleared.cells[2].outputs = []
    assert run_notebooks.output_differences(cleared, nb)  # a fresh run shows output the stored one lacks
    shuffled = copy.deepcopy(nb)
    shuffled.cells[1].execution_count = 3
    assert any("execution counts" in p for p in run_notebooks.stored_problems(shuffled))
    image = copy.deepcopy(nb)
    image.cells[2].outputs.append(nbformat.v4.new_output("display_data", data={"image/png": "", "text/plain": "x"}))
    assert run_notebooks.output_differences(image, nb)  # a stored figure that a fresh run does not draw


def test_readme_lists_every_notebook():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Notebooks", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^- \[`?notebooks/([\w-]+)\.ipynb`?\]\(notebooks/([\w-]+)\.ipynb\)", section, re.M)
    assert all(a == b for a, b in listed), listed
    assert sorted(a for a, _ in listed) == sorted(p.stem for p in NOTEBOOKS)
