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
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jimm_linen.partitioning import Rules, get_rules, logical_to_spec, rules_for_mesh

# Model outputs lead with the batch; they follow the activations' batch rule.
OUTPUT_BATCH_AXIS = "act_batch"


def current_mesh() -> Mesh | None:
    """The concrete mesh set with `jax.set_mesh`, or None."""
    mesh = jax.sharding.get_mesh()
    return None if mesh.empty else mesh


@dataclasses.dataclass(frozen=True)
class Placement:
    """A mesh and a rule table; `mesh=None` means unsharded (nothing placed, no constraints)."""

    mesh: Mesh | None = None
    rules: Rules = ()

    @classmethod
    def resolve(cls, mesh: Mesh | None = None, rules: str | Sequence | None = "fsdp") -> Placement:
        """`mesh=None` takes the current mesh (`jax.set_mesh`); `rules=None` or no mesh at all
        gives an unsharded placement."""
        if rules is None:
            return cls()
        # get_rules gives tuples all the way down: a placement is static (hashed) model metadata
        # under nnx.jit.
        rules = get_rules(rules)
        mesh = mesh if mesh is not None else current_mesh()
        if mesh is not None and not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be a jax.sharding.Mesh (devices needed to place arrays), "
                            f"got {type(mesh).__name__}")
        return cls(mesh, rules) if mesh is not None else cls()

    @property
    def sharded(self) -> bool:
        return self.mesh is not None

    # -- parameters -------------------------------------------------------------------------

    def spec(self, names: Sequence[str | None] | None, shape: Sequence[int]) -> PartitionSpec:
        """The PartitionSpec of one array whose dims carry logical `names` (None: replicated)."""
        if self.mesh is None or names is None:
            return PartitionSpec()
        if len(names) != len(shape):
            raise ValueError(f"logical names {tuple(names)} do not match an array of shape {tuple(shape)}")
        return logical_to_spec(names, self.rules, self.mesh, shape)

    def sharding(self, spec: PartitionSpec) -> NamedSharding:
        assert self.mesh is not None
        return NamedSharding(self.mesh, spec)

    def place(self, value: jax.Array, spec: PartitionSpec) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(value)
        sharding = self.sharding(spec)
        if isinstance(value, jax.Array) and value.sharding == sharding:
            return value  # read straight into place (the load engine): no second copy
        return jax.device_put(value, sharding)

    def leaf_sharding(self, names: Sequence[str | None] | None, shape: Sequence[int]) -> NamedSharding:
        """Where a parameter with logical `names` (None: none) goes: what `place` puts it on."""
        return self.sharding(self.spec(names, shape))

    # -- running Linen code -----------------------------------------------------------------

    def run(self, fn: Callable, *args, out_specs: Any = None, constrain_activations: bool = True,
            **kwargs):
        """`fn(*args, **kwargs)` on this placement's mesh.

        Activations' logical constraints (`nn.with_logical_constraint`) resolve with this
        placement's rules. On a mesh with Explicit axes, Linen's sharding constraints are
        assertions and the model code is not written for sharding-in-types, so `fn` runs inside
        `jax.sharding.auto_axes`; its outputs come back as `out_specs` (a pytree or prefix of
        PartitionSpecs; by default batch-sharded along their leading dim).
        """
        if self.mesh is None:
            return fn(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            mesh = jax.sharding.get_abstract_mesh()
            if mesh.empty:  # called outside `jax.set_mesh`: constraints still need a mesh
                mesh = self.mesh.abstract_mesh
                stack.enter_context(jax.sharding.use_abstract_mesh(mesh))
            if constrain_activations:
                stack.enter_context(nn.logical_axis_rules(rules_for_mesh(self.rules, mesh)))
            explicit = tuple(a for a, t in zip(mesh.axis_names, mesh.axis_types) if t == AxisType.Explicit)
            if not explicit:
                return fn(*args, **kwargs)
            return self._run_auto_axes(fn, args, kwargs, explicit, out_specs)

    def _run_auto_axes(self, fn, args, kwargs, explicit_axes, out_specs):
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
            out_specs = jax.tree.map(lambda s: self._batch_spec(s.shape), shapes)
        return jax.sharding.auto_axes(call, axes=explicit_axes, out_sharding=out_specs)(*arrays)

    def _batch_spec(self, shape: Sequence[int]) -> PartitionSpec:
        if not shape:
            return PartitionSpec()
        return self.spec((OUTPUT_BATCH_AXIS,) + (None,) * (len(shape) - 1), shape)
