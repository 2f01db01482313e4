"""Re-execute the teaching notebooks in `notebooks/` in place, outputs included, and save each
one's last figure as `docs/notebooks/<name>.png` (the README shows them).

    python scripts/run_notebooks.py                 # every notebook
    python scripts/run_notebooks.py vit dino        # some of them

Each notebook runs top to bottom in a fresh `python3` kernel started from this interpreter,
importing this checkout's packages, in the environment a new user has (no `XLA_FLAGS`: a notebook
that wants fake devices sets them itself). The run stamps a digest of the notebook's code into its
metadata; `tests/test_notebooks.py` re-executes every notebook and fails when the stored outputs
or that digest are stale, so run this after changing a notebook or what it prints.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import resource
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
FIGURES = ROOT / "docs" / "notebooks"
KERNEL = "python3"
TIMEOUT_S = 600  # per cell


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def source_digest(nb) -> str:
    """sha256 of the code cells' sources, in order: what the stored outputs were computed from."""
    code = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(code).encode()).hexdigest()


def kernel_env() -> dict[str, str]:
    """The kernel's environment: this one, with this checkout first on the path, no hub access
    and no inherited `XLA_FLAGS` (the test suite's 8 fake devices would leak in otherwise)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def execute(nb, timeout_s: int = TIMEOUT_S):
    """Run `nb` (an `nbformat` notebook, changed in place) in a fresh kernel from the
    `notebooks/` directory and stamp the digest of its code; returns `nb`."""
    from nbclient import NotebookClient

    # No per-cell timestamps: they would change every stored notebook on every run.
    client = NotebookClient(nb, kernel_name=KERNEL, timeout=timeout_s, record_timing=False,
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=kernel_env())
    nb.metadata["jimm"] = {"source_sha256": source_digest(nb)}
    return nb


_VARYING = [
    (re.compile(r"0x[0-9a-fA-F]{6,}"), "0x<address>"),
    (re.compile(r"\b\d+(\.\d+)?\s?(ms|us|µs|s)\b"), "<time>"),
]


def normalise(text: str) -> str:
    for pattern, replacement in _VARYING:
        text = pattern.sub(replacement, text)
    return text


def cell_outputs(cell) -> list[tuple[str, str]]:
    """What a code cell shows that must not go stale, as `(kind, text)` pairs: its stdout, the
    `text/plain` of results and displays, errors, and a marker per image. stderr is left out: it
    carries warnings that depend on the machine (an unused GPU, a library's deprecation notice)."""
    shown = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            if out.name == "stdout":
                shown.append(("stdout", normalise(out.text)))
        elif out.output_type in ("execute_result", "display_data"):
            shown.append(("text/plain", normalise(out.data.get("text/plain", ""))))
            if "image/png" in out.data:
                shown.append(("image/png", ""))
        elif out.output_type == "error":
            shown.append(("error", f"{out.ename}: {out.evalue}"))
    # A print split over several stream messages is one text.
    merged: list[tuple[str, str]] = []
    for kind, text in shown:
        if merged and kind == "stdout" and merged[-1][0] == "stdout":
            merged[-1] = ("stdout", merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return merged


def stored_problems(nb) -> list[str]:
    """Why the stored notebook is not a clean top-to-bottom run of its current code (empty: it is)."""
    problems = []
    digest = nb.metadata.get("jimm", {}).get("source_sha256")
    if digest != source_digest(nb):
        problems.append("its code changed after its outputs were stored (run scripts/run_notebooks.py)")
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    if counts != list(range(1, len(code) + 1)):
        problems.append(f"execution counts {counts} are not 1..{len(code)}: not one run from the top")
    errors = [i for i, cell in enumerate(code) if any(o.output_type == "error" for o in cell.get("outputs", []))]
    if errors:
        problems.append(f"code cells {errors} stored an error")
    return problems


def output_differences(stored, executed) -> list[str]:
    """Each code cell whose stored outputs differ from a fresh run's (see `cell_outputs`)."""
    old = [cell for cell in stored.cells if cell.cell_type == "code"]
    new = [cell for cell in executed.cells if cell.cell_type == "code"]
    if len(old) != len(new):
        return [f"{len(old)} stored code cells, {len(new)} executed"]
    diffs = []
    for i, (a, b) in enumerate(zip(old, new)):
        if cell_outputs(a) != cell_outputs(b):
            diffs.append(f"code cell {i} ({a.source.splitlines()[0] if a.source else ''!r}...): stored "
                         f"{cell_outputs(a)!r}, a fresh run shows {cell_outputs(b)!r}")
    return diffs


def last_png(nb) -> bytes | None:
    """The notebook's last image output, as PNG bytes."""
    images = [out.data["image/png"] for cell in nb.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    return base64.b64decode(images[-1]) if images else None


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (a notebook's kernel, once shut down):
    on a shared machine a steadier measure of a notebook's cost than wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> int:
    paths = notebook_paths()
    if argv:
        by_name = {p.stem: p for p in paths}
        unknown = [name for name in argv if name not in by_name]
        if unknown:
            print(f"no notebook {unknown} in {NOTEBOOKS}; there are {sorted(by_name)}", file=sys.stderr)
            return 2
        paths = [by_name[name] for name in argv]
    FIGURES.mkdir(parents=True, exist_ok=True)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        start, cpu_start = time.perf_counter(), _children_cpu()
        execute(nb)
        seconds, cpu = time.perf_counter() - start, _children_cpu() - cpu_start
        nbformat.write(nb, path)
        png = last_png(nb)
        if png is None:
            print(f"{path.name}: no figure", file=sys.stderr)
            return 1
        (FIGURES / f"{path.stem}.png").write_bytes(png)
        print(f"{path.name}: {seconds:.1f} s wall, {cpu:.1f} s CPU in its kernel", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
