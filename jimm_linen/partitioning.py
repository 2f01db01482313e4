"""Logical axis names -> mesh shardings, with rule presets for a `("data", "fsdp", "tensor")` mesh.

Rules are an ordered sequence of `(logical_name, mesh_axes)` and are resolved exactly like
`flax.linen.logical_to_mesh_axes` (and T5X): the rules are walked in order, and a rule gives its
mesh axes to the array dimension it names if that dimension has no assignment yet and none of
those mesh axes is taken by another dimension of the same array (so order is priority, and a
later rule for the same name is a fallback). On top of that, so that every preset works for
every model size and mesh:

* mesh axes the mesh does not have are dropped (a rule left with none means "replicated");
* for arrays of known shape (parameters, inputs), a mesh axis that does not divide the
  dimension is dropped, and when none is left the rule does not apply (a later rule for that
  name may), so a non-divisible dimension is replicated instead of raising.

Logical names come from one known set, `LOGICAL_NAMES` (the models' parameter, input, activation
and KV-cache dims); a name outside it, in the names of an array placed here (a parameter, an
input) or in a rule table, is a ValueError naming it, never a silently replicated dim (None in
an array's names is a replicated dim). A new model with dims of its own registers them once,
beside its definition, with `register_logical_names("frames", ...)`. Presets: `replicated`,
`fsdp`, `tp`, `fsdp_tp`, `ep`; `make_rules("fsdp_tp", additional_rules=[("experts", "fsdp")],
overrides={"vocab": None})` extends or overrides one (like T5X's `standard_logical_axis_rules`)
and gives a rule table that goes wherever `rules=` is taken.

Activations are constrained inside the models with `constrain(x, names)`: Flax's
`nn.with_logical_constraint` after the same check of the names (Flax alone would replicate an
unknown one). The constraints act only under `activation_sharding(mesh, rules)` (no mesh: the
model runs unsharded, the constraints are no-ops). Uneven activation shardings are fine for XLA.

Linen models compute with Auto mesh axes (under Explicit axes `with_sharding_constraint` is an
assert and many ops need `out_sharding=`), while `jax.make_mesh` now makes Explicit axes. So
every function here that builds `NamedSharding`s or sets the mesh uses `auto_mesh(mesh)`: the
same devices and axis names with Auto axis types. Place inputs with `data_sharding` (or on
`auto_mesh(mesh)` yourself) so that they live on the same mesh as the parameters.

A typical sharded forward pass::

    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))
    p_sh = param_shardings(model, images, mesh=mesh, rules="fsdp_tp")
    x_sh = data_sharding(images.shape, mesh, "fsdp_tp")
    params = shard_params(params, p_sh)
    with activation_sharding(mesh, "fsdp_tp"):   # must be active while jit traces
        logits = jax.jit(lambda p, x: model.apply({"params": p}, x),
                         in_shardings=(p_sh, x_sh))(params, jax.device_put(images, x_sh))

Trap: the logical rules are thread-local Flax state, not part of `jax.jit`'s cache key: a jitted
function first traced outside `activation_sharding` keeps running without the constraints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

Rules = tuple[tuple[str, Any], ...]

# Every logical axis name, in one place, so that a misspelt name is an error instead of a
# silently replicated dim.
LOGICAL_NAMES: frozenset[str] = frozenset({
    # parameters; "layers" is also the stacked axis of the KV cache
    "layers", "embed", "mlp", "heads", "kv_heads", "kv", "vocab", "experts", "length",
    "patch_height", "patch_width", "channels", "classes",
    # inputs
    "batch",
    # activations
    "act_batch", "act_length", "act_embed", "act_heads", "act_kv_heads", "act_kv", "act_mlp",
    "act_vocab", "act_experts",
    # the KV cache [layers, cache_batch, cache_length, cache_kv_heads, cache_kv] and its per-row
    # lengths [cache_batch]: names of its own so that its layout can be changed (e.g. the length
    # split for long contexts) without moving the activations.
    "cache_batch", "cache_length", "cache_kv_heads", "cache_kv",
})
_registered_names: set[str] = set()


def register_logical_names(*names: str) -> None:
    """Make `names` known logical axis names (the dims of a new model), for its parameters,
    activations and rule tables alike. Presets have no rule for them: replicated unless a rule
    table says otherwise."""
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise ValueError(f"logical axis names must be non-empty strings, got {bad}")
    _registered_names.update(names)


def known_logical_names() -> frozenset[str]:
    """`LOGICAL_NAMES` and every registered name."""
    return LOGICAL_NAMES | _registered_names


def _check_names(names, what: str) -> None:
    known = known_logical_names()
    unknown = [n for n in names if n is not None and n not in known]
    if unknown:
        raise ValueError(
            f"unknown logical axis name{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} in {what}; "
            f"known names: {', '.join(sorted(known))}. A new model's own names are registered with "
            f"jimm_linen.partitioning.register_logical_names(...)")


BATCH = ("data", "fsdp")
_ACTIVATIONS_DP: Rules = (("act_batch", BATCH), ("batch", BATCH), ("cache_batch", BATCH))
_ACTIVATIONS_TP: Rules = (("act_heads", "tensor"), ("act_kv_heads", "tensor"), ("act_mlp", "tensor"),
                          ("act_vocab", "tensor"), ("cache_kv_heads", "tensor"))
_TP: Rules = (("heads", "tensor"), ("kv_heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"))
# No preset but "ep" has a rule for `experts`: elsewhere an expert kernel [experts, embed, mlp]
# is split like a dense one (embed over "fsdp", mlp over "tensor"); "ep" gives "tensor" to
# whole experts instead, ahead of mlp.
_EP: Rules = (("experts", "tensor"), ("act_experts", "tensor"))

PRESETS: dict[str, Rules] = {
    # Parameters replicated; the batch split over every data-like axis.
    "replicated": _ACTIVATIONS_DP,
    # ZeRO-3 style: every big kernel split along its embed dimension over "fsdp".
    "fsdp": _ACTIVATIONS_DP + (("embed", "fsdp"),),
    # Megatron style: heads, kv heads and mlp split over "tensor", activations and cache follow.
    "tp": _ACTIVATIONS_DP + _ACTIVATIONS_TP + _TP,
    "fsdp_tp": _ACTIVATIONS_DP + _ACTIVATIONS_TP + _TP + (("embed", "fsdp"),),
    # Expert parallelism on the tensor axis, otherwise fsdp_tp.
    "ep": _EP + _ACTIVATIONS_DP + _ACTIVATIONS_TP + _TP + (("embed", "fsdp"),),
}


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """`nn.with_logical_constraint(x, names)` for known logical names only: an unknown name is a
    ValueError when the model is traced, where Flax would leave that dim replicated."""
    _check_names(names, f"an activation constraint {tuple(names)}")
    return nn.with_logical_constraint(x, names)


def _mesh_axes(axes):
    if isinstance(axes, list):
        axes = tuple(axes)
    if not all(isinstance(a, str) for a in _as_tuple(axes)):
        raise ValueError(f"mesh axes must be None, a mesh axis name or a tuple of them, got {axes!r}")
    return axes


def get_rules(rules: str | Sequence[tuple[str, Any]]) -> Rules:
    """A preset name or a rule sequence as a rule table of tuples; a rule for an unknown
    logical name is an error."""
    if isinstance(rules, str):
        try:
            return PRESETS[rules]
        except KeyError:
            raise ValueError(f"unknown partitioning preset {rules!r}; presets: {sorted(PRESETS)}") from None
    table = tuple((name, _mesh_axes(axes)) for name, axes in rules)
    _check_names([name for name, _ in table], "the rules")
    return table


def make_rules(preset: str | Sequence[tuple[str, Any]] = "fsdp", *,
               additional_rules: Sequence[tuple[str, Any]] = (),
               overrides: Mapping[str, Any] | None = None) -> Rules:
    """`preset` (a name or a rule table) extended by the caller, like T5X's
    `standard_logical_axis_rules(additional_rules=...)`.

    `additional_rules` come first, so they win (first match wins) and the preset's rules for
    the same names become fallbacks. `overrides` maps a logical name to the mesh axes that
    replace all of the preset's rules for it (None: replicated); the replacement keeps the
    place of the first one, so its priority, and is appended if the preset has none.
    """
    overrides = dict(overrides or {})
    _check_names(overrides, "the overrides")
    table, placed = [], set()
    for name, axes in get_rules(preset):
        if name in overrides:
            if name not in placed:
                table.append((name, overrides[name]))
                placed.add(name)
        else:
            table.append((name, axes))
    table += [(name, axes) for name, axes in overrides.items() if name not in placed]
    return get_rules(tuple(additional_rules) + tuple(table))


def auto_mesh(mesh):
    """`mesh` (a `Mesh` or an `AbstractMesh`) with every axis of type Auto (the same object when
    it already is)."""
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return mesh.update(axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _as_tuple(axes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)


def _pack(axes: Sequence[str]):
    return tuple(axes) if len(axes) > 1 else (axes[0] if axes else None)


def rules_for_mesh(rules, mesh: Mesh) -> Rules:
    """The rules with mesh axes this mesh lacks removed (for `nn.logical_axis_rules`)."""
    return tuple((name, _pack([a for a in _as_tuple(axes) if a in mesh.axis_names]))
                 for name, axes in get_rules(rules))


def logical_to_spec(names: Sequence[str | None], rules, mesh: Mesh,
                    shape: Sequence[int] | None = None) -> PartitionSpec:
    """The PartitionSpec for one array whose dims carry the logical `names`.

    Without `shape` this is `nn.logical_to_mesh_axes(names, rules_for_mesh(rules, mesh))`;
    with it, mesh axes that do not divide their dimension are dropped (see the module doc).
    """
    names = tuple(names)
    _check_names(names, f"{names}")
    if shape is not None and len(shape) != len(names):
        raise ValueError(f"{len(names)} logical names {names} for an array of shape {tuple(shape)}")
    assigned: list[tuple[str, ...] | None] = [None] * len(names)  # None: no rule applied yet
    used: set[str] = set()
    for name, axes in get_rules(rules):
        if name is None or name not in names:
            continue
        dim = names.index(name)
        if assigned[dim] is not None:
            continue
        axes = [a for a in _as_tuple(axes) if a in mesh.axis_names]
        if used.intersection(axes):
            continue  # like Flax: a rule whose mesh axes are taken is skipped whole
        if shape is not None and axes:
            kept, size = [], 1
            for a in axes:
                if shape[dim] % (size * mesh.shape[a]) == 0:
                    kept.append(a)
                    size *= mesh.shape[a]
            if not kept:
                continue  # nothing divides this dim: leave it to a later rule, else replicate
            axes = kept
        assigned[dim] = tuple(axes)
        used.update(axes)
    return PartitionSpec(*(_pack(a or ()) for a in assigned))


def _is_boxed(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def abstract_variables(module: nn.Module, *inputs, **kwargs):
    """Shapes, dtypes and logical names of `module.init(...)` without computing anything."""
    return jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs, **kwargs))


def logical_axes(module: nn.Module, *inputs, **kwargs):
    """The logical names of every parameter: a tree of tuples, matching `variables["params"]`."""
    boxed = abstract_variables(module, *inputs, **kwargs)["params"]
    return jax.tree.map(lambda b: tuple(b.names), boxed, is_leaf=_is_boxed)


def tree_specs(tree, mesh: Mesh, rules="fsdp"):
    """PartitionSpecs for any tree whose leaves are `nn.LogicallyPartitioned` boxes (concrete
    or abstract: boxed params, or an optax state built from boxed params); unboxed leaves
    (e.g. optax's step count) are replicated. The result has the unboxed tree's structure."""
    def spec(leaf):
        if _is_boxed(leaf):
            return logical_to_spec(leaf.names, rules, mesh, leaf.value.shape)
        return PartitionSpec()
    return jax.tree.map(spec, tree, is_leaf=_is_boxed)


def tree_shardings(tree, mesh: Mesh, rules="fsdp"):
    """`tree_specs` as NamedShardings on `auto_mesh(mesh)`."""
    amesh = auto_mesh(mesh)
    return jax.tree.map(lambda s: NamedSharding(amesh, s), tree_specs(tree, mesh, rules),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def leaf_sharding(mesh: Mesh, rules="fsdp"):
    """`(logical names or None, shape) -> NamedSharding` for one parameter, as `tree_shardings`
    places it (None: replicated)."""
    amesh = auto_mesh(mesh)

    def sharding(names, shape) -> NamedSharding:
        return NamedSharding(amesh, PartitionSpec() if names is None else logical_to_spec(names, rules, mesh, shape))

    return sharding


def logical_shardings(tree, names, mesh: Mesh, rules="fsdp"):
    """NamedShardings (on `auto_mesh(mesh)`) for a tree of arrays or `ShapeDtypeStruct`s whose
    logical names come as a tree of name tuples with the same structure (e.g. a decoder's
    `KVCache` and `KVCache.logical_axes()`); non-dividing mesh axes dropped as for parameters."""
    amesh = auto_mesh(mesh)
    return jax.tree.map(lambda x, n: NamedSharding(amesh, logical_to_spec(n, rules, mesh, x.shape)), tree, names)


def param_specs(module: nn.Module, *inputs, mesh: Mesh, rules="fsdp", **kwargs):
    """PartitionSpecs for `variables["params"]` on `mesh` under `rules`."""
    return tree_specs(abstract_variables(module, *inputs, **kwargs)["params"], mesh, rules)


def param_shardings(module: nn.Module, *inputs, mesh: Mesh, rules="fsdp", **kwargs):
    """NamedShardings for `variables["params"]`: use as `jit` out_shardings or for `device_put`."""
    return tree_shardings(abstract_variables(module, *inputs, **kwargs)["params"], mesh, rules)


def optimizer_shardings(tx, module: nn.Module, *inputs, mesh: Mesh, rules="fsdp", **kwargs):
    """NamedShardings for `tx.init(params)` (an optax `GradientTransformation`): moments get
    their parameter's sharding, scalars (step counts) are replicated."""
    boxed = abstract_variables(module, *inputs, **kwargs)["params"]
    return tree_shardings(jax.eval_shape(tx.init, boxed), mesh, rules)


def data_sharding(shape: Sequence[int], mesh: Mesh, rules="fsdp",
                  names: Sequence[str | None] | None = None) -> NamedSharding:
    """The sharding of an input batch: dim 0 is `batch` (unless `names` says otherwise), the
    rest replicated; a batch the mesh axes do not divide stays replicated."""
    names = tuple(names) if names is not None else ("batch",) + (None,) * (len(shape) - 1)
    return NamedSharding(auto_mesh(mesh), logical_to_spec(names, rules, mesh, shape))


def shard_params(params, shardings, *, copy: bool = False):
    """Place a params tree on its shardings (leaf by leaf, so no leaf is copied twice).

    The placed arrays may share device buffers with `params` (a leaf already on a device keeps
    that buffer as its shard there), so donating them to a jitted step also deletes those
    leaves of `params`; `copy=True` gives the placed tree buffers of its own. (In jax 0.10,
    `device_put(..., may_alias=False)` still reuses the source buffer for a replicated shard,
    hence the explicit copy.)
    """
    def place(x, s):
        y = jax.device_put(x, s)
        return jnp.copy(y) if copy else y
    return jax.tree.map(place, params, shardings)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules="fsdp"):
    """Context for tracing `apply` so that the activations' logical constraints use `rules` on
    `mesh` (as an Auto mesh). It must be active when `jax.jit` traces the function."""
    with jax.set_mesh(auto_mesh(mesh)), nn.logical_axis_rules(rules_for_mesh(rules, mesh)):
        yield


def t5x_params_axes(axes_tree):
    """A T5X-style `params_axes` collection from `logical_axes(...)`: each `name` leaf becomes
    `name_axes: AxisMetadata(names=...)`, which T5X's partitioner reads."""
    from flax.linen.partitioning import AxisMetadata

    def convert(node):
        out = {}
        for k, v in node.items():
            if isinstance(v, Mapping):
                out[k] = convert(v)
            else:
                out[f"{k}_axes"] = AxisMetadata(names=tuple(v))
        return out

    return convert(axes_tree)
