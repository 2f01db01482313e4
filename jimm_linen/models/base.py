"""What every jimm model takes besides its config, written once."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jimm_linen.layers import DenseGeneral
from jimm_linen.outputs import TowerOutput


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

    def tower_output(self, pooled, encoded, hidden_states, *, head: int, head_bias: bool, init,
                     return_hidden_states: bool):
        """A tower's end (call it inside the compact `__call__`): the `head` Dense on the pooled
        features (a classifier or a CLIP/SigLIP projection; none when `head` is 0), then the
        head's output alone or the whole `TowerOutput`."""
        out = pooled
        if head:
            out = DenseGeneral(head, kernel_axes=("embed", "classes"), use_bias=head_bias, kernel_init=init,
                               dtype=self.dtype, param_dtype=self.param_dtype, name="head")(pooled)
        if not return_hidden_states:
            return out
        return TowerOutput(output=out, pooled=pooled, last_hidden_state=encoded, hidden_states=hidden_states)
