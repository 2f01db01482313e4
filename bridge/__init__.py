"""Linen <-> NNX interop for every `jimm_linen` model.

`wrap(module, *inputs, rngs=...)` initialises any Linen module as an `nnx.Module` with its
parameters created in their shardings; `from_linen_variables` / `to_linen_variables` convert
existing variables both ways losslessly (the NNX state *is* the Linen variable tree), so one
checkpoint serves both worlds. Shardings come from the logical axis names and one `jimm_linen.partitioning`
rule table on the current mesh (Auto or Explicit axes), or nothing is sharded without a mesh.
"""

from bridge.module import LinenModule, from_linen_variables, rng_streams, to_linen_variables, wrap
from bridge.placement import Placement, current_mesh

__all__ = ["LinenModule", "Placement", "current_mesh", "from_linen_variables", "rng_streams", "to_linen_variables", "wrap"]
