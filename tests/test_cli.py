"""`jimm parity`: the main job on its embedded defaults, on a directory, and its exit status."""

import shutil
import subprocess
import sys
from pathlib import Path

from jimm_linen import cli, parity
from tests.helpers import TINY


def test_parity_on_embedded_defaults(capsys):
    assert cli.main(["parity"]) == 0
    out = capsys.readouterr().out
    for family in ("vit", "clip", "siglip"):
        assert parity.DEFAULTS[family]
        for name in parity.DEFAULTS[family]:
            assert f"| {name} " in out and f"| {name}@" in out
    assert "| nnx " in out and "| linen " in out and "NO" not in out


def test_parity_on_a_checkpoint_directory(tmp_path, capsys):
    parity.build_vit_reference(TINY, tmp_path, seed=5)
    assert cli.main(["parity", str(tmp_path), "--paths", "linen", "--image-size", "24"]) == 0
    out = capsys.readouterr().out
    assert f"| {tmp_path} " in out and f"| {tmp_path}@24px " in out


def test_bad_arguments_are_refused(tmp_path, capsys):
    assert cli.main(["parity", "--paths", ""]) == 2
    assert cli.main(["parity", "--paths", "linen,keras"]) == 2
    assert cli.main(["parity", str(tmp_path), "--full"]) == 2
    assert cli.main(["parity", "--family", "gpt2"]) == 2
    err = capsys.readouterr().err
    assert "--paths must name" in err and "--family must name" in err


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


def test_console_script_is_installed():
    jimm = shutil.which("jimm") or str(Path(sys.executable).parent / "jimm")
    result = subprocess.run([jimm, "parity", "--help"], capture_output=True, text=True, check=True)
    assert "HF checkpoint directories" in result.stdout
