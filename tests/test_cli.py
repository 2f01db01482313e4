"""`jimm parity`: the main job on its embedded defaults, on a directory, its exit status, and what
it says on stderr while it works."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from jimm_linen import parity
from jimm_nnx import cli
from tests.helpers import TINY

ROOT = Path(__file__).resolve().parents[1]


def test_parity_on_embedded_defaults(capsys):
    assert cli.main(["parity"]) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert list(parity.DEFAULTS) == ["vit", "clip", "siglip", "dinov2", "dinov3"]
    names = [name for family in parity.DEFAULTS for name in parity.DEFAULTS[family]]
    assert len(names) == 11
    for i, name in enumerate(names):
        assert f"| {name} " in out and f"| {name}@" in out
        assert f"building reference {i + 1}/{len(names)}: {name} (" in err
    assert "| nnx " in out and "| linen " in out and "NO" not in out
    assert "building" not in out and "loading through" not in out


def test_parity_on_a_checkpoint_directory(tmp_path, capsys):
    parity.build_vit_reference(TINY, tmp_path, seed=5)
    assert cli.main(["parity", str(tmp_path), "--paths", "linen", "--image-size", "24"]) == 0
    out = capsys.readouterr().out
    assert f"| {tmp_path} " in out and f"| {tmp_path}@24px " in out


def test_progress_is_one_line_per_step_on_stderr(tmp_path, capsys):
    parity.build_vit_reference(TINY, tmp_path, seed=5)
    assert cli.main(["parity", str(tmp_path), "--paths", "nnx,linen"]) == 0
    captured = capsys.readouterr()
    d = tmp_path
    assert captured.err.splitlines() == [
        f"{d}: running the HF reference (PyTorch)",
        f"{d}: loading through nnx", f"{d}: comparing nnx with the reference",
        f"{d}: loading through linen", f"{d}: comparing linen with the reference",
    ]
    table = captured.out.splitlines()
    assert [row.split("|")[2].strip() for row in table[2:4]] == ["nnx", "linen"]
    assert table[4:] == ["", "all 2 checks within rel 1e-05 of HF Transformers (PyTorch)"]


def test_bad_arguments_are_refused(tmp_path, capsys):
    assert cli.main(["parity", "--paths", ""]) == 2
    assert cli.main(["parity", "--paths", "linen,keras"]) == 2
    assert cli.main(["parity", str(tmp_path), "--full"]) == 2
    assert cli.main(["parity", "--family", "gpt2"]) == 2
    err = capsys.readouterr().err
    assert "--paths must name" in err and "--family must name" in err


@pytest.mark.parametrize("what,says", [("missing", "no such directory"), ("file", "not a directory"),
                                       ("empty", "no config.json")])
def test_a_bad_checkpoint_directory_is_one_line_and_exit_2(what, says, tmp_path, capsys):
    bad = tmp_path / what
    if what == "file":
        bad.write_text("")
    elif what == "empty":
        bad.mkdir()
    assert cli.main(["parity", str(bad)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == "" and len(lines) == 1
    assert lines[0].startswith(f"{bad}: ") and says in lines[0]


def test_parity_on_a_clip_checkpoint_directory(tmp_path, capsys):
    parity.build_reference("clip", parity.CLIP_CONFIGS["clip-quick_gelu-eos5"], tmp_path, seed=2)
    assert cli.main(["parity", str(tmp_path), "--paths", "nnx"]) == 0
    out = capsys.readouterr().out
    assert f"| {tmp_path} " in out and "| nnx " in out and "| linen " not in out


def test_out_of_tolerance_exits_non_zero(tmp_path, monkeypatch, capsys):
    parity.build_vit_reference(TINY, tmp_path, seed=5)
    monkeypatch.setattr(parity, "RTOL", 0.0)
    assert cli.main(["parity", str(tmp_path), "--paths", "linen"]) == 1
    captured = capsys.readouterr()
    assert "| NO " in captured.out and "out of tolerance" in captured.err


def _jimm(*args: str) -> subprocess.CompletedProcess:
    """`jimm ...` as the console script runs it (`jimm_nnx.cli:main`), from this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "jimm_nnx.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env)


def test_console_script_is_jimm_nnx_cli():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"jimm": "jimm_nnx.cli:main"}
    result = _jimm("parity", "--help")
    assert result.returncode == 0 and "HF checkpoint directories" in result.stdout


def test_a_bad_checkpoint_directory_gives_no_traceback(tmp_path):
    result = _jimm("parity", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"{tmp_path / 'nowhere'}: no such directory\n"
