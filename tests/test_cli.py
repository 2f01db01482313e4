"""`jimm parity`: the main job on its embedded defaults, on a directory, its exit status, and what
it says on stderr while it works."""

import inspect
import os
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import numpy as np
import pytest


from jimm_nnx import reference as parity
from jimm_nnx import cli
from tests.helpers import TINY
from tests.lm_checkpoints import build_llama

ROOT = Path(__file__).resolve().parents[1]


# The families whose embedded defaults only this file runs through the parity check: DINOv2's and
# DINOv3's configs (tests/parity/ and tests/test_dino.py use others), and the decoders whose greedy
# column against HF `generate` is tested nowhere else (Llama's is in tests/test_generation.py, the
# other decoders' in their tests/parity/ files). Every default of the other families is checked
# against HF, Linen and NNX, in tests/parity/; running all 35 here took 100-470 s in CI. Two runs of an
# image family and a decoder family each, which xdist can give to both workers.
SELECTED = (("dinov2", "qwen3"), ("dinov3", "olmo2"))


def test_parity_defaults_are_every_family(monkeypatch, capsys):
    """Without `--family`, `jimm parity` checks the embedded defaults of every family the
    registry knows (the check itself is stubbed: running them all is the selected run below)."""
    import jimm_nnx.parity

    families = ("vit", "clip", "siglip", "dinov2", "dinov3", *parity.DECODERS)
    assert tuple(parity.DEFAULTS) == families
    assert sum(map(len, parity.DEFAULTS.values())) == 11 + sum(len(f.parity) for f in parity.DECODERS.values())
    asked, check = [], jimm_nnx.parity.check

    def recorded(*args, **kwargs):
        asked.append(inspect.signature(check).bind(*args, **kwargs).arguments["families"])
        return []

    monkeypatch.setattr(jimm_nnx.parity, "check", recorded)
    assert cli.main(["parity"]) == 0
    assert asked == [list(families)]
    assert "all 0 checks within rel" in capsys.readouterr().out


@pytest.mark.parametrize("families", SELECTED, ids=",".join)
def test_parity_on_embedded_defaults_of_the_selected_families(families, capsys):
    assert cli.main(["parity", "--family", ",".join(families)]) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    names = [(family, name) for family in families for name in parity.DEFAULTS[family]]
    table = out.splitlines()
    assert len(table) == 2 + 2 * sum(1 if family in parity.DECODERS else 2 for family, _ in names) + 2
    for i, (family, name) in enumerate(names):
        rows = [row for row in table if row.startswith(f"| {name} ")]
        assert [row.split("|")[2].strip() for row in rows] == ["linen", "nnx"]
        # Image models also run at another resolution; decoders on a left-padded batch, with the
        # greedy column against HF `generate`.
        assert (f"| {name}@" in out) == (family not in parity.DECODERS)
        assert all((row.split("|")[7].strip() == "100%") == (family in parity.DECODERS) for row in rows)
        assert f"building reference {i + 1}/{len(names)}: {name} ({family})" in err
    assert "NO" not in out
    assert "building" not in out and "loading through" not in out


def test_parity_on_a_decoder_checkpoint_directory(tmp_path, capsys):
    parity.build_reference("qwen3", parity.DEFAULTS["qwen3"]["qwen3-gqa-default"], tmp_path, seed=3)
    assert cli.main(["parity", str(tmp_path), "--batch", "3", "--image-size", "24"]) == 0
    table = capsys.readouterr().out.splitlines()
    rows = [[c.strip() for c in row.split("|")[1:-1]] for row in table[2:4]]
    header = [c.strip() for c in table[0].split("|")[1:-1]]
    assert [r[0] for r in rows] == [str(tmp_path)] * 2 and [r[1] for r in rows] == ["linen", "nnx"]
    worst = header.index("worst tensor (rel)")
    assert {r[worst].split()[0] for r in rows} == {"hidden"} and all(r[-1] == "yes" for r in rows)
    assert len(table) == 6  # no row at another resolution


