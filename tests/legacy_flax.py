"""The legacy HF Flax models (transformers==4.57.6) as a parity reference, installed beside the main env.

Why beside: transformers 5 removed the Flax models; 4.57.6 is the last release that has them
(`FlaxViTForImageClassification`, ...) and it still runs on jax 0.10 and 0.12 / flax 0.12 (both
stacks CI tests). It cannot share
the main venv: that holds transformers 5.23, and 4.57.6 needs `huggingface_hub<1.0` and
`tokenizers<=0.23.0` (checked by transformers at import time) where the main env has hub 2.x and
tokenizers 0.23.3.

How it runs:

1. `ensure_installed()` (first use only) asks pip's resolver, in the main venv, what installing
   `transformers==4.57.6` *there* would add or replace (`pip install --dry-run --report`). That is
   the exact set that conflicts with, or is missing from, the main env; today:
   transformers 4.57.6, huggingface_hub 0.36.2, tokenizers 0.22.2, and requests with urllib3,
   certifi and charset-normalizer on Python 3.11 (hub 0.x and transformers 4.x import requests,
   which the main env there lacks; on 3.12 tokamax 0.0.17 brings it). Exactly those pinned
   versions are installed with `pip install --no-deps --target
   <repo>/.cache/legacy-transformers-4.57.6-py3XX` by the interpreter running the tests (one
   folder per Python version: it holds compiled wheels); everything else (jax, flax, numpy,
   safetensors, torch, regex, pyyaml, filelock, tqdm, ...) comes from the main venv. Only the
   package registry configured for pip is used. The install goes to a temporary folder, is
   checked by importing `FlaxViTForImageClassification` from it, and is then renamed into place
   with a stamp file, so a present folder is a complete one: later runs do not reinstall. An
   `fcntl` lock on `<folder>.lock` serialises concurrent installers (pytest-xdist workers).
   Any failure raises `LegacyFlaxInstallError` with pip's output; tests let it fail, never skip.
   `JIMM_LEGACY_FLAX_DIR` overrides the folder.
2. `run_reference(jobs, work_dir)` runs *this file* as a script in a subprocess whose
   `PYTHONPATH` starts with that folder (so its transformers shadows the main one), with
   `JAX_PLATFORMS=cpu` and highest matmul precision. A job is a dict: `checkpoint` (a directory
   written by a PyTorch model's `save_pretrained`, transformers 5.23), `out` (a folder for the
   results), `model_class` (a legacy Flax class of transformers 4.57.6, e.g. `FlaxCLIPModel`;
   default `FlaxViTForImageClassification`) and `inputs` (`{argument: .npy path}`, e.g.
   `pixel_values` (NCHW: the HF Flax vision models take NCHW like PyTorch and transpose to NHWC
   inside), `input_ids`, `attention_mask`); a job with only `pixels` means
   `inputs={"pixel_values": pixels}`. For each job the worker loads the checkpoint with
   `<model_class>.from_pretrained(dir, from_pt=True)` (it reads `model.safetensors` and converts
   the PyTorch layouts; since it only warns about weights it initialises randomly, and
   `_do_init=False` is not supported with `from_pt`, the worker converts the file again and
   checks that every model parameter equals the checkpoint's and every tensor is used; the
   random init that `from_pretrained` runs before putting the checkpoint's weights in place is
   jitted, see `_jitted_init`), calls `model(**inputs, output_hidden_states=True, train=False)`
   under `jax.jit` (op by op, each op is its own XLA compile), and writes every array of the
   output (nested outputs and tuples included) as `<field>[.<subfield>|.<i>]*.npy`, plus
   `meta.json` (versions, class, the model's full config, the output's structure).
   `load_outputs(out)` reads them back as a nested dict mirroring the output (tuples as lists):
   `{"meta", "logits", "hidden_states": [...]}` for the ViT, `{"meta", "logits_per_image",
   "text_embeds", ..., "text_model_output": {"hidden_states": [...], "pooler_output", ...}, ...}`
   for CLIP.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
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
def _file_lock(path: Path, waiting: str):
    """An exclusive `fcntl` lock on `path`; `waiting` is said if another process holds it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(waiting)
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


def say(message: str) -> None:
    """Progress of a side install on stderr: pip takes minutes and says nothing. Under pytest,
    `tests/conftest.py` replaces this with a write that bypasses the output capture, so that it
    reaches the terminal from an xdist worker too."""
    print(message, file=sys.stderr, flush=True)


def resolve_side_packages(tmp: Path, requirement: str = REQUIREMENT) -> list[str]:
    """`name==version` of every package that installing `requirement` into the main env would
    add or replace: the minimal set to put beside it."""
    report = tmp / "pip-report.json"
    _run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
          "--report", str(report), requirement], f"resolving {requirement}'s dependencies")
    items = json.loads(report.read_text())["install"]
    report.unlink()
    pins = [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items]
    name = requirement.split("==")[0].lower()
    if not any(p.lower().startswith(name + "==") for p in pins):
        raise LegacyFlaxInstallError(f"pip's resolution does not include {requirement}: {pins}")
    return sorted(pins)


