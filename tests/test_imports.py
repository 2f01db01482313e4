"""Imports run one way: jimm_nnx -> bridge -> jimm_linen. Nothing in jimm_linen imports bridge,
jimm_nnx or flax.nnx; nothing in bridge imports jimm_nnx. Checked twice: in a fresh interpreter
(what importing really pulls in) and statically over every file (imports inside functions too,
which the first check only sees once they run). Importing changes no global JAX / XLA setting."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# flax.linen itself does not import flax.nnx (flax 0.12: `import flax.linen` leaves it out of
# sys.modules), so the fresh-interpreter check can hold jimm_linen to that strictly.
FORBIDDEN = {"jimm_linen": ("bridge", "jimm_nnx", "flax.nnx"), "bridge": ("jimm_nnx",)}


def _fresh(code: str) -> str:
    """The stdout of `code` run in a fresh interpreter, this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _modules_after(code: str) -> list[str]:
    """The sys.modules names of a fresh interpreter after `code`."""
    return _fresh(f"{code}\nimport sys\nprint('\\n'.join(sys.modules))").split()


def _hits(modules, forbidden) -> list[str]:
    return sorted(m for m in modules for f in forbidden if m == f or m.startswith(f + "."))


def test_importing_jimm_linen_leaves_out_bridge_jimm_nnx_and_flax_nnx():
    modules = _modules_after(
        "import flax.linen, jimm_linen, jimm_linen.registry, jimm_linen.partitioning, jimm_linen.big_vision, "
        "jimm_linen.preprocess\n"
        "import importlib, pkgutil\n"
        "for m in pkgutil.walk_packages(jimm_linen.__path__, 'jimm_linen.'):\n"
        "    importlib.import_module(m.name)")
    assert "jimm_linen.registry" in modules and "flax.linen" in modules
    assert _hits(modules, FORBIDDEN["jimm_linen"]) == []


def test_importing_bridge_leaves_out_jimm_nnx():
    modules = _modules_after("import bridge")
    assert "bridge" in modules
    assert _hits(modules, FORBIDDEN["bridge"]) == []


_SETTINGS_AFTER = """
import importlib, json, os, pkgutil, sys
import jax
from jax._src import xla_bridge
import tokamax  # a dependency: it imports jax's Mosaic GPU module, which sets MOSAIC_GPU_* paths

def snapshot():
    return {"config": {k: repr(v) for k, v in jax.config.values.items()}, "environ": dict(os.environ)}

before = snapshot()
for name in ("jimm_linen", "bridge", "jimm_nnx"):
    package = importlib.import_module(name)
    for m in pkgutil.walk_packages(package.__path__, name + "."):
        importlib.import_module(m.name)
after = snapshot()
changed = {part: sorted(k for k in before[part].keys() | after[part].keys()
                        if before[part].get(k) != after[part].get(k)) for part in before}
print(json.dumps({"changed": changed, "n_config": len(before["config"]),
                  "backends_initialized": xla_bridge.backends_are_initialized(),
                  "imported": sorted(m for m in sys.modules if m.startswith(("jimm_linen.", "bridge.", "jimm_nnx.")))}))
"""


def test_importing_jimm_changes_no_global_jax_or_xla_setting():
    """jax's configuration, XLA_FLAGS and the choice of backend belong to the program: importing
    every module of jimm_linen, bridge and jimm_nnx changes no `jax.config` value, writes no
    environment variable and initialises no backend (after which XLA_FLAGS set by the program
    would be ignored). The dependencies are imported first, so what they do themselves is the
    baseline."""
    report = json.loads(_fresh(_SETTINGS_AFTER).splitlines()[-1])
    assert report["n_config"] > 50 and "jimm_nnx.cli" in report["imported"]  # the check saw them
    assert report["changed"] == {"config": [], "environ": []}
    assert report["backends_initialized"] is False


def test_the_settings_check_sees_a_change():
    code = _SETTINGS_AFTER.replace('package = importlib.import_module(name)',
                                   'package = importlib.import_module(name)\n'
                                   '    jax.config.update("jax_enable_x64", True); os.environ["XLA_FLAGS"] = "x"')
    assert json.loads(_fresh(code).splitlines()[-1])["changed"] == {"config": ["jax_enable_x64"],
                                                                  "environ": ["XLA_FLAGS"]}


def _imported_names(tree: ast.AST):
    """Every module a file names in an import, anywhere in it: `import a.b`, `from a import b`
    (as `a` and `a.b`), `importlib.import_module("a")` and `__import__("a")`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            yield node.args[0].value


def test_no_file_imports_against_the_direction():
    checked, wrong = 0, []
    for package, forbidden in FORBIDDEN.items():
        for file in sorted((ROOT / package).rglob("*.py")):
            checked += 1
            names = _imported_names(ast.parse(file.read_text(), str(file)))
            wrong += [f"{file.relative_to(ROOT)} imports {m}" for m in _hits(names, forbidden)]
    assert checked > 10 and wrong == []


def test_the_static_check_sees_imports_inside_functions():
    tree = ast.parse("def f():\n    import jimm_nnx.models\n    from flax import nnx\n"
                     "    return importlib.import_module('bridge')\n")
    assert _hits(_imported_names(tree), FORBIDDEN["jimm_linen"]) == ["bridge", "flax.nnx", "jimm_nnx.models"]


def test_loading_a_plain_decoder_checkpoint_imports_neither_transformers_nor_torch(tmp_path):
    """HF's config class (whose import pulls in torch where it is installed: seconds) is read only
    for a config.json field outside what jimm reads, runtime switches and what a family checks
    itself; a checkpoint as transformers writes it has none (the rule on the other fields:
    tests/test_decoder_house.py)."""
    from jimm_linen.registry import SMALL_DECODER
    from jimm_nnx import reference

    reference.build_decoder_reference("llama", dict(SMALL_DECODER, num_key_value_heads=2), tmp_path / "llama")
    code = (f"import jimm_linen, jimm_nnx\n"
            f"jimm_linen.from_pretrained({str(tmp_path / 'llama')!r})\n"
            f"jimm_nnx.CausalLM.from_pretrained({str(tmp_path / 'llama')!r}, sharding=jimm_nnx.NoSharding())")
    modules = _modules_after(code)
    assert "jimm_nnx.causal_lm" in modules
    assert _hits(modules, ("transformers", "torch")) == []
