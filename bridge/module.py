"""Any Linen module as an `nnx.Module`, with its parameters placed by logical-axis rules."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh, PartitionSpec

from bridge.placement import Placement
from jimm_linen.models.base import Model

RngsLike = nnx.Rngs | jax.Array | int | Mapping[str, jax.Array] | None


def _is_box(x) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def _unbox(leaf):
    # No constraint: placement is ours to do, with our rules.
    if isinstance(leaf, nn.Partitioned):
        return leaf.unbox(apply_constraint=False)
    return leaf.unbox() if _is_box(leaf) else leaf


def _spec_of(leaf, placement: Placement) -> PartitionSpec:
    """A leaf's spec: logical names go through the placement's rules; `nn.Partitioned`
    names are mesh axes already; an unannotated leaf is replicated."""
    if not placement.sharded or not _is_box(leaf):
        return PartitionSpec()
    if isinstance(leaf, nn.LogicallyPartitioned):
        return placement.spec(leaf.names, leaf.value.shape)
    if isinstance(leaf, nn.Partitioned):
        return PartitionSpec(*leaf.names)
    return PartitionSpec()


def rng_streams(rngs: RngsLike) -> dict[str, jax.Array]:
    """Linen `rngs=` from NNX-style ones. A PRNG key or an int seed is the `params` key (so
    `wrap(module, x, rngs=key)` initialises exactly like `module.init(key, x)`); an NNX
    `default` stream serves as Linen's `params`, which Linen's `make_rng` falls back to for
    any stream it lacks (e.g. `dropout`)."""
    if rngs is None:
        return {}
    if isinstance(rngs, int):
        rngs = jax.random.key(rngs)
    if isinstance(rngs, nnx.Rngs):
        streams = {name: stream() for name, stream in rngs.items()}
    elif isinstance(rngs, jax.Array):
        streams = {"params": rngs}
    elif isinstance(rngs, Mapping):
        streams = dict(rngs)
    else:
        raise TypeError(f"rngs must be nnx.Rngs, a PRNG key, an int seed or a dict of keys, got {type(rngs).__name__}")
    if "params" not in streams and "default" in streams:
        streams["params"] = streams.pop("default")
    return streams


def _stored_rngs(rngs: RngsLike) -> nnx.Rngs | None:
    if rngs is None or isinstance(rngs, nnx.Rngs):
        return rngs
    if isinstance(rngs, int | jax.Array):
        return nnx.Rngs(rngs)
    return nnx.Rngs(**rngs)


class LinenModule(nnx.bridge.ToNNX):
    """A Linen module and its variables as one stateful `nnx.Module`.

    The NNX state has exactly the Linen variable tree: `nnx.state(model, nnx.Param)` is
    `variables["params"]` with each array in an `nnx.Param` whose metadata carries its
    resolved `out_sharding` (mesh axes) and `mesh`, so NNX tools (`nnx.get_named_sharding`,
    `nnx.Optimizer`) see the placement. Build one with `wrap` (random init) or
    `from_linen_variables`; call it like the Linen module's `apply` without the variables.
    """

    # Attributes of a subclass that are plain Python values (flags), not Linen variables.
    plain_attributes: tuple[str, ...] = ()

    def __init__(self, module: nn.Module, variables: Mapping[str, Any], *, placement: Placement,
                 rngs: RngsLike = None):
        """`variables` must be boxed (`nn.LogicallyPartitioned` leaves name their axes); use
        `from_linen_variables` for plain arrays."""
        super().__init__(module, rngs=_stored_rngs(rngs))
        self.to_nnx__placement = placement
        flat: dict[tuple[str, ...], nnx.Variable] = {}
        for collection, tree in variables.items():
            var_type = nnx.variable_type_from_name(collection, allow_register=True)
            for path, leaf in flatten_dict(dict(tree), is_leaf=lambda _, x: _is_box(x)).items():
                if path in flat:
                    raise ValueError(f"variable {'/'.join(path)} is in more than one collection; "
                                     f"NNX keeps one variable per path")
                flat[path] = self._variable(var_type, leaf, placement)
        for name, subtree in unflatten_dict(flat).items():
            setattr(self, name, nnx.data(subtree))

    @staticmethod
    def _variable(var_type: type[nnx.Variable], leaf, placement: Placement) -> nnx.Variable:
        spec = _spec_of(leaf, placement)
        value = placement.place(_unbox(leaf), spec)
        if not placement.sharded:
            return var_type(value)
        # Already placed, so NNX's own (differently resolved) eager sharding stays off; the
        # metadata is what `nnx.get_partition_spec`, `nnx.Optimizer` and friends read.
        return var_type(value, out_sharding=tuple(spec), mesh=placement.mesh, eager_sharding=False)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def wrap(cls, module: nn.Module, *example_inputs, rngs: RngsLike, mesh: Mesh | None = None,
             rules: str | Sequence | None = "fsdp", placement: Placement | None = None, **init_kwargs):
        """Initialise `module` on `example_inputs` (like `module.init`; a key or seed as
        `rngs` gives the very same values) with every parameter created directly in its
        sharding. `mesh=None` takes the current mesh (`jax.set_mesh`); with no mesh, or
        `rules=None`, nothing is sharded. A `placement` replaces `mesh` and `rules`."""
        if rngs is None:
            raise ValueError("wrap needs rngs (nnx.Rngs, a PRNG key or an int seed) to initialise parameters")
        placement = Placement.resolve(mesh, rules) if placement is None else placement
        streams = rng_streams(rngs)

        def init(streams, *inputs):
            return module.init(streams, *inputs, **init_kwargs)

        def run(out_specs):
            return lambda *a: placement.run(init, *a, out_specs=out_specs, constrain_activations=False)

        abstract = jax.eval_shape(run(PartitionSpec()), streams, *example_inputs)
        specs = jax.tree.map(lambda b: _spec_of(b, placement), abstract, is_leaf=_is_box)
        if placement.sharded and not placement.concrete:
            # Inside a trace (a jitted model factory): init is traced into it, and each array is
            # constrained to its sharding in __init__; the factory's outputs land there.
            variables = run(specs)(streams, *example_inputs)
        else:
            shardings = jax.tree.map(placement.sharding, specs) if placement.sharded else None
            # Boxes keep the logical names through jit; unboxing happens in __init__.
            variables = jax.jit(run(specs), out_shardings=shardings)(streams, *example_inputs)
        return cls(module, variables, placement=placement, rngs=rngs)

    @classmethod
    def from_linen_variables(cls, module: nn.Module, variables: Mapping[str, Any], *,
                             mesh: Mesh | None = None, rules: str | Sequence | None = "fsdp",
                             placement: Placement | None = None, rngs: RngsLike = None,
                             example_inputs: Sequence | None = None):
        """The NNX model holding `variables` (plain or boxed arrays, e.g. from
        `jimm_linen.from_pretrained` or an orbax restore), each placed on its sharding.

        Plain arrays get their logical names from an abstract `module.init` on
        `example_inputs` (default: `module.config.dummy_inputs()`); a tree that differs
        from it in structure or shapes is an error naming the paths. `mesh` and `rules` (or a
        `placement`) work as in `wrap`.
        """
        placement = Placement.resolve(mesh, rules) if placement is None else placement
        if not isinstance(variables, Mapping) or not all(isinstance(v, Mapping) for v in variables.values()):
            raise TypeError("variables must be a Linen variables dict {collection: tree}, e.g. {'params': ...}")
        if not any(_is_box(x) for x in jax.tree.leaves(variables, is_leaf=_is_box)):
            variables = _with_logical_names(module, variables, example_inputs, placement)
        return cls(module, variables, placement=placement, rngs=rngs)

    # -- use ----------------------------------------------------------------------------------

    @property
    def linen_module(self) -> nn.Module:
        return self.to_nnx__module

    @property
    def placement(self) -> Placement:
        return self.to_nnx__placement

    @property
    def mesh(self) -> Mesh | None:
        return self.to_nnx__placement.mesh

    def __call__(self, *args, rngs: RngsLike = None, method=None, **kwargs):
        """`module.apply(variables, *args, **kwargs)` with this model's variables, on its
        placement. `rngs=None` uses the stored rngs (every stream, like `nnx.bridge.ToNNX`);
        `rngs={}` runs without random streams.

        Called eagerly, it runs one compiled program (jitted once per module, placement,
        method, flags and input shapes), as fast as `jax.jit(module.apply)`; inside `jit`,
        `grad` or `vmap` it traces the apply into the caller's program."""
        streams = rng_streams(self.to_nnx__rngs if rngs is None else rngs)
        return _call_linen(self.to_nnx__module, self.to_nnx__placement, method, to_linen_variables(self),
                           streams, args, kwargs)


