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


class GatedMlp(nn.Module):
    """`wo(act(wi_0(x)) * wi_1(x))`: the gated feed-forward (SwiGLU with `silu`) of the
    decoders; `wi_0` is HF's `gate_proj`, `wi_1` its `up_proj`, `wo` its `down_proj`."""

    mlp_dim: int
    hidden_act: str = "silu"
    use_bias: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = None

    @nn.compact
    def __call__(self, x):
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                  kernel_init=self.kernel_init)
        gate = DenseGeneral(self.mlp_dim, kernel_axes=("embed", "mlp"), name="wi_0", **kw)(x)
        up = DenseGeneral(self.mlp_dim, kernel_axes=("embed", "mlp"), name="wi_1", **kw)(x)
        h = checkpoint_name(get_activation(self.hidden_act)(gate) * up, "mlp_in")
        h = constrain(h, ("act_batch", "act_length", "act_mlp"))
        y = DenseGeneral(x.shape[-1], kernel_axes=("mlp", "embed"), name="wo", **kw)(h)
        return checkpoint_name(y, "mlp_out")
