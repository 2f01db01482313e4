"""The legacy HF Flax models (transformers==4.57.6) as a parity reference, installed beside the main env.

Why beside: transformers 5 removed the Flax models; 4.57.6 is the last release that has them
(`FlaxViTForImageClassification`, ...) and it still runs on jax 0.10 / flax 0.12. It cannot share
the main venv: that holds transformers 5.23, and 4.57.6 needs `huggingface_hub<1.0` and
`tokenizers<=0.23.0` (checked by transformers at import time) where the main env has hub 2.x and
tokenizers 0.23.3.

How it runs:

1. `ensure_installed()` (first use only) asks pip's resolver, in the main venv, what installing
   `transformers==4.57.6` *there* would add or replace (`pip install --dry-run --report`). That is
   the exact set that conflicts with, or is missing from, the main env; today:
   transformers 4.57.6, huggingface_hub 0.36.2, tokenizers 0.22.2, and requests with urllib3,
   certifi and charset-normalizer (hub 0.x and transformers 4.x import requests; the main env has
   no requests). Exactly those pinned versions are installed with `pip install --no-deps
   --target <repo>/.cache/legacy-transformers-4.57.6-py3XX`; everything else (jax, flax, numpy,
   safetensors, torch, regex, pyyaml, filelock, tqdm, ...) comes from the main venv. Only the
   package registry configured for pip is used. The install goes to a temporary folder, is
   checked by importing `FlaxViTForImageClassification` from it, and is then renamed into place
   with a stamp file, so a present folder is a complete one: later runs do not reinstall. An
   `fcntl` lock on `<folder>.lock` serialises concurrent installers (pytest-xdist workers).
   Any failure raises `LegacyFlaxInstallError` with pip's output; tests let it fail, never skip.
   `JIMM_LEGACY_FLAX_DIR` overrides the folder.
2. `run_reference(jobs, out_root)` runs *this file* as a script in a subprocess whose
   `PYTHONPATH` starts with that folder (so its transformers shadows the main one), with
   `JAX_PLATFORMS=cpu` and highest matmul precision. For each job it loads a checkpoint directory
   written by PyTorch `ViTForImageClassification.save_pretrained` (transformers 5.23) with
   `FlaxViTForImageClassification.from_pretrained(dir, from_pt=True)` (it reads `model.safetensors`
   and converts the PyTorch layouts; since it only warns about weights it initialises randomly,
   and `_do_init=False` is not supported with `from_pt`, the worker converts the file again and
   checks that every model parameter equals the checkpoint's and every tensor is used), runs it on an NCHW
   `pixel_values` `.npy` (the HF Flax ViT takes NCHW like PyTorch and transposes to NHWC inside),
   and writes `logits.npy`, `hidden_state_{i}.npy` and `meta.json` into the job's folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

TRANSFORMERS_VERSION = "4.57.6"
REQUIREMENT = f"transformers=={TRANSFORMERS_VERSION}"
REPO_ROOT = Path(__file__).resolve().parents[1]
STAMP = ".jimm-legacy-install.json"
PIP_TIMEOUT_S = 900


class LegacyFlaxInstallError(RuntimeError):
    """The side install of the legacy transformers failed (the message carries pip's output)."""


def install_dir() -> Path:
    py = f"py{sys.version_info[0]}{sys.version_info[1]}"  # the side install holds compiled wheels
    default = REPO_ROOT / ".cache" / f"legacy-transformers-{TRANSFORMERS_VERSION}-{py}"
    return Path(os.environ.get("JIMM_LEGACY_FLAX_DIR", default))


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, **kwargs)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LegacyFlaxInstallError(f"{what} failed: {e}") from e
    if proc.returncode != 0:
        raise LegacyFlaxInstallError(
            f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
        )
    return proc


def resolve_side_packages(tmp: Path) -> list[str]:
    """`name==version` of every package that installing REQUIREMENT into the main env would add
    or replace: the minimal set to put beside it."""
    report = tmp / "pip-report.json"
    _run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
          "--report", str(report), REQUIREMENT], "resolving the legacy transformers' dependencies")
    items = json.loads(report.read_text())["install"]
    pins = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items]
    if not any(p.lower().startswith("transformers==") for p in pins):
        raise LegacyFlaxInstallError(f"pip's resolution does not include {REQUIREMENT}: {pins}")
    return sorted(pins)


def _legacy_env(target: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TRANSFORMERS_NO_ADVISORY_WARNINGS="1", TOKENIZERS_PARALLELISM="false",
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONNOUSERSITE="1")
    return env


_CHECK = (
    "import transformers, sys; from transformers import FlaxViTForImageClassification; "
    f"assert transformers.__version__ == {TRANSFORMERS_VERSION!r}, transformers.__version__; "
    "assert transformers.__file__.startswith(sys.argv[1]), transformers.__file__"
)


