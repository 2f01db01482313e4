"""The jimm library's own test suite against `import jimm_nnx as jimm` (`-m jimm_suite`; not in
the default run: it fetches jax-image-models 0.4.0's sdist with pip, builds a ~5 GiB hub cache of
random-weight checkpoints once, and runs full-size models on CPU for about an hour).

Every test of the suite passes except `KNOWN_FAILURES` (each with its reason). With
`JIMM_GENUINE_PYTHON` set to an interpreter whose environment has jax-image-models 0.4.0, the
genuine library runs on the same cache too, and every test that passes there passes here
(except those listed)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import jimm_suite  # noqa: E402

pytestmark = pytest.mark.jimm_suite


def run(target: str, python: str, out: Path) -> dict:
    work = Path(os.environ.get("JIMM_SUITE_WORK", jimm_suite.DEFAULT_WORK))
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "HF_HUB_OFFLINE")}  # the suite's own
    subprocess.run([sys.executable, str(ROOT / "scripts" / "jimm_suite.py"), "--target", target, "--python", python,
                    "--work", str(work), "--out", str(out)], check=True, env=env, cwd=ROOT)
    return json.loads((out / f"result-{target}.json").read_text())


def failures(result: dict) -> dict[str, str]:
    return {name: outcome for name, outcome in result["tests"].items()
            if outcome.split(":")[0] not in ("passed", "skipped")}


def test_jimm_suite_passes_on_jimm_nnx(tmp_path):
    ours = run("ours", sys.executable, tmp_path)
    assert ours["counts"]["passed"] > 0
    assert set(failures(ours)) == set(jimm_suite.KNOWN_FAILURES), failures(ours)
    genuine_python = os.environ.get("JIMM_GENUINE_PYTHON")
    if genuine_python:
        genuine = run("genuine", genuine_python, tmp_path)
        passed_there = {n for n, o in genuine["tests"].items() if o == "passed"}
        listed = {n.removeprefix("::tests.") for n in jimm_suite.KNOWN_FAILURES}
        missing = {n for n in passed_there if ours["tests"].get(n) != "passed"
                   and n.split("::")[0].removeprefix("tests.") not in listed}
        assert not missing, missing
