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
files); the plan maps loop-layout paths to `Source`s or `StackedSource`s (`plan_load`), and may
also name a scanned parameter's own path when a file stores its layers stacked. A `Plan`'s tied
keys are compared with the keys they repeat before anything is placed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import flax.linen as nn
import jax
import numpy as np

from jimm_linen.checkpoint.hf_files import progress
from jimm_linen.checkpoint.keys import (
    CheckpointError, Index, Source, StackedSource, flatten_tree, unflatten_tree,
)
from jimm_linen.layers.stack import scan_groups, unstack_paths

# (logical axis names or None, shape) -> where a parameter lives.
ShardingFn = Callable[[tuple | None, tuple[int, ...]], jax.sharding.Sharding]


class RegionReader(Protocol):
    def dtype(self, key: str) -> np.dtype: ...

    def get_region(self, key: str, index: Index) -> np.ndarray: ...


def _leaf(leaf):
    return leaf.value if isinstance(leaf, nn.meta.AxisMetadata) else leaf


def _shape(leaf) -> tuple[int, ...]:
    return tuple(_leaf(leaf).shape)


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


def load(target: Target, reader: RegionReader, plan: Mapping[str, Source | StackedSource], *,
         rng: jax.Array | None = None, param_dtype: Any = None, sharding: ShardingFn | None = None,
         boxed: bool = False, check_finite: bool = False, total_bytes: int = 0) -> dict:
    """`{"params": tree}` for `target`, each parameter read through `plan` from `reader` and
    placed once: on `sharding(names, shape)`, or whole on the default device without one.

    Parameters with no source in `plan` are initialised from `rng` (`fresh_values`).
    `param_dtype=None` keeps the stored dtypes (a fresh parameter gets the checkpoint's dtype
    when it has only one), except that an integer tensor for a float parameter gets the
    parameter's dtype, as `transformers` casts it. `boxed=True` leaves each array in its
    `nn.LogicallyPartitioned` box, so the logical names need no second init.
    `check_finite=True`: a `CheckpointError` names every key holding NaN or inf (each host
    checks what it reads). A `keys.Plan`'s tied keys must hold the values of the keys they
    repeat (`CheckpointError` naming both otherwise).
    """
    check_tied(reader, getattr(plan, "tied", ()))
    owner = {p: path for path, paths in target.layers.items() for p in paths}

    def stored_dtype(path: str) -> np.dtype:  # a planned path (loop layout, or a stacked file's own)
        leaf = np.dtype(_leaf(target.leaves[owner.get(path, path)]).dtype)
        kinds = [np.dtype(reader.dtype(k)) for k in plan[path].keys]
        # An integer tensor would make an integer parameter, which training cannot differentiate.
        return np.result_type(*(leaf if d.kind in "biu" and leaf.kind not in "biu" else d for d in kinds))

    fresh_paths = [p for path, paths in target.layers.items() if path not in plan
                   for p in paths if p not in plan]
    fresh = fresh_values(target.module, target.inputs, fresh_paths, rng) if fresh_paths else {}
    if param_dtype is None and fresh:
        stored = {stored_dtype(p) for p in plan}
        if len(stored) == 1:
            (kept,) = stored
            fresh = {p: v.astype(kept) for p, v in fresh.items()}
    shapes = {**target.loop_shapes, **{p: _shape(v) for p, v in target.leaves.items()}}
    non_finite: dict[str, str] = {}

    def read(path: str, index: Index) -> np.ndarray:
        if path in fresh:
            return fresh[path][index]

        def get(key: str, hf_index: Index) -> np.ndarray:
            value = reader.get_region(key, hf_index)
            if check_finite and not np.isfinite(value).all():
                non_finite[key] = path
            return value

        return plan[path].read_region(get, shapes[path], index)

    dtypes: dict[str, np.dtype] = {}

    def dtype(path: str) -> np.dtype:
        if path not in dtypes:
            sources = [path] if path in plan else target.layers[path]
            dtypes[path] = np.dtype(param_dtype) if param_dtype is not None else np.result_type(
                *(fresh[p].dtype if p in fresh else stored_dtype(p) for p in sources))
        return dtypes[path]

    def region(path: str, index: Index) -> np.ndarray:
        paths = target.layers[path]
        if path in plan or paths == [path]:
            value = read(path, index)
        else:  # a scanned parameter: only the layers in the box
            value = np.stack([read(paths[i], index[1:]) for i in range(index[0].start, index[0].stop)])
        return value.astype(dtype(path), copy=False)

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


def check_tied(reader: RegionReader, tied: Iterable[tuple[str, str, tuple[int, ...]]],
               block_elements: int = 2**24) -> None:
    """`CheckpointError` naming each (key, the key it repeats, their shape) whose values differ,
    with the largest difference. Reads a block of rows at a time, so that a large head is never
    whole in memory twice."""
    differ = []
    for key, other, shape in tied:
        rows, step = (shape or (1,))[0], max(1, block_elements // max(1, math.prod(shape[1:])))
        worst = 0.0
        for start in range(0, rows, step):
            box = (slice(start, min(start + step, rows)), *(slice(0, n) for n in shape[1:]))[:len(shape)]
            a, b = (np.asarray(reader.get_region(k, box), np.float64) for k in (key, other))
            gap = np.where((a == b) | (np.isnan(a) & np.isnan(b)), 0.0, np.abs(a - b))
            worst = max(worst, float(np.nan_to_num(gap, nan=np.inf).max(initial=0.0)))
        if worst:
            differ.append(f"{key} differs from {other} (max abs difference {worst:g})")
    if differ:
        raise CheckpointError("tied tensors must hold the same values (transformers would untie them; we do not "
                              f"guess which one is meant): {'; '.join(differ)}")


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