def _call_linen(module: nn.Module, placement: Placement, method, variables, streams, args, kwargs):
    """`module.apply(variables, *args, rngs=streams, method=method, **kwargs)` on `placement`,
    compiled when called eagerly.

    Array leaves are arguments of the compiled program and everything else (flags, strings,
    the module) is static, so new parameters (`nnx.update`, an optimizer step, new weights) and
    fresh dropout keys reach the next call without a recompile, and a new flag or input shape
    compiles once more. Under a transform (`jit`, `grad`, `vmap`) the apply is traced into the
    caller's computation as before: an outer jit compiles it already, and lowers it to exactly
    the ops of `jax.jit(module.apply)`."""
    leaves, treedef = jax.tree.flatten((variables, streams, args, kwargs))
    if any(isinstance(x, jax.core.Tracer) for x in leaves):
        return _apply(module, placement, method, variables, streams, args, kwargs)
    is_array = tuple(isinstance(x, jax.Array | np.ndarray) for x in leaves)
    statics = tuple(None if a else x for x, a in zip(leaves, is_array))
    try:
        hash((module, placement, method, statics))
    except TypeError:  # an unhashable flag cannot key a compiled program: run op by op
        return _apply(module, placement, method, variables, streams, args, kwargs)
    arrays = [x for x, a in zip(leaves, is_array) if a]
    return _compiled_apply(arrays, module=module, placement=placement, method=method,
                           structure=(treedef, is_array, statics))


