"""Side installs for contenders that cannot share the main environment.

* legacy HF Flax (`transformers==4.57.6`): exactly the install the parity tests use,
  `tests/legacy_flax.py` (`ensure_installed`, `_legacy_env`), imported, not copied.
* the `jimm` NNX library (PyPI `jax-image-models`): the same scheme with the same helpers (pip's
  resolver says what installing it into the main env would add or replace; exactly those pinned
  wheels go into `.cache/jax-image-models-<version>-py3XX` with `--no-deps --target`, checked by
  an import, stamped, renamed into place under a file lock). Today pip adds only the wheel
  itself: its dependencies (jax, flax, tokamax, jaxtyping, safetensors) are already in the main
  venv, so it runs on the same jax/XLA as jimm (a compiler-for-compiler comparison).

A contender's subprocess gets `PYTHONPATH=<side folder>:<repo root>` and `PYTHONNOUSERSITE=1`;
the side folder shadows the main venv for the packages it holds.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests import legacy_flax

REPO_ROOT = legacy_flax.REPO_ROOT
JIMM_LIB_VERSION = "0.4.0"
JIMM_LIB_REQUIREMENT = f"jax-image-models=={JIMM_LIB_VERSION}"
_JIMM_CHECK = (
    "import sys, jimm; from jimm import VisionTransformer; "
    f"assert jimm.__version__ == {JIMM_LIB_VERSION!r}, jimm.__version__; "
    "assert jimm.__file__.startswith(sys.argv[1]), jimm.__file__"
)


def legacy_flax_dir() -> Path:
    return legacy_flax.ensure_installed()


def jimm_lib_dir() -> Path:
    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    default = REPO_ROOT / ".cache" / f"jax-image-models-{JIMM_LIB_VERSION}-{py}"
    return Path(os.environ.get("JIMM_LIB_DIR", default))


def ensure_jimm_lib() -> Path:
    """The folder holding the `jimm` NNX library; installs it (once, under a lock) if needed."""
    return legacy_flax.side_install(jimm_lib_dir(), JIMM_LIB_REQUIREMENT, _JIMM_CHECK, side_env)


def side_env(folder: Path | None) -> dict[str, str]:
    """Environment for a contender subprocess: the side folder (if any) first, then the repo."""
    env = dict(os.environ) if folder is None else legacy_flax._legacy_env(folder)
    if "JAX_PLATFORMS" in os.environ:  # _legacy_env pins cpu for the parity tests; keep ours
        env["JAX_PLATFORMS"] = os.environ["JAX_PLATFORMS"]
    else:
        env.pop("JAX_PLATFORMS", None)
    paths = ([str(folder)] if folder is not None else []) + [str(REPO_ROOT)]
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths + rest)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONNOUSERSITE"] = "1"
    # Compile times are part of every row: a persistent compilation cache the caller set (the test
    # suite sets one) would turn a compile into a file read.
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    return env
