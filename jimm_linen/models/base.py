"""What every jimm model takes besides its config, written once."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Model(nn.Module):
    """A model: its config, and how it runs. `attention_fn=None` is exact softmax attention;
    `scan` stacks the blocks under one `layers` axis; `remat_policy` is a name understood by
    `jimm_linen.layers.remat_policy`."""

    config: Any
    attention_fn: Any = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scan: bool = True
    remat_policy: str = "none"

    def runtime(self) -> dict[str, Any]:
        """Everything but the config, to build another model (a tower) that runs the same way."""
        return dict(attention_fn=self.attention_fn, dtype=self.dtype, param_dtype=self.param_dtype,
                    scan=self.scan, remat_policy=self.remat_policy)