def ensure_installed() -> Path:
    """The folder holding the legacy transformers; installs it (once, under a lock) if needed."""
    target = install_dir()
    if (target / STAMP).exists():
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if (target / STAMP).exists():  # another process installed it while we waited
            return target
        if target.exists():  # no stamp: a crashed install; start over
            shutil.rmtree(target)
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            pins = resolve_side_packages(tmp)
            _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                  "--no-deps", "--target", str(tmp), *pins], f"installing {pins} beside the main env")
            (tmp / "pip-report.json").unlink(missing_ok=True)
            _run([sys.executable, "-c", _CHECK, str(tmp)], "importing the side-installed transformers",
                 env=_legacy_env(tmp), cwd=tmp)
            (tmp / STAMP).write_text(json.dumps({"requirement": REQUIREMENT, "packages": pins,
                                                 "python": sys.version}, indent=2))
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def run_reference(jobs: list[dict], work_dir: Path, timeout_s: int = 600) -> None:
    """Run the legacy Flax model for each job (`checkpoint`, `pixels` (.npy, NCHW), `out`) in one
    subprocess on the side install. Raises with the subprocess' output if anything fails."""
    target = ensure_installed()
    work_dir.mkdir(parents=True, exist_ok=True)
    jobs_file = work_dir / "legacy_jobs.json"
    jobs_file.write_text(json.dumps([{k: str(v) for k, v in job.items()} for job in jobs]))
    cmd = [sys.executable, str(Path(__file__).resolve()), str(jobs_file), str(target)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                          env=_legacy_env(target), cwd=work_dir)
    if proc.returncode != 0:
        raise RuntimeError(f"legacy Flax reference failed (exit {proc.returncode}):\n"
                           f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")


def load_outputs(out: Path) -> dict:
    import numpy as np

    meta = json.loads((out / "meta.json").read_text())
    return {"meta": meta, "logits": np.load(out / "logits.npy"),
            "hidden_states": [np.load(out / f"hidden_state_{i}.npy") for i in range(meta["num_hidden_states"])]}


# --- the worker: runs in the subprocess, on the side-installed transformers ---------------------

def _worker(jobs_file: str, target: str) -> None:
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    import numpy as np
    import transformers
    from flax.traverse_util import flatten_dict
    from safetensors import safe_open
    from transformers import FlaxViTForImageClassification
    from transformers.modeling_flax_pytorch_utils import load_pytorch_checkpoint_in_flax_state_dict

    assert transformers.__version__ == TRANSFORMERS_VERSION, transformers.__version__
    assert os.path.realpath(transformers.__file__).startswith(os.path.realpath(target)), transformers.__file__
    for job in json.loads(Path(jobs_file).read_text()):
        ckpt, out = Path(job["checkpoint"]), Path(job["out"])
        model = FlaxViTForImageClassification.from_pretrained(ckpt, from_pt=True)
        # from_pretrained only warns about weights it had to initialise randomly (and `from_pt`
        # does not support `_do_init=False`, which would raise): convert the file again and
        # check that it gives exactly the model's parameters, every one of them.
        converted = flatten_dict(load_pytorch_checkpoint_in_flax_state_dict(
            model, str(ckpt / "model.safetensors"), is_sharded=False))
        params = flatten_dict(model.params)
        with safe_open(ckpt / "model.safetensors", framework="np") as f:
            n_tensors = len(list(f.keys()))
        if set(converted) != set(params) or len(params) != n_tensors:
            raise SystemExit(f"{ckpt}: {n_tensors} checkpoint tensors, {len(params)} Flax params; "
                             f"not from the checkpoint: {sorted(set(params) - set(converted))}; "
                             f"unused: {sorted(set(converted) - set(params))}")
        for key, value in params.items():
            if not np.array_equal(np.asarray(value), np.asarray(converted[key])):
                raise SystemExit(f"{ckpt}: parameter {key} is not the checkpoint's")
        pixels = np.load(job["pixels"])
        result = model(pixels, output_hidden_states=True, train=False)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "logits.npy", np.asarray(result.logits, np.float32))
        for i, h in enumerate(result.hidden_states):
            np.save(out / f"hidden_state_{i}.npy", np.asarray(h, np.float32))
        (out / "meta.json").write_text(json.dumps({
            "transformers_version": transformers.__version__, "transformers_file": transformers.__file__,
            "model_class": type(model).__name__, "num_hidden_states": len(result.hidden_states),
            "hidden_act": model.config.hidden_act, "layer_norm_eps": model.config.layer_norm_eps,
            "qkv_bias": model.config.qkv_bias, "jax_backend": jax.default_backend(),
        }))


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
