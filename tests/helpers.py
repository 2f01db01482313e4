"""Small shared pieces for the tests."""

import contextlib
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jimm_nnx.reference import RTOL

ROOT = Path(__file__).resolve().parents[1]

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            image_size=16, patch_size=4, num_labels=5)


def bound(ref, rtol: float = RTOL) -> float:
    """The parity bound: `rtol * max(1, max |ref|)` (float32 on CPU: rtol 1e-5)."""
    return rtol * max(1.0, float(np.abs(np.asarray(ref, np.float64)).max()))


def max_rel_diff(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / max(1.0, np.abs(ref).max()))


def assert_close(ours, ref, rtol: float = RTOL, what: str = "output"):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs {ref.shape}"
    diff = float(np.abs(ours - ref).max())
    assert diff <= bound(ref, rtol), f"{what}: max abs diff {diff:.3e} > {bound(ref, rtol):.3e}"


def assert_same_tree(a, b, what: str = ""):
    """Same structure, dtypes and values, bit for bit (a difference names `what` and the leaf)."""
    assert jax.tree.structure(a) == jax.tree.structure(b), what
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        where = f"{what}{jax.tree_util.keystr(path)}"
        assert x.dtype == y.dtype, f"{where}: dtype {x.dtype} vs {y.dtype}"
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=where)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def processes(script: Path, args: list, count: int = 2, devices: int = 4, timeout: float = 600):
    """Run `python script <process id> <port> *args` as `count` processes on CPU with `devices`
    fake devices each (a `jax.distributed` job on localhost) while the `with` body runs; on
    leaving, wait for them and fail the calling test with every process's output when one
    exited non-zero or the job outlived `timeout` seconds (counted from the start)."""
    import pytest

    port = str(free_port())
    # The suite's XLA flags (`conftest.py`: LLVM optimisation level 0), with `devices` devices.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    flags = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    deadline = time.monotonic() + timeout
    with contextlib.ExitStack() as stack:
        # Output to files, not pipes: a full pipe would stall a process while the body runs.
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(count)]
        procs = [subprocess.Popen([sys.executable, str(script), str(i), port, *map(str, args)], env=env, cwd=ROOT,
                                  stdout=log, stderr=subprocess.STDOUT, text=True) for i, log in enumerate(logs)]
        killed = set()
        try:
            yield
            for p in procs:  # one deadline for the job: a hung process leaves the others waiting in a collective
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        finally:
            for i, p in enumerate(procs):
                if p.poll() is None:
                    p.kill()
                    p.wait()
                    killed.add(i)
        if killed or any(p.returncode for p in procs):
            outputs = []
            for log in logs:
                log.seek(0)
                outputs.append(log.read()[-4000:])
            pytest.fail("\n".join(
                f"process {i} {f'killed after {timeout} s' if i in killed else f'exited {p.returncode}'}; its "
                f"output:\n{out}" for i, (p, out) in enumerate(zip(procs, outputs))))


def nhwc(pixels_nchw):
    return np.ascontiguousarray(pixels_nchw.transpose(0, 2, 3, 1))


def assert_decoder_matches(logits, hidden, ref_logits, ref_hidden, mask, what: str):
    """A decoder's logits and every hidden state against HF's, at the real positions of `mask`."""
    from jimm_nnx.reference import real_positions

    assert len(hidden) == len(ref_hidden), f"{what}: {len(hidden)} hidden states, HF {len(ref_hidden)}"
    assert_close(real_positions(logits, mask), real_positions(ref_logits, mask), what=f"{what} logits")
    for i, (ours, theirs) in enumerate(zip(hidden, ref_hidden)):
        assert_close(real_positions(ours, mask), real_positions(theirs, mask), what=f"{what} hidden state {i}")


def cached_calls(module, variables, lm) -> dict:
    """Each face's `(call(ids, mask, cache) -> CausalLMOutput with hidden states, init_cache)`:
    the Linen module's jitted apply and the NNX model."""
    apply = jax.jit(lambda v, i, m, c: module.apply(v, i, m, cache=c, return_hidden_states=True))
    return {"linen": (lambda i, m, c: apply(variables, i, m, c), module.init_cache),
            "nnx": (lambda i, m, c: lm(i, m, cache=c, return_hidden_states=True), lm.init_cache)}


def assert_cache_matches_hf(hf, call, cache, ids, mask, prompt: int, what: str):
    """`call` prefills the first `prompt` columns of a left-padded batch into `cache`, then takes
    one column at a time: the prefill equals HF's forward on the prompt, each decoded column HF's
    full forward over the sequence so far at its last column (HF's positions: `generate`'s)."""
    import jax.numpy as jnp

    from jimm_nnx.reference import decoder_reference_outputs

    out = call(jnp.asarray(ids[:, :prompt], jnp.int32), jnp.asarray(mask[:, :prompt]), cache)
    ref_logits, ref_hidden = decoder_reference_outputs(hf, ids[:, :prompt], mask[:, :prompt])
    assert_decoder_matches(out.logits, out.hidden_states, ref_logits, ref_hidden, mask[:, :prompt],
                           f"{what} prefill")
    for col in range(prompt, ids.shape[1]):
        out = call(jnp.asarray(ids[:, col:col + 1], jnp.int32), jnp.asarray(mask[:, col:col + 1]), out.cache)
        ref_logits, ref_hidden = decoder_reference_outputs(hf, ids[:, :col + 1], mask[:, :col + 1])
        assert out.logits.shape == (ids.shape[0], 1, ref_logits.shape[-1])
        assert_decoder_matches(out.logits, out.hidden_states, ref_logits[:, -1:], [h[:, -1:] for h in ref_hidden],
                               mask[:, col:col + 1], f"{what} decode step at column {col}")
    assert int(out.cache.index) == ids.shape[1]


@dataclasses.dataclass
class DecoderSetup:
    """HF's model of a registered decoder family, every tensor random, saved to `directory`, and
    jimm's loaded from there: the Linen module and variables, and the family's NNX model."""

    directory: Path
    hf: Any  # torch
    module: Any  # Linen
    variables: dict
    lm: Any  # NNX

    @classmethod
    def build(cls, model_type: str, config: dict, directory: Path, seed: int) -> "DecoderSetup":
        import jimm_linen
        import jimm_nnx
        from jimm_linen.registry import decoders
        from jimm_nnx import reference

        family = decoders()[model_type]
        hf = reference.build_decoder_reference(model_type, config, directory, seed=seed)
        module, variables = jimm_linen.from_pretrained(directory)
        assert type(module) is family.module_cls
        lm = getattr(jimm_nnx, family.nnx_name).from_pretrained(directory, sharding=jimm_nnx.NoSharding())
        return cls(directory, hf, module, variables, lm)

    def forward(self, ids, mask, **config_changes) -> np.ndarray:
        """Linen logits, jitted, with config fields changed over the same weights."""
        import jax.numpy as jnp

        module = self.module.clone(config=dataclasses.replace(self.module.config, **config_changes))
        return np.asarray(jax.jit(module.apply)(self.variables, jnp.asarray(ids, jnp.int32), jnp.asarray(mask)))