def side_install(target: Path, requirement: str, check: str, env) -> Path:
    """Install what `requirement` adds to the main env into `target` (`--no-deps --target`),
    once, under a file lock: resolve, install into a temporary folder, run `check` (Python code
    getting the folder as argv[1]) with `env(folder)`, stamp, rename into place."""
    if (target / STAMP).exists():
        return target
    with _file_lock(target.with_name(target.name + ".lock"), f"{requirement}: waiting for another process "
                    f"installing it into {target}"):
        if (target / STAMP).exists():  # another process installed it while we waited
            return target
        if target.exists():  # no stamp: a crashed install; start over
            shutil.rmtree(target)
        say(f"{requirement}: first use, installing it beside the main env into {target} (a minute or two)")
        start = time.monotonic()
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            pins = resolve_side_packages(tmp, requirement)
            _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                  "--no-deps", "--target", str(tmp), *pins], f"installing {pins} beside the main env")
            _run([sys.executable, "-c", check, str(tmp)], f"importing the side-installed {requirement}",
                 env=env(tmp), cwd=tmp)
            (tmp / STAMP).write_text(json.dumps({"requirement": requirement, "packages": pins,
                                                 "python": sys.version}, indent=2))
            os.replace(tmp, target)
            say(f"{requirement}: installed in {time.monotonic() - start:.0f} s")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _legacy_env(target: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(target)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TRANSFORMERS_NO_ADVISORY_WARNINGS="1", TOKENIZERS_PARALLELISM="false",
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONNOUSERSITE="1")
    return env


_CHECK = (
    "import transformers, sys; from transformers import FlaxViTForImageClassification, FlaxCLIPModel; "
    f"assert transformers.__version__ == {TRANSFORMERS_VERSION!r}, transformers.__version__; "
    "assert transformers.__file__.startswith(sys.argv[1]), transformers.__file__"
)


def ensure_installed() -> Path:
    """The folder holding the legacy transformers; installs it (once, under a lock) if needed."""
    return side_install(install_dir(), REQUIREMENT, _CHECK, _legacy_env)


DEFAULT_MODEL_CLASS = "FlaxViTForImageClassification"


def _job_spec(job: dict) -> dict:
    """A job in the worker's form: `checkpoint`, `out`, `model_class`, `inputs` (all strings)."""
    unknown = set(job) - {"checkpoint", "out", "model_class", "inputs", "pixels"}
    if unknown or "checkpoint" not in job or "out" not in job:
        raise ValueError(f"a legacy Flax job needs `checkpoint` and `out` and takes `model_class`, `inputs` "
                         f"(or `pixels`); got {sorted(job)}")
    inputs = dict(job.get("inputs") or {})
    if "pixels" in job:
        if "pixel_values" in inputs:
            raise ValueError("give the pixels as `pixels` or as `inputs['pixel_values']`, not both")
        inputs["pixel_values"] = job["pixels"]
    if not inputs:
        raise ValueError(f"the job for {job['checkpoint']} has no inputs")
    return {"checkpoint": str(job["checkpoint"]), "out": str(job["out"]),
            "model_class": str(job.get("model_class", DEFAULT_MODEL_CLASS)),
            "inputs": {str(k): str(v) for k, v in inputs.items()}}


def lazy_outputs(jobs: dict, root):
    """`get(name)` -> the legacy outputs of job `name`. The install and the subprocess run on the
    first call (inside a test, so that their failure is that test's failure, never a skip); a
    failure fails every later call too."""
    import pytest

    state: dict = {}

    def get(name: str) -> dict:
        if "error" in state:
            pytest.fail(f"the legacy Flax reference is unavailable: {state['error']}")
        if "outputs" not in state:
            try:
                run_reference(list(jobs.values()), root)
                state["outputs"] = {n: load_outputs(j["out"]) for n, j in jobs.items()}
            except Exception as e:
                state["error"] = e
                raise
        return state["outputs"][name]

    return get

