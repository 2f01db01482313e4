"""Logical axis names -> mesh shardings, with rule presets for a `("data", "fsdp", "tensor")` mesh.

Rules are an ordered sequence of `(logical_name, mesh_axes)`; the first rule naming a logical
axis wins (like `flax.linen.logical_to_mesh_axes` and T5X). Mesh axes the mesh does not have are
dropped, a mesh axis already used by an earlier dimension of the same array is not reused, and
for parameters a mesh axis that does not divide the dimension is dropped (that dimension stays
replicated) so every preset works for every model size and mesh.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

Rules = tuple[tuple[str, Any], ...]

BATCH = ("data", "fsdp")
_ACTIVATIONS_DP: Rules = (("act_batch", BATCH), ("batch", BATCH))
_ACTIVATIONS_TP: Rules = (("act_heads", "tensor"), ("act_mlp", "tensor"))

PRESETS: dict[str, Rules] = {
    # Parameters replicated; the batch split over every data-like axis.
    "replicated": _ACTIVATIONS_DP,
    # ZeRO-3 style: every big kernel split along its embed dimension over "fsdp".
    "fsdp": _ACTIVATIONS_DP + (("embed", "fsdp"),),
    # Megatron style: heads and mlp split over "tensor", activations follow.
    "tp": _ACTIVATIONS_DP + _ACTIVATIONS_TP + (("heads", "tensor"), ("mlp", "tensor"),
                                              ("vocab", "tensor")),
    "fsdp_tp": _ACTIVATIONS_DP + _ACTIVATIONS_TP + (("heads", "tensor"), ("mlp", "tensor"),
                                                   ("vocab", "tensor"), ("embed", "fsdp")),
}


def get_rules(rules: str | Sequence[tuple[str, Any]]) -> Rules:
    if isinstance(rules, str):
        try:
            return PRESETS[rules]
        except KeyError:
            raise ValueError(f"unknown partitioning preset {rules!r}; presets: {sorted(PRESETS)}") from None
    return tuple((name, axes) for name, axes in rules)


def rules_for_mesh(rules, mesh: Mesh) -> Rules:
    """The rules with mesh axes this mesh lacks removed (for `nn.logical_axis_rules`)."""
    out = []
    for name, axes in get_rules(rules):
        kept = tuple(a for a in _as_tuple(axes) if a in mesh.axis_names)
        out.append((name, kept if len(kept) > 1 else (kept[0] if kept else None)))
    return tuple(out)


def _as_tuple(axes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)


def logical_to_spec(names: Sequence[str | None], rules, mesh: Mesh,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
    """The PartitionSpec for one array whose dims carry `names`."""
    table: dict[str, tuple[str, ...]] = {}
    for name, axes in get_rules(rules):
        table.setdefault(name, _as_tuple(axes))
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(names):
        axes = [a for a in table.get(name, ()) if a in mesh.axis_names and a not in used]
        if shape is not None:
            kept, size = [], 1
            for a in axes:
                if shape[dim] % (size * mesh.shape[a]) == 0:
                    kept.append(a)
                    size *= mesh.shape[a]
            axes = kept
        used.update(axes)
        spec.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return PartitionSpec(*spec)


def _is_boxed(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def abstract_variables(module: nn.Module, *inputs, **kwargs):
    """Shapes, dtypes and logical names of `module.init(...)` without computing anything."""
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs, **kwargs))


def logical_axes(module: nn.Module, *inputs, **kwargs):
    """The logical names of every parameter: a tree of tuples, matching `variables["params"]`."""
    boxed = abstract_variables(module, *inputs, **kwargs)["params"]
    return jax.tree.map(lambda b: tuple(b.names), boxed, is_leaf=_is_boxed)


def param_specs(module: nn.Module, *inputs, mesh: Mesh, rules="fsdp", **kwargs):
    """PartitionSpecs for `variables["params"]` on `mesh` under `rules`."""
    boxed = abstract_variables(module, *inputs, **kwargs)["params"]
    return jax.tree.map(lambda b: logical_to_spec(b.names, rules, mesh, b.value.shape),
                        boxed, is_leaf=_is_boxed)


def param_shardings(module: nn.Module, *inputs, mesh: Mesh, rules="fsdp", **kwargs):
    """NamedShardings for `variables["params"]`: use as `jit` out_shardings or for `device_put`."""
    specs = param_specs(module, *inputs, mesh=mesh, rules=rules, **kwargs)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def shard_params(params, shardings):
    """Place a params tree on its shardings (leaf by leaf, so no leaf is copied twice)."""
    return jax.tree.map(jax.device_put, params, shardings)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules="fsdp"):
    """Context for `apply` so that the activations' logical constraints use `rules` on `mesh`."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules_for_mesh(rules, mesh)):
        yield


def t5x_params_axes(axes_tree):
    """A T5X-style `params_axes` collection from `logical_axes(...)`: each `name` leaf becomes
    `name_axes: AxisMetadata(names=...)`, which T5X's partitioner reads."""
    from flax.linen.partitioning import AxisMetadata

    def convert(node):
        out = {}
        for k, v in node.items():
            if isinstance(v, dict):
                out[k] = convert(v)
            else:
                out[f"{k}_axes"] = AxisMetadata(names=tuple(v))
        return out

    return convert(dict(axes_tree))
