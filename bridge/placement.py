"""Where a bridged model's arrays live, and how its Linen code runs there.

A `Placement` is a mesh plus one logical-axis rule table (`jimm_linen.partitioning`). It
resolves every PartitionSpec itself with `jimm_linen.partitioning.logical_to_spec`, so
parameters get exactly the shardings the Linen side computes (Linen's rule order, mesh axes
that do not divide a dimension dropped), never NNX's own rule resolution, which reads the same
rules differently. It also runs Linen code on Auto and Explicit meshes alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding, PartitionSpec

from jimm_linen.partitioning import Rules, get_rules, logical_to_spec, rules_for_mesh

# Model outputs lead with the batch; they follow the activations' batch rule.
OUTPUT_BATCH_AXIS = "act_batch"

# One array's logical names -> the mesh axes of each dim, ahead of the rules (see `Placement`).
Layout = tuple[tuple[tuple[str | None, ...], tuple[Any, ...]], ...]


def current_mesh() -> Mesh | AbstractMesh | None:
    """The mesh set with `jax.set_mesh`, or None. Inside `jit` only its abstract mesh is known,
    and that is what comes back: placement there is a sharding constraint, not a transfer."""
    try:
        mesh = jax.sharding.get_mesh()
    except ValueError:  # under a trace: "get_mesh can only be used outside of jax.jit"
        mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


@dataclasses.dataclass(frozen=True)
class Placement:
    """A mesh and a rule table; `mesh=None` means unsharded (nothing placed, no constraints).

    `layout` pins whole arrays ahead of the rules: an array whose logical names (less a leading
    scanned `layers` axis, which stays whole) equal an entry's names gets that entry's mesh axes
    per dim, so two arrays sharing a logical name can be split differently (a kernel on its
    contracting dim only). Mesh axes the mesh lacks or that do not divide a dim are dropped,
    as with rules.

    A placement made inside `jit` holds the abstract mesh: its arrays are placed by sharding
    constraints within the trace, and the traced program's outputs land there.
    """

    mesh: Mesh | AbstractMesh | None = None
    rules: Rules = ()
    layout: Layout = ()

    @classmethod
    def resolve(cls, mesh: Mesh | None = None, rules: str | Sequence | None = "fsdp",
                layout: Layout = ()) -> Placement:
        """`mesh=None` takes the current mesh (`jax.set_mesh`); `rules=None` or no mesh at all
        gives an unsharded placement."""
        if rules is None:
            return cls()
        # get_rules gives tuples all the way down: a placement is static (hashed) model metadata
        # under nnx.jit.
        rules = get_rules(rules)
        if mesh is not None and not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh (devices needed to place arrays), "
                            f"got {type(mesh).__name__}")
        mesh = mesh if mesh is not None else current_mesh()
        return cls(mesh, rules, _check_layout(layout)) if mesh is not None else cls()

    @property
    def sharded(self) -> bool:
        return self.mesh is not None

    @property
    def concrete(self) -> bool:
        """Whether arrays can be put on this placement's devices (False inside `jit`, where only
        the abstract mesh is known)."""
        return isinstance(self.mesh, Mesh)

    # -- parameters -------------------------------------------------------------------------

    def spec(self, names: Sequence[str | None] | None, shape: Sequence[int]) -> PartitionSpec:
        """The PartitionSpec of one array whose dims carry logical `names` (None: replicated)."""
        if self.mesh is None or names is None:
            return PartitionSpec()
        if len(names) != len(shape):
            raise ValueError(f"logical names {tuple(names)} do not match an array of shape {tuple(shape)}")
        pinned = self._pinned(tuple(names), tuple(shape))
        return pinned if pinned is not None else logical_to_spec(names, self.rules, self.mesh, shape)

    def _pinned(self, names: tuple, shape: tuple) -> PartitionSpec | None:
        scanned = names[:1] == ("layers",)
        key = names[1:] if scanned else names
        axes = dict(self.layout).get(key)
        if axes is None:
            return None
        dims = shape[1:] if scanned else shape
        out, used = [], set()
        for dim, dim_axes in zip(dims, axes):
            kept, size = [], 1
            for a in () if dim_axes is None else (dim_axes,) if isinstance(dim_axes, str) else dim_axes:
                if a in self.mesh.axis_names and a not in used and dim % (size * self.mesh.shape[a]) == 0:
                    kept.append(a)
                    size *= self.mesh.shape[a]
            used.update(kept)
            out.append(tuple(kept) if len(kept) > 1 else (kept[0] if kept else None))
        return PartitionSpec(*(((None,) if scanned else ()) + tuple(out)))

    def sharding(self, spec: PartitionSpec) -> NamedSharding:
        assert self.mesh is not None
        return NamedSharding(self.mesh, spec)

    def place(self, value: jax.Array, spec: PartitionSpec) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(value)
        sharding = self.sharding(spec)
        if not self.concrete:  # inside jit: constrain the traced value
            value = jnp.asarray(value)
            if _explicit_axes(self.mesh):  # where a constraint is an assertion
                return jax.sharding.reshard(value, sharding)
            return jax.lax.with_sharding_constraint(value, sharding)
        if isinstance(value, jax.Array) and value.sharding == sharding:
            return value  # read straight into place (the load engine): no second copy
        return jax.device_put(value, sharding)

    def leaf_sharding(self, names: Sequence[str | None] | None, shape: Sequence[int]) -> NamedSharding:
        """Where a parameter with logical `names` (None: none) goes: what `place` puts it on."""
        return self.sharding(self.spec(names, shape))

    # -- running Linen code -----------------------------------------------------------------

    def run(self, fn: Callable, *args, out_specs: Any = None, constrain_activations: bool = True,
            batch_like: Sequence = (), **kwargs):
        """`fn(*args, **kwargs)` on this placement's mesh.

        Activations' logical constraints (`nn.with_logical_constraint`) resolve with this
        placement's rules. On a mesh with Explicit axes, Linen's sharding constraints are
        assertions and the model code is not written for sharding-in-types, so `fn` runs inside
        `jax.sharding.auto_axes`; its outputs come back as `out_specs` (a pytree or prefix of
        PartitionSpecs). By default an output whose leading dim has the batch size of the
        first array in `batch_like` (the model's inputs) is split like that input's leading dim,
        so a batch sharded on "data" comes back sharded on "data"; other outputs, and all of
        them when the inputs' batch is not split, follow the rules' batch axis.
        """
        if self.mesh is None:
            return fn(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            mesh = jax.sharding.get_abstract_mesh()
            if mesh.empty:  # called outside `jax.set_mesh`: constraints still need a mesh
                mesh = _abstract(self.mesh)
                stack.enter_context(jax.sharding.use_abstract_mesh(mesh))
            if constrain_activations:
                stack.enter_context(nn.logical_axis_rules(rules_for_mesh(self.rules, mesh)))
            explicit = _explicit_axes(mesh)
            if not explicit:
                return fn(*args, **kwargs)
            return self._run_auto_axes(fn, args, kwargs, explicit, out_specs, batch_like)

    def _run_auto_axes(self, fn, args, kwargs, explicit_axes, out_specs, batch_like=()):
        # auto_axes reshards only positional array arguments, so every array leaf goes in
        # positionally and everything else (flags, strings) stays static in the closure.
        leaves, treedef = jax.tree.flatten((args, kwargs))
        is_array = [isinstance(x, (jax.Array, np.ndarray)) for x in leaves]
        arrays = [x for x, a in zip(leaves, is_array) if a]

        def call(*arrays):
            it = iter(arrays)
            full = [next(it) if a else x for x, a in zip(leaves, is_array)]
            a, k = jax.tree.unflatten(treedef, full)
            return fn(*a, **k)

        if out_specs is None:  # the output shapes say which leading dims the mesh divides
            shapes = jax.eval_shape(
                jax.sharding.auto_axes(call, axes=explicit_axes, out_sharding=PartitionSpec()), *arrays)
            lead = _leading_split(batch_like)
            out_specs = jax.tree.map(lambda s: self._batch_spec(s.shape, lead), shapes)
        return jax.sharding.auto_axes(call, axes=explicit_axes, out_sharding=out_specs)(*arrays)

    def _batch_spec(self, shape: Sequence[int], lead: tuple[int, Any] | None = None) -> PartitionSpec:
        if not shape:
            return PartitionSpec()
        if lead is not None and shape[0] == lead[0]:
            return PartitionSpec(lead[1], *(None,) * (len(shape) - 1))
        return self.spec((OUTPUT_BATCH_AXIS,) + (None,) * (len(shape) - 1), shape)


def _abstract(mesh: Mesh | AbstractMesh) -> AbstractMesh:
    return mesh if isinstance(mesh, AbstractMesh) else mesh.abstract_mesh


def _explicit_axes(mesh: Mesh | AbstractMesh) -> tuple[str, ...]:
    return tuple(a for a, t in zip(mesh.axis_names, mesh.axis_types) if t == AxisType.Explicit)


def _leading_split(arrays: Sequence) -> tuple[int, Any] | None:
    """(batch size, mesh axes of the leading dim) of the first array in `arrays` with a leading
    dim, if that dim is split over the mesh; else None."""
    for x in jax.tree.leaves(arrays):
        if isinstance(x, jax.Array | np.ndarray) and np.ndim(x):
            sharding = getattr(jax.typeof(x), "sharding", None) if isinstance(x, jax.Array) else None
            spec = getattr(sharding, "spec", None)
            if spec and spec[0] is not None:
                return x.shape[0], spec[0]
            return None
    return None


def _check_layout(layout) -> Layout:
    """`layout` as nested tuples (hashable: a placement is static under jit), each entry's axes
    one per logical name."""
    out = []
    for names, axes in layout:
        names, axes = tuple(names), tuple(axes)
        if len(names) != len(axes):
            raise ValueError(f"layout entry {names}: {len(axes)} mesh axes {axes} for {len(names)} dims")
        out.append((names, tuple(tuple(a) if isinstance(a, list) else a for a in axes)))
    return tuple(out)
