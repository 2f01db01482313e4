"""tokamax autotuning for jitted functions that use tokamax kernels (e.g. a model built with
`attention_fn=make_tokamax_attention([...])`), with `jimm`'s names, through tokamax's public
API (`tokamax.autotune`, `tokamax.autotuning.get_bound_args`, `tokamax.AutotuningResult`).

    result = autotune(forward, model, images)          # benchmark every kernel config
    with result:                                       # run with the best ones
        logits = forward(model, images)
    tuned = autotuned_fn(forward, model, images, cache_dir="tune")  # the same, cached on disk

Tuning measures kernels on an accelerator: on CPU `autotune`, `cached_autotune` and
`autotuned_fn` refuse (`NotImplementedError`) before doing anything; `load_autotune_result`
reads a file anywhere. Where tokamax cannot read the lowered program (tokamax 0.0.12 under
jax 0.10's MLIR bindings fails on every program), the error says so and names both versions.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import tokamax
from tokamax.autotuning import get_bound_args

AutotuningResult = tokamax.AutotuningResult


def _lowered(jitted_fn: Any, *args: Any) -> jax.stages.Lowered:
    """`jitted_fn.lower(*args)` as the `jax.stages.Lowered` tokamax reads (`nnx.jit` wraps it)."""
    if not hasattr(jitted_fn, "lower"):
        raise TypeError(f"expected a jitted function (jax.jit or nnx.jit), got {type(jitted_fn).__name__}")
    lowered = jitted_fn.lower(*args)
    return getattr(lowered, "lowered", lowered)


def _check_device() -> None:
    device = jax.devices()[0]
    if device.platform == "cpu":
        raise NotImplementedError(
            "tokamax autotuning benchmarks GPU/TPU kernels; this process runs on CPU, where no "
            "tokamax kernel has configs to tune (use the function as it is)")


def _bound_args(lowered: jax.stages.Lowered) -> tuple:
    """The tokamax ops in `lowered` (with their shapes), or an error that says tokamax failed."""
    try:
        return get_bound_args(lowered)
    except AttributeError as err:  # tokamax reading MLIR locations through an API jaxlib changed
        raise RuntimeError(f"tokamax {tokamax.__version__} cannot read programs lowered by jax "
                           f"{jax.__version__} ({err}); autotuning needs a tokamax release that "
                           f"matches this jax") from err


def autotune(jitted_fn: Any, *sample_args: Any, save_path: str | os.PathLike | None = None,
             **kwargs: Any) -> AutotuningResult:
    """Benchmark every config of each tokamax op in `jitted_fn` (lowered on `sample_args`, which
    fix the shapes) and return the best as an `AutotuningResult`, a context manager that makes
    calls inside it use those configs. `save_path`: also write it as JSON (read it back with
    `load_autotune_result`). `kwargs` go to `tokamax.autotune` (`all_implementations`,
    `progress_bar`)."""
    _check_device()
    bound_args = _bound_args(_lowered(jitted_fn, *sample_args))
    if not bound_args:
        raise ValueError("the function has no tokamax op to tune (build the model with "
                         "attention_fn=make_tokamax_attention([...]))")
    result = tokamax.autotune(list(bound_args), **kwargs)
    if save_path is not None:
        Path(save_path).write_text(result.dumps())
    return result


def load_autotune_result(path: str | os.PathLike) -> AutotuningResult:
    """An `AutotuningResult` written by `autotune(save_path=...)` or `cached_autotune`."""
    return AutotuningResult.loads(Path(path).read_text())


def cached_autotune(jitted_fn: Any, *sample_args: Any, cache_dir: str | os.PathLike,
                    **kwargs: Any) -> AutotuningResult | None:
    """`autotune`, through a JSON file in `cache_dir` keyed by the device kind and the ops'
    shapes: a later call with the same model, shapes and hardware reads the file and benchmarks
    nothing. `None` when `jitted_fn` has no tokamax op to tune."""
    _check_device()
    bound_args = _bound_args(_lowered(jitted_fn, *sample_args))
    if not bound_args:
        return None
    device_kind = jax.devices()[0].device_kind
    key = "|".join(sorted(str(ba.autotuning_cache_key) for ba in bound_args))
    path = Path(cache_dir) / f"{hashlib.sha256(f'{device_kind}:{key}'.encode()).hexdigest()[:16]}.json"
    if path.is_file():
        return load_autotune_result(path)
    result = tokamax.autotune(list(bound_args), **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(result.dumps())
    return result


def autotuned_fn(jitted_fn: Any, *sample_args: Any, cache_dir: str | os.PathLike,
                 **kwargs: Any) -> Callable[..., Any]:
    """`jitted_fn` running under its `cached_autotune` result on every call (tuned now, once)."""
    result = cached_autotune(jitted_fn, *sample_args, cache_dir=cache_dir, **kwargs)

    @functools.wraps(jitted_fn)
    def tuned(*args: Any, **kw: Any) -> Any:
        with result if result is not None else contextlib.nullcontext():
            return jitted_fn(*args, **kw)

    return tuned
