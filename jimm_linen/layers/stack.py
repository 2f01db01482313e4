"""A stack of identical blocks: `nn.scan` over a leading `layers` axis or a Python loop, with
remat by policy name, carrying per-layer state (a decoder's KV cache) through the scan.

`scan=True` keeps one module `name` whose parameters have a leading `layers` axis; `scan=False`
keeps `name_0 .. name_{N-1}`. `scan_to_loop` / `loop_to_scan` convert parameter trees between
the two layouts for every stacked block name in `BLOCK_NAMES`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# The names under which models stack their blocks (what the layout conversions look for).
BLOCK_NAMES = ("encoderblock", "layers")

# Projection outputs tagged with `checkpoint_name` inside the blocks.
PROJECTION_NAMES = ("query_proj", "key_proj", "value_proj", "out_proj", "mlp_in", "mlp_out")

_NAMED_POLICIES = {
    "minimal": lambda: jax.checkpoint_policies.save_only_these_names(*PROJECTION_NAMES),
    "full": lambda: jax.checkpoint_policies.nothing_saveable,
}
_JAX_POLICIES = (
    "nothing_saveable", "everything_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable",
    "checkpoint_dots", "checkpoint_dots_with_no_batch_dims",
)


def remat_policy(name: str):
    """Resolve a remat policy name: "none" (no remat; returns None), "minimal" (keep the
    projection outputs, recompute the rest), "full" (keep nothing), a nullary policy of
    `jax.checkpoint_policies` such as "dots_saveable", or "save:name1,name2" for
    `save_only_these_names` over `checkpoint_name` tags (see `PROJECTION_NAMES`)."""
    if name == "none":
        return None
    if name in _NAMED_POLICIES:
        return _NAMED_POLICIES[name]()
    if name in _JAX_POLICIES:
        return getattr(jax.checkpoint_policies, name)
    if name.startswith("save:"):
        names = [n for n in name[len("save:"):].split(",") if n]
        unknown = set(names) - set(PROJECTION_NAMES)
        if unknown:
            raise ValueError(f"remat policy {name!r}: unknown tensor names {sorted(unknown)}; "
                             f"tagged ones are {PROJECTION_NAMES}")
        return jax.checkpoint_policies.save_only_these_names(*names)
    raise ValueError(
        f"unknown remat policy {name!r}; use 'none', 'minimal', 'full', 'save:<names>' or one of {_JAX_POLICIES}"
    )


class Stacked(nn.Module):
    """A module that stacks blocks from a config, and how it runs them: `attention_fn=None` is
    exact softmax attention; `scan` stacks the blocks under one `layers` axis; `remat_policy`
    is a `remat_policy` name. Encoders, decoders and whole models take these fields."""

    config: Any
    attention_fn: Any = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scan: bool = True
    remat_policy: str = "none"

    def runtime(self) -> dict[str, Any]:
        """Everything but the config, to build another module that runs the same way."""
        return dict(attention_fn=self.attention_fn, dtype=self.dtype, param_dtype=self.param_dtype,
                    scan=self.scan, remat_policy=self.remat_policy)


class Block(nn.Module):
    """What a stacked block takes besides its inputs: its model's config, the attention
    function, whether to hand out its output (`collect`, for `hidden_states`), dtypes."""

    config: Any
    attention_fn: Any = None
    collect: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32


def stack(block_cls: type[nn.Module] | Sequence[type[nn.Module]], *, length: int, name: str, scan: bool = True,
          remat: str = "none", **block_kwargs: Any) -> Callable:
    """`length` blocks in sequence, as a function `f(carry, shared, own=None) -> (carry, ys)` to
    call inside the parent's compact method.

    Layer i runs `block_cls(**block_kwargs)(carry, shared, own_i)` and returns `(carry, y)`.
    `shared` is a pytree every layer sees unchanged (positions, masks; Python values ride as
    static fields of a `flax.struct` so remat never traces them); `own` a pytree whose leaves
    have a leading `layers` axis, layer i getting its slice (its attention kind, its KV cache);
    `ys` stacks every layer's `y` (any pytree: cache slices, hidden states, auxiliary outputs)
    on a leading axis. `nn.scan` drops keyword arguments, so blocks take positional ones.
    `block_cls` may also give each layer its class (a sequence of `length`), in the loop only:
    `nn.scan` runs one class over parameters stacked alike; the layers' `y` must still stack.
    In the loop, a leaf of `own` may instead be a tuple of each layer's array (a decode step's
    KV cache, `KVCache.per_layer`: buffers XLA updates in place); then every leaf of `ys` comes
    back as such a tuple, unstacked.
    """
    classes = tuple(block_cls) if isinstance(block_cls, (tuple, list)) else (block_cls,) * length
    if len(classes) != length:
        raise ValueError(f"{len(classes)} block classes for {length} layers")
    if scan and len(set(classes)) > 1:
        raise ValueError(f"nn.scan runs one block class; layers of classes {sorted({c.__name__ for c in classes})} "
                         f"run with scan=False")
    if remat != "none":
        wrapped = {c: nn.remat(c, policy=remat_policy(remat), prevent_cse=not scan) for c in set(classes)}
        classes = tuple(wrapped[c] for c in classes)
    cls = classes[0]

    def run(carry, shared, own=None):
        per_layer = any(isinstance(a, tuple) for a in jax.tree.leaves(own, is_leaf=_is_per_layer))
        if scan and per_layer:
            raise ValueError("nn.scan takes `own` leaves stacked along `layers`, not a tuple per layer")
        if scan:
            layers = nn.scan(
                cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, 0),
                length=length,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(name=name, **block_kwargs)
            return layers(carry, shared, own)
        ys = []
        for i in range(length):
            mine = jax.tree.map(lambda a, i=i: a[i], own, is_leaf=_is_per_layer)
            carry, y = classes[i](name=f"{name}_{i}", **block_kwargs)(carry, shared, mine)
            ys.append(y)
        return carry, jax.tree.map(lambda *y: y if per_layer else jnp.stack(y), *ys)

    return run


def _is_per_layer(a) -> bool:
    return isinstance(a, tuple)


def _block_patterns(names: Collection[str]) -> tuple[re.Pattern, re.Pattern]:
    alt = "|".join(re.escape(n) for n in names)
    return re.compile(rf"^({alt})_(\d+)$"), re.compile(rf"(^|/)({alt})_(\d+)/")


def scan_groups(loop_paths, names: Collection[str] = BLOCK_NAMES) -> dict[str, list[str]]:
    """For flat '/'-joined parameter paths in the loop layout: each scan-layout path and the
    loop paths stacked into it, in layer order (paths outside the blocks map to themselves)."""
    _, loop_path = _block_patterns(names)
    groups: dict[str, dict[int, str]] = {}
    for p in loop_paths:
        m = loop_path.search(p)
        key = loop_path.sub(r"\1\2/", p) if m else p
        groups.setdefault(key, {})[int(m.group(3)) if m else -1] = p
    return {k: [v[i] for i in sorted(v)] for k, v in groups.items()}


def unstack_paths(shapes: Mapping[str, Sequence[int]], names: Collection[str] = BLOCK_NAMES) -> dict[str, list[str]]:
    """The inverse of `scan_groups`: for flat paths in the scan layout and their shapes, the loop
    paths each one stacks along its leading axis, in layer order (others map to themselves)."""
    scanned = re.compile(rf"(^|/)({'|'.join(re.escape(n) for n in names)})/")
    return {p: [scanned.sub(rf"\g<1>\g<2>_{i}/", p, count=1) for i in range(shape[0])] if scanned.search(p) else [p]
            for p, shape in shapes.items()}


def _check_unboxed(tree) -> None:
    boxed = jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
    if any(isinstance(x, nn.meta.AxisMetadata) for x in boxed):
        raise TypeError("layout conversion works on plain arrays; unbox first with flax.linen.unbox(tree) "
                        "(the boxes' logical names would not follow the new layout)")


def scan_to_loop(tree: dict, num_layers: int | None = None, names: Collection[str] = BLOCK_NAMES) -> dict:
    """Unstack every stacked block subtree (`encoderblock`, leading `layers` axis) into
    `encoderblock_{i}`."""
    _check_unboxed(tree)
    out = {}
    for k, v in tree.items():
        if k in names:
            n = jax.tree.leaves(v)[0].shape[0]
            if num_layers is not None and n != num_layers:
                raise ValueError(f"scanned {k} has {n} layers, expected {num_layers}")
            for i in range(n):
                out[f"{k}_{i}"] = jax.tree.map(lambda a, i=i: a[i], v)
        elif isinstance(v, dict):
            out[k] = scan_to_loop(v, num_layers, names)
        else:
            out[k] = v
    return out


def loop_to_scan(tree: dict, names: Collection[str] = BLOCK_NAMES) -> dict:
    """Stack `encoderblock_{i}` subtrees (any name in `names`) into one `encoderblock` with a
    leading `layers` axis."""
    _check_unboxed(tree)
    loop_key, _ = _block_patterns(names)
    out, blocks = {}, {}
    for k, v in tree.items():
        m = loop_key.match(k)
        if m:
            blocks.setdefault(m.group(1), {})[int(m.group(2))] = v
        elif isinstance(v, dict):
            out[k] = loop_to_scan(v, names)
        else:
            out[k] = v
    for name, layers in blocks.items():
        if sorted(layers) != list(range(len(layers))):
            raise ValueError(f"{name} indices are not 0..N-1: {sorted(layers)}")
        stack_fn = np.stack if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(layers)) else jnp.stack
        out[name] = jax.tree.map(lambda *xs: stack_fn(xs), *(layers[i] for i in range(len(layers))))
    return out
