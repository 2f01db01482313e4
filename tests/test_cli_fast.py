"""`jimm --help`, each command's help and every argument error come before anything imports jax,
flax, torch or transformers (each run in a fresh interpreter, its `sys.modules` read after
`jimm_cli.main` returns): help shows each default and what each sampling flag does, each error is
one line with exit status 2. The decoder families the help names (read from the family packages'
source) are the registry's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import jimm_cli

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("jax", "flax", "torch", "transformers", "jimm_nnx", "jimm_linen", "numpy")

# Runs `jimm` on argv, then prints (on a last stdout line) the heavy modules it imported.
WRAPPER = f"""
import json, sys
import jimm_cli
code = jimm_cli.main(sys.argv[1:])
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))))
sys.exit(code)
"""


def _jimm(*args: str) -> tuple[int, str, str, list[str]]:
    """Exit status, stdout, stderr of `jimm ARGS`, and the heavy packages it imported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, cwd=ROOT,
                            env=env)
    *out, imported = result.stdout.splitlines()
    return result.returncode, "\n".join(out), result.stderr, json.loads(imported)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A directory that passes the checks made before loading: config.json and tokenizer file
    (empty: nothing may read them before the arguments are checked)."""
    d = tmp_path_factory.mktemp("ckpt")
    (d / "config.json").write_text("{}")
    (d / "tokenizer.json").write_text("")
    return d


@pytest.mark.parametrize("args", [(), ("parity",), ("generate",)])
def test_help_imports_nothing_heavy(args):
    code, out, err, imported = _jimm(*args, "--help")
    assert (code, err, imported) == (0, "", [])
    assert out.startswith(f"usage: jimm {' '.join(args)}".rstrip())


def test_generate_help_gives_each_default_and_what_each_flag_does():
    _, out, _, _ = _jimm("generate", "--help")
    text = " ".join(out.split())
    for says in [
        "--max-new-tokens N generate at most N tokens; fewer when an end-of-sequence token comes (default: 128)",
        "--temperature T sample from softmax(logits / T)", "0 picks the most likely token each step, greedy "
        "(default: generation_config.json's, else 1)",
        "--top-k K sample only among the K most likely tokens; 0 turns the filter off (default: "
        "generation_config.json's, else 50)",
        "--top-p P nucleus sampling: only among the most likely tokens whose probabilities add up to P; 1 turns "
        "the filter off (default: generation_config.json's, else 1)",
        "--min-p P sample only among tokens at least P times as likely as the most likely one; 0 turns the "
        "filter off (default: generation_config.json's, else 0)",
        "--seed SEED random seed of the sampling (default: 0)",
        "printed first, as its tokens decode, so prompt and continuation read as one text (with --chat, only the "
        "reply is printed)",
    ]:
        assert says in text, says


def test_parity_help_gives_the_defaults():
    _, out, _, _ = _jimm("parity", "--help")
    text = " ".join(out.split())
    assert "(default: linen,nnx)" in text and "(default: 2)" in text
    assert f"(default: all of {', '.join(jimm_cli.parity_families())})" in text


@pytest.mark.parametrize("args,says", [
    (["--max-new-tokens", "0"], "jimm generate: argument --max-new-tokens: must be an integer >= 1, got 0"),
    (["--max-new-tokens", "-3"], "jimm generate: argument --max-new-tokens: must be an integer >= 1, got -3"),
    (["--max-new-tokens", "many"], "jimm generate: argument --max-new-tokens: invalid int value: 'many'"),
    (["--top-p", "0"], "jimm generate: argument --top-p: must be in (0, 1], got 0"),
    (["--top-p", "1.01"], "jimm generate: argument --top-p: must be in (0, 1], got 1.01"),
    (["--top-k", "-1"], "jimm generate: argument --top-k: must be an integer >= 0 (0: no top-k filter), got -1"),
    (["--temperature", "-0.5"], "jimm generate: argument --temperature: must be a number >= 0 (0: greedy), got -0.5"),
    (["--temperature", "0", "--top-p", "0.9", "--min-p", "0.1"],
     "--temperature 0 is greedy decoding; --top-p, --min-p applies only when sampling"),
    (["--min-p", "-0.1"], "jimm generate: argument --min-p: must be in [0, 1], got -0.1"),
    (["--min-p", "1.5"], "jimm generate: argument --min-p: must be in [0, 1], got 1.5"),
])
def test_generate_argument_errors(ckpt, args, says):
    code, out, err, imported = _jimm("generate", str(ckpt), "--prompt", "hi", *args)
    assert (code, out, imported) == (2, "", [])
    assert err.count("\n") == 1 and err.startswith(says), err


@pytest.mark.parametrize("what,says", [
    ("missing", "{d}: no such directory"), ("file", "{d}: not a directory"),
    ("empty", "{d}: no config.json there (not an HF checkpoint directory)"),
    ("no tokenizer", "{d}: no tokenizer there (none of tokenizer.json, "),
    ("no prompt", "jimm generate: the following arguments are required: --prompt"),
])
def test_generate_path_errors(tmp_path, what, says):
    d = tmp_path / "ckpt"
    if what == "file":
        d.write_text("")
    elif what != "missing":
        d.mkdir()
    if what in ("no tokenizer", "no prompt"):
        (d / "config.json").write_text("{}")
    prompt = [] if what == "no prompt" else ["--prompt", "hi"]
    code, out, err, imported = _jimm("generate", str(d), *prompt)
    assert (code, out, imported) == (2, "", [])
    assert err.count("\n") == 1 and err.startswith(says.format(d=d)), err


@pytest.mark.parametrize("args,says", [
    (["--family", "vit,gpt_neox"], "--family must name some of ['vit', 'clip', "),
    (["--paths", "linen,keras"], "--paths must name some of ['linen', 'nnx'], got 'linen,keras'"),
    (["--paths", ""], "--paths must name some of ['linen', 'nnx'], got ''"),
    (["{ckpt}", "--full"], "--full adds the full-size configs to the embedded defaults; it does not apply"),
    (["{ckpt}", "--family", "vit"], "--family picks among the embedded defaults; a checkpoint directory's"),
    (["--batch", "0"], "jimm parity: argument --batch: must be an integer >= 1, got 0"),
    (["{ckpt}/nowhere"], "{ckpt}/nowhere: no such directory"),
    (["--bogus"], "jimm: unrecognized arguments: --bogus"),
])
def test_parity_argument_errors(ckpt, args, says):
    code, out, err, imported = _jimm("parity", *(a.format(ckpt=ckpt) for a in args))
    assert (code, out, imported) == (2, "", [])
    assert err.count("\n") == 1 and err.startswith(says.format(ckpt=ckpt)), err


def test_the_help_names_the_registrys_families():
    """Read from source, so a family the scan missed (written another way) fails here."""
    from jimm_linen.registry import decoders
    from jimm_nnx import reference
    from jimm_nnx.parity import RUNNERS

    assert jimm_cli.decoder_families() == {name: fam.nnx_name for name, fam in decoders().items()}
    assert list(jimm_cli.decoder_families()) == list(decoders())
    assert jimm_cli.parity_families() == list(reference.DEFAULTS)
    assert set(jimm_cli.PARITY_PATHS) == set(RUNNERS)


def test_jimm_nnx_cli_is_the_same_entry_point():
    from jimm_nnx import cli

    assert cli.main is jimm_cli.main
