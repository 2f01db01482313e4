"""The transformer feed-forward block."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jimm_linen.activations import get_activation
from jimm_linen.layers.linear import DenseGeneral
from jimm_linen.partitioning import constrain


class MlpBlock(nn.Module):
    """`Dense_1(act(Dense_0(x)))`, the hidden dimension named `mlp`."""

    mlp_dim: int
    hidden_act: str = "gelu"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = None

    @nn.compact
    def __call__(self, x):
        embed = x.shape[-1]
        h = DenseGeneral(self.mlp_dim, kernel_axes=("embed", "mlp"), dtype=self.dtype,
                         param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                         name="Dense_0")(x)
        h = checkpoint_name(h, "mlp_in")
        h = get_activation(self.hidden_act)(h)
        h = constrain(h, ("act_batch", "act_length", "act_mlp"))
        y = DenseGeneral(embed, kernel_axes=("mlp", "embed"), dtype=self.dtype,
                         param_dtype=self.param_dtype, kernel_init=self.kernel_init,
                         name="Dense_1")(h)
        return checkpoint_name(y, "mlp_out")