def run_reference(jobs: list[dict], work_dir: Path, timeout_s: int = 600) -> None:
    """Run the legacy Flax model of each job (see the module docstring: `checkpoint`, `out`,
    `model_class`, `inputs` of .npy paths, or the ViT's `pixels`) in one subprocess on the side
    install. Raises with the subprocess' output if anything fails."""
    specs = [_job_spec(job) for job in jobs]
    target = ensure_installed()
    work_dir.mkdir(parents=True, exist_ok=True)
    jobs_file = work_dir / "legacy_jobs.json"
    jobs_file.write_text(json.dumps(specs))
    cmd = [sys.executable, str(Path(__file__).resolve()), str(jobs_file), str(target)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                          env=_legacy_env(target), cwd=work_dir)
    if proc.returncode != 0:
        raise RuntimeError(f"legacy Flax reference failed (exit {proc.returncode}):\n"
                           f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")


def _load_tree(tree, out: Path):
    import numpy as np

    if isinstance(tree, dict):
        return {k: _load_tree(v, out) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_load_tree(v, out) for v in tree]
    return np.load(out / tree)


def load_outputs(out: Path) -> dict:
    """A job's results: `{"meta": ..., <output field>: array | [arrays] | {nested fields}}`."""
    meta = json.loads((out / "meta.json").read_text())
    return {"meta": meta, **_load_tree(meta["outputs"], out)}


def run_decoder(checkpoint: Path, model_class: str, input_ids, attention_mask, work_dir: Path) -> dict:
    """A legacy Flax causal LM's outputs on a left-padded batch, with the `position_ids` HF's
    `generate` would give it (the legacy models count padding otherwise); checks the class and
    version that ran."""
    import numpy as np

    from jimm_nnx.reference import hf_position_ids

    inputs = {"input_ids": input_ids, "attention_mask": attention_mask,
              "position_ids": hf_position_ids(attention_mask)}
    for name, array in inputs.items():
        np.save(work_dir / f"{name}.npy", array)
    job = dict(checkpoint=checkpoint, out=work_dir / "legacy", model_class=model_class,
               inputs={name: work_dir / f"{name}.npy" for name in inputs})
    run_reference([job], work_dir)
    outputs = load_outputs(work_dir / "legacy")
    assert outputs["meta"]["transformers_version"] == TRANSFORMERS_VERSION
    assert outputs["meta"]["model_class"] == model_class
    return outputs


# --- the worker: runs in the subprocess, on the side-installed transformers ---------------------

def _check_params(model, ckpt: Path) -> None:
    """Every parameter of the loaded Flax model is the checkpoint's, and every tensor is used.
    (from_pretrained only warns about weights it had to initialise randomly, and `from_pt` does
    not support `_do_init=False`, which would raise: convert the file again and compare.)"""
    import numpy as np
    from flax.traverse_util import flatten_dict
    from safetensors import safe_open
    from transformers.modeling_flax_pytorch_utils import load_pytorch_checkpoint_in_flax_state_dict

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


def _jitted_init(model_cls):
    """`model_cls` with its random init (`init_weights` without `params`) run as one jitted
    program. `from_pretrained(..., _do_init=True)` (the only mode `from_pt` supports) first
    initialises every weight randomly, op by op, then puts the checkpoint's over them: on a
    small model nearly all of the load time is the XLA compiles of those ops. The values are the
    same jitted or not, and `_check_params` checks that none of them is left."""
    import jax

    def init_weights(self, rng, input_shape, params=None):
        if params is not None:
            return model_cls.init_weights(self, rng, input_shape, params)
        return jax.jit(lambda key: model_cls.init_weights(self, key, input_shape))(rng)

    return type(model_cls.__name__, (model_cls,), {"init_weights": init_weights, "__module__": model_cls.__module__})


def _save_tree(value, out: Path, name: str):
    """Write every array of a (nested) model output; return the same structure of file names."""
    from collections.abc import Mapping

    import numpy as np

    if isinstance(value, Mapping):  # ModelOutput (an OrderedDict of its non-None fields) or dict
        return {k: _save_tree(v, out, f"{name}.{k}" if name else k) for k, v in value.items() if v is not None}
    if isinstance(value, (tuple, list)):
        return [_save_tree(v, out, f"{name}.{i}") for i, v in enumerate(value)]
    array = np.asarray(value)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    np.save(out / f"{name}.npy", array)
    return f"{name}.npy"


def _worker(jobs_file: str, target: str) -> None:
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    import numpy as np
    import transformers

    assert transformers.__version__ == TRANSFORMERS_VERSION, transformers.__version__
    assert os.path.realpath(transformers.__file__).startswith(os.path.realpath(target)), transformers.__file__
    for job in json.loads(Path(jobs_file).read_text()):
        ckpt, out = Path(job["checkpoint"]), Path(job["out"])
        cls_name = job["model_class"]
        if not cls_name.startswith("Flax") or not hasattr(transformers, cls_name):
            raise SystemExit(f"{cls_name!r} is not a Flax model class of transformers {transformers.__version__}")
        model = _jitted_init(getattr(transformers, cls_name)).from_pretrained(ckpt, from_pt=True)
        _check_params(model, ckpt)
        inputs = {name: np.load(path) for name, path in job["inputs"].items()}
        # Jitted as HF's Flax docs advise (op by op, every op is its own XLA compile: seconds).
        forward = jax.jit(lambda params, inputs: model(**inputs, params=params, output_hidden_states=True,
                                                       train=False))
        result = forward(model.params, inputs)
        out.mkdir(parents=True, exist_ok=True)
        outputs = _save_tree(result, out, "")
        config = json.loads(model.config.to_json_string(use_diff=False))
        meta = {
            "transformers_version": transformers.__version__, "transformers_file": transformers.__file__,
            "model_class": type(model).__name__, "jax_backend": jax.default_backend(), "config": config,
            "inputs": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in inputs.items()},
            "outputs": outputs,
        }
        # Shortcuts the ViT test reads: its config fields and the number of hidden states.
        meta.update({k: config[k] for k in ("hidden_act", "layer_norm_eps", "qkv_bias") if k in config})
        if isinstance(outputs.get("hidden_states"), list):
            meta["num_hidden_states"] = len(outputs["hidden_states"])
        (out / "meta.json").write_text(json.dumps(meta))


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
