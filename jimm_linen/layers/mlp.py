"""The transformer feed-forward blocks: plain (`Dense_0 -> act -> Dense_1`) and gated (SwiGLU)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jimm_linen.activations import get_activation
from jimm_linen.layers.linear import DenseGeneral
from jimm_linen.partitioning import constrain

ACT_MLP = ("act_batch", "act_length", "act_mlp")


class MlpBlock(nn.Module):
    """`Dense_1(act(Dense_0(x)))`, the hidden dimension named `mlp`."""

    mlp_dim: int
    hidden_act: str = "gelu"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Any = None
    out_kernel_init: Any = None  # the output projection's, where it differs (GPT-2's residual scaling)

    def _out_kw(self, kw: dict) -> dict:
        return kw if self.out_kernel_init is None else dict(kw, kernel_init=self.out_kernel_init)

    @nn.compact
    def __call__(self, x):
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init)
        h = DenseGeneral(self.mlp_dim, kernel_axes=("embed", "mlp"), name="Dense_0", **kw)(x)
        h = checkpoint_name(h, "mlp_in")
        h = get_activation(self.hidden_act)(h)
        h = constrain(h, ACT_MLP)
        y = DenseGeneral(x.shape[-1], kernel_axes=("mlp", "embed"), name="Dense_1", **self._out_kw(kw))(h)
        return checkpoint_name(y, "mlp_out")


class GatedMlpBlock(MlpBlock):
    """`wo(act(wi_0(x)) * wi_1(x))` (SwiGLU with `hidden_act="silu"`); MaxText's names. The
    fields are `MlpBlock`'s."""

    hidden_act: str = "silu"

    @nn.compact
    def __call__(self, x):
        kw = dict(use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init)
        # Both input projections carry the `mlp_in` tag, so the "minimal" remat policy keeps
        # them as it keeps the plain block's one.
        gate = checkpoint_name(DenseGeneral(self.mlp_dim, kernel_axes=("embed", "mlp"), name="wi_0", **kw)(x), "mlp_in")
        up = checkpoint_name(DenseGeneral(self.mlp_dim, kernel_axes=("embed", "mlp"), name="wi_1", **kw)(x), "mlp_in")
        h = constrain(get_activation(self.hidden_act)(gate) * up, ACT_MLP)
        y = DenseGeneral(x.shape[-1], kernel_axes=("mlp", "embed"), name="wo", **self._out_kw(kw))(h)
        return checkpoint_name(y, "mlp_out")