@functools.partial(jax.jit, static_argnames=("module", "placement", "method", "structure"))
def _compiled_apply(arrays, *, module, placement, method, structure):
    treedef, is_array, statics = structure
    it = iter(arrays)
    leaves = [next(it) if a else x for x, a in zip(statics, is_array)]
    return _apply(module, placement, method, *jax.tree.unflatten(treedef, leaves))


def _apply(module: nn.Module, placement: Placement, method, variables, streams, args, kwargs):
    def apply(variables, streams, *args, **kwargs):
        return module.apply(variables, *args, rngs=streams, method=method, **kwargs)

    return placement.run(apply, variables, streams, *args, batch_like=args, **kwargs)


def _with_logical_names(module: nn.Module, variables: Mapping[str, Any], example_inputs, placement: Placement):
    """`variables` boxed with the logical names an abstract init of `module` gives them."""
    if example_inputs is None:
        # A model's config says what it takes; a block (an Encoder) reads its tower's config too,
        # but takes other inputs.
        if not isinstance(module, Model):
            raise ValueError(f"pass example_inputs=(...) to name the axes of a {type(module).__name__}'s "
                             f"variables (or pass variables boxed with nn.LogicallyPartitioned)")
        example_inputs = module.config.dummy_inputs()
    abstract = jax.eval_shape(lambda *inputs: placement.run(
        module.init, jax.random.key(0), *inputs, out_specs=PartitionSpec(), constrain_activations=False),
        *example_inputs)
    want = {p: b for p, b in flatten_dict(dict(abstract), is_leaf=lambda _, x: _is_box(x)).items()}
    have = flatten_dict({k: dict(v) for k, v in variables.items()})
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        raise ValueError(f"variables do not match {type(module).__name__}: "
                         f"missing [{_paths(missing)}], unexpected [{_paths(extra)}]")
    boxed = {}
    for path, box in want.items():
        value = have[path]
        shape = tuple((box.value if _is_box(box) else box).shape)
        if tuple(value.shape) != shape:
            raise ValueError(f"variable {'/'.join(path)} has shape {tuple(value.shape)}, "
                             f"the module expects {shape}")
        boxed[path] = box.replace_boxed(value) if _is_box(box) else value
    return unflatten_dict(boxed)


def _paths(paths: list[tuple[str, ...]], limit: int = 8) -> str:
    shown = ", ".join("/".join(p) for p in paths[:limit])
    return shown + (f", ... ({len(paths) - limit} more)" if len(paths) > limit else "")


def to_linen_variables(model: nnx.Module) -> dict[str, Any]:
    """The Linen variables `{collection: tree}` of a bridged model, as plain arrays (same
    tree, same arrays and shardings; nothing is copied)."""
    if not isinstance(model, nnx.bridge.ToNNX):
        raise TypeError(f"expected a bridged model (nnx.bridge.ToNNX), got {type(model).__name__}")
    out: dict[str, Any] = {}

    # Every eager call walks this, so it reads each Variable the cheap way (see `_value`)
    # and builds the nested dicts directly.
    def walk(node: Mapping, path: tuple[str, ...]):
        for key, var in node.items():
            if isinstance(var, Mapping):
                walk(var, (*path, key))
                continue
            if not isinstance(var, nnx.Variable):
                raise TypeError(f"{'/'.join((*path, key))} is a {type(var).__name__}, not an nnx.Variable")
            tree = out.setdefault(_collection(type(var)), {})
            for part in path:
                tree = tree.setdefault(part, {})
            tree[key] = _value(var)

    plain = getattr(type(model), "plain_attributes", ())
    walk({k: v for k, v in vars(model).items() if not k.startswith(("to_nnx__", "_pytree__")) and k not in plain}, ())
    return out


@functools.lru_cache(maxsize=None)
def _collection(var_type: type[nnx.Variable]) -> str:
    return nnx.variable_name_from_type(var_type)


def _value(var: nnx.Variable):
    """`var.get_value()`, which copies the value's pytree and checks for array refs and hooks
    (~5 us a Variable, a third of a small model's eager call on GPU); a plain stored array with
    no get-hook is the same thing, read directly."""
    raw = var.get_raw_value()
    if isinstance(raw, jax.Array) and var.get_metadata("on_get_value", None) is None:
        return raw
    return var.get_value()


# The module-level spellings build plain `LinenModule`s; subclasses use their own classmethods.
from_linen_variables = LinenModule.from_linen_variables
wrap = LinenModule.wrap
