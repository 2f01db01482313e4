"""This host's limits, measured now: `python -m benchmarks.machine [--quick]` prints one
`RESULT {json}` line (what `benchmarks.run --suite llm` records once per run, in its own process).

* Memory bandwidth: a STREAM-like triad `a = b + 3 c` over three float32 buffers of `--gib` GiB
  each (1 GiB: far beyond the 32 MiB L3), a jitted XLA program with `a` donated so the output is
  written in place (checked: the output's buffer is `a`'s), so no first-touch page faults are
  timed. Bytes counted: 3 x buffer (read b and c, write a; STREAM's convention, no write-allocate
  read). Best of `--repeats` calls after one untimed.
* GEMM peak: a jitted `n x n @ n x n` matmul (2 n^3 FLOPs) in float32 and in bfloat16 (bf16 in,
  bf16 out), best of `--repeats` calls after one untimed. `n` is 4096, 8192 on a GPU, where a
  4096^2 product takes ~0.2 ms and the call's own overhead would count.

On a GPU (JAX's default device) both are the GPU's: its memory's bandwidth and its matmul peak.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from benchmarks.worker import max_rss_bytes


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def triad_bandwidth(gib: float, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    n = int(gib * 2**30) // 4
    a, b, c = jnp.zeros(n, jnp.float32), jnp.full(n, 1.0, jnp.float32), jnp.full(n, 2.0, jnp.float32)
    # keep_unused: `a` is not read, and jit would otherwise drop it and its donation.
    triad = jax.jit(lambda a, b, c: b + 3.0 * c, donate_argnums=0, keep_unused=True)
    state = {"a": a}
    pointer = a.unsafe_buffer_pointer()

    def call():
        state["a"] = triad(state["a"], b, c)
        state["a"].block_until_ready()

    call()
    best = _best(call, repeats)
    in_place = state["a"].unsafe_buffer_pointer() == pointer
    if not in_place:
        raise RuntimeError("the triad's output was not written into the donated buffer: page faults would be timed")
    if float(state["a"][n // 2]) != 7.0:
        raise RuntimeError(f"triad computed {float(state['a'][n // 2])}, not 7")
    return dict(triad_gib_per_buffer=gib, triad_best_s=best, bandwidth_bytes_per_s=3 * 4 * n / best)


def gemm_peak(n: int, dtype: str, repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    y = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    mm = jax.jit(lambda x, y: x @ y)
    mm(x, y).block_until_ready()
    return 2 * n**3 / _best(lambda: mm(x, y).block_until_ready(), repeats)


def measure(gib: float, n: int | None, repeats: int) -> dict:
    import jax

    if n is None:
        n = 8192 if jax.default_backend() == "gpu" else 4096
    out = triad_bandwidth(gib, repeats)
    out.update(device_kind=jax.devices()[0].device_kind, gemm_n=n,
               gemm_float32_flops_per_s=gemm_peak(n, "float32", repeats),
               gemm_bfloat16_flops_per_s=gemm_peak(n, "bfloat16", repeats), jax=jax.__version__,
               cpu_count=len(os.sched_getaffinity(0)), loadavg=os.getloadavg()[:2],
               max_rss_bytes=max_rss_bytes())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="16 MiB buffers, 256^2 matmuls: a logic check")
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--n", type=int, default=None, help="GEMM size (default 4096; 8192 on a GPU)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.quick:
        args.gib, args.n, args.repeats = 1 / 64, 256, 2
    print("RESULT " + json.dumps(measure(args.gib, args.n, args.repeats)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