def test_the_greedy_column_compares_with_hf_generate(tmp_path, monkeypatch, capsys):
    parity.build_reference("llama", parity.DEFAULTS["llama"]["llama-gqa-llama3-bias"], tmp_path, seed=6)
    monkeypatch.setattr(parity, "GREEDY_TOKENS", 3)
    assert cli.main(["parity", str(tmp_path), "--paths", "linen"]) == 0
    row = [c.strip() for c in capsys.readouterr().out.splitlines()[2].split("|")[1:-1]]
    assert row[-2:] == ["100%", "yes"]
    # A continuation unlike HF's fails the row.
    monkeypatch.setitem(sys.modules, "jimm_linen.generation", types.SimpleNamespace(generate=lambda *a, **k: (
        types.SimpleNamespace(sequences=np.pad(np.asarray(a[2]), ((0, 0), (0, k["max_new_tokens"])), constant_values=5)))))
    assert cli.main(["parity", str(tmp_path), "--paths", "linen"]) == 1
    row = [c.strip() for c in capsys.readouterr().out.splitlines()[2].split("|")[1:-1]]
    assert row[-1] == "NO" and row[-2] != "100%"


def test_a_decoder_out_of_tolerance_exits_non_zero(tmp_path, monkeypatch, capsys):
    parity.build_reference("olmo2", parity.DEFAULTS["olmo2"]["olmo2-gqa-headdim-bias"], tmp_path, seed=4)
    monkeypatch.setattr(parity, "RTOL", 0.0)
    assert cli.main(["parity", str(tmp_path), "--paths", "linen"]) == 1
    captured = capsys.readouterr()
    assert "| NO " in captured.out and "out of tolerance" in captured.err


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
    assert cli.main(["parity", "--family", "gpt_neox"]) == 2
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


def _llama_without(directory: Path, tensor: str) -> Path:
    """The tiny Llama checkpoint with one tensor removed from its safetensors file."""
    from safetensors.numpy import load_file, save_file

    build_llama(directory)
    (file,) = directory.glob("*.safetensors")
    tensors = load_file(file)
    del tensors[tensor]
    save_file(tensors, file, metadata={"format": "pt"})
    return directory


@pytest.mark.parametrize("what,says", [
    ("invalid config.json", "invalid JSON in {d}/config.json: line 1 column 23"),
    ("unsupported model_type", "unknown model_type 'nonsense' in {d}/config.json; jimm supports ['clip', "),
    ("missing tensor", "checkpoint does not match the model; missing keys: ['lm_head.weight (-> logits_dense/kernel)']"),
])
def test_a_checkpoint_jimm_cannot_read_is_one_line_and_exit_2(what, says, tmp_path, capsys):
    """Not a traceback with exit 1 (the status of "out of tolerance"): one line naming the
    problem, after the progress lines of the steps that ran, and no table."""
    if what == "missing tensor":
        _llama_without(tmp_path, "lm_head.weight")
    else:
        (tmp_path / "config.json").write_text('{"model_type": "vit", ' if what.startswith("invalid") else
                                              '{"model_type": "nonsense"}')
    capsys.readouterr()  # what building the checkpoint printed
    assert cli.main(["parity", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    *progress, last = captured.err.splitlines()
    assert captured.out == "" and last.startswith(f"{tmp_path}: {says.format(d=tmp_path)}")
    assert all(line.startswith(f"{tmp_path}: ") and re.search(r": (running|loading|comparing) ", line)
               for line in progress)
    assert len(progress) == (2 if what == "missing tensor" else 0)  # the HF reference ran, the jimm load failed


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


def _jimm(*args: str, module: str = "jimm_cli") -> subprocess.CompletedProcess:
    """`jimm ...` as the console script runs it (`jimm_cli:main`), from this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=ROOT, env=env)


def test_console_script_is_jimm_cli():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"jimm": "jimm_cli:main"}
    result = _jimm("parity", "--help")
    assert result.returncode == 0 and "HF checkpoint directories" in result.stdout
    # What older installs' console script and `python -m jimm_nnx.cli` run: the same entry point.
    old = _jimm("parity", "--help", module="jimm_nnx.cli")
    assert (old.returncode, old.stdout) == (0, result.stdout)


def test_a_bad_checkpoint_directory_gives_no_traceback(tmp_path):
    result = _jimm("parity", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"{tmp_path / 'nowhere'}: no such directory\n"
