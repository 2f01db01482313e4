"""The load engine: plan -> read -> stack -> place, one loop for every checkpoint format and
both APIs.

A `Target` comes from one abstract init of the module in its own layout: each parameter's
shape, dtype and logical names, and the loop-layout paths (what key tables and files name)
that a scanned parameter stacks. `load` then makes every parameter once. With a sharding,
`jax.make_array_from_callback` asks for the boxes this host's devices hold, and each box is
read through its key's transform from just the region of the stored tensor that covers it (a
scanned parameter: only the layers in the box), so no host reads a sharded tensor whole.
Without one, a parameter is read whole and put on the default device.

The reader is anything with `dtype(key)` and `get_region(key, index)` (`StateReader` for HF
files); the plan maps loop-layout paths to `Source`s (`plan_load`), and may also name a scanned
parameter's own path when a file stores its layers stacked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax
import numpy as np

from jimm_linen.checkpoint.hf_files import progress
from jimm_linen.checkpoint.keys import CheckpointError, Index, Source, flatten_tree, unflatten_tree
from jimm_linen.layers.stack import scan_groups, unstack_paths

# (logical axis names or None, shape) -> where a parameter lives.
ShardingFn = Callable[[tuple | None, tuple[int, ...]], jax.sharding.Sharding]


class RegionReader(Protocol):
    def dtype(self, key: str) -> np.dtype: ...

    def get_region(self, key: str, index: Index) -> np.ndarray: ...


def _shape(leaf) -> tuple[int, ...]:
    return tuple((leaf.value if isinstance(leaf, nn.meta.AxisMetadata) else leaf).shape)


@dataclasses.dataclass(frozen=True)
class Target:
    """The parameters `module` makes from `inputs`. `leaves`: flat path (the module's own
    layout) -> abstract leaf, a `ShapeDtypeStruct`, boxed in `nn.LogicallyPartitioned` where
    the module names its axes. `layers`: the same paths -> the loop-layout paths stacked into
    each (a parameter outside the scanned blocks: just its own path)."""

    module: nn.Module
    inputs: tuple
    leaves: dict[str, Any]
    layers: dict[str, list[str]]

    @classmethod
    def of(cls, module: nn.Module, *inputs) -> Target:
        abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))
        leaves = flatten_tree(abstract["params"])
        return cls(module, inputs, leaves, unstack_paths({p: _shape(v) for p, v in leaves.items()}))

    @property
    def loop_shapes(self) -> dict[str, tuple[int, ...]]:
        """Flat loop-layout path -> shape (what the key tables match against)."""
        out = {}
        for path, paths in self.layers.items():
            shape = _shape(self.leaves[path])
            out.update({p: shape if paths == [path] else shape[1:] for p in paths})
        return out


def fresh_values(module: nn.Module, inputs: tuple, paths: Iterable[str],
                 rng: jax.Array | None = None) -> dict[str, np.ndarray]:
    """Initialised values of some loop-layout parameters of `module` (those `dont_load` keeps
    out of the checkpoint). Jitted, so that only their initialisers run: XLA drops the rest."""
    paths = list(paths)
    # The loop layout has a leaf per layer, initialised from its own random stream: the values
    # a loop-layout model gets, whichever layout loads them.
    loop = module.clone(scan=False, parent=None) if getattr(module, "scan", False) else module

    def init(key):
        flat = flatten_tree(nn.unbox(loop.init(key, *inputs)["params"]))
        return {p: flat[p] for p in paths}

    values = jax.jit(init)(rng if rng is not None else jax.random.key(0))
    return {p: np.asarray(v) for p, v in values.items()}


def load(target: Target, reader: RegionReader, plan: Mapping[str, Source], *, rng: jax.Array | None = None,
         param_dtype: Any = None, sharding: ShardingFn | None = None, boxed: bool = False,
         check_finite: bool = False, total_bytes: int = 0) -> dict:
    """`{"params": tree}` for `target`, each parameter read through `plan` from `reader` and
    placed once: on `sharding(names, shape)`, or whole on the default device without one.

    Parameters with no source in `plan` are initialised from `rng` (`fresh_values`).
    `param_dtype=None` keeps the stored dtypes (a fresh parameter gets the checkpoint's dtype
    when it has only one). `boxed=True` leaves each array in its `nn.LogicallyPartitioned` box,
    so the logical names need no second init. `check_finite=True`: a `CheckpointError` names
    every key holding NaN or inf (each host checks what it reads).
    """
    fresh_paths = [p for path, paths in target.layers.items() if path not in plan
                   for p in paths if p not in plan]
    fresh = fresh_values(target.module, target.inputs, fresh_paths, rng) if fresh_paths else {}
    if param_dtype is None and fresh:
        stored = {reader.dtype(src.hf_key) for src in plan.values()}
        if len(stored) == 1:
            (kept,) = stored
            fresh = {p: v.astype(kept) for p, v in fresh.items()}
    shapes = {**target.loop_shapes, **{p: _shape(v) for p, v in target.leaves.items()}}
    non_finite: dict[str, str] = {}

    def read(path: str, index: Index) -> np.ndarray:
        if path in fresh:
            return fresh[path][index]
        src = plan[path]
        value = src.transform.read_region(lambda hf_index: reader.get_region(src.hf_key, hf_index),
                                          shapes[path], index)
        if check_finite and not np.isfinite(value).all():
            non_finite[src.hf_key] = path
        return value

    def region(path: str, index: Index) -> np.ndarray:
        paths = target.layers[path]
        if path in plan or paths == [path]:
            value = read(path, index)
        else:  # a scanned parameter: only the layers in the box
            value = np.stack([read(paths[i], index[1:]) for i in range(index[0].start, index[0].stop)])
        return value if param_dtype is None else value.astype(param_dtype)

    def dtype(path: str) -> np.dtype:
        if param_dtype is not None:
            return np.dtype(param_dtype)
        sources = [path] if path in plan else target.layers[path]
        return np.result_type(*(fresh[p].dtype if p in fresh else reader.dtype(plan[p].hf_key) for p in sources))

    flat = {}
    # A loop-layout model's layers of one parameter one after another: a file that stores them
    # stacked (big_vision) then serves them all from one cached read.
    order = [p for paths in scan_groups(target.leaves).values() for p in paths]
    for path, leaf in progress([(p, target.leaves[p]) for p in order], total_bytes, "loading"):
        shape = _shape(leaf)
        if sharding is None:
            value = jax.device_put(region(path, tuple(slice(0, n) for n in shape)))
        else:
            names = tuple(leaf.names) if isinstance(leaf, nn.LogicallyPartitioned) else None
            value = jax.make_array_from_callback(shape, sharding(names, shape), _once_per_box(
                lambda index, path=path: region(path, index), shape), dtype=dtype(path))
        flat[path] = leaf.replace_boxed(value) if boxed and isinstance(leaf, nn.meta.AxisMetadata) else value
    if non_finite:
        raise CheckpointError("non-finite values (NaN or inf) in checkpoint keys: "
                              + ", ".join(f"{k} (-> {p})" for k, p in sorted(non_finite.items())))
    return {"params": unflatten_tree(flat)}


def _once_per_box(fill: Callable[[Index], np.ndarray], shape: tuple[int, ...]) -> Callable:
    """`fill` for `make_array_from_callback`, which asks once per device: devices holding the
    same box (a replicated axis) share one read."""
    done: dict[tuple, np.ndarray] = {}

    def callback(index):
        box = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape))
        key = tuple((s.start, s.stop) for s in box)
        if key not in done:
            done[key] = fill(box)
        return done[key]

    return callback
