"""How a jimm_nnx model's parameters are laid out: `Sharding(rules, mesh)` or `NoSharding()`."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from jax.sharding import Mesh

import bridge


@dataclasses.dataclass(frozen=True)
class Sharding:
    """Parameters sharded by logical-axis `rules` (a `jimm_linen.partitioning` preset:
    "fsdp", "tp", "fsdp_tp", "ep", "replicated", one extended with `make_rules`, or a rule
    list) on `mesh`. `mesh=None` takes the mesh set with `jax.set_mesh` when the model is built;
    with no mesh, nothing is sharded."""

    rules: str | Sequence[tuple[str, Any]] = "fsdp"
    mesh: Mesh | None = None


@dataclasses.dataclass(frozen=True)
class NoSharding:
    """Every parameter unsharded and no activation constraints, even under a mesh."""


ShardingArg = Sharding | NoSharding | str | None


def resolve_sharding(sharding: ShardingArg) -> bridge.Placement:
    """`None` is the default, FSDP on the current mesh; a string is a rule preset."""
    if sharding is None:
        sharding = Sharding()
    elif isinstance(sharding, str):
        sharding = Sharding(rules=sharding)
    if isinstance(sharding, NoSharding):
        return bridge.Placement()
    if isinstance(sharding, Sharding):
        return bridge.Placement.resolve(sharding.mesh, sharding.rules)
    raise TypeError(f"sharding must be Sharding(...), NoSharding() or a preset name, got {sharding!r}")
