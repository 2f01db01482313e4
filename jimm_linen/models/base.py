"""What every jimm model takes besides its config, written once (`Model`), and how the
vision models' towers end (`Tower`)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from jimm_linen.layers import DenseGeneral
from jimm_linen.layers.stack import Stacked
from jimm_linen.outputs import TowerOutput


class Model(Stacked):
    """A model: its config, and how it runs (`layers.Stacked`'s fields; computing in float32
    unless told otherwise)."""

    dtype: Any = jnp.float32


class Tower(Model):
    """A vision model's tower (ViT, DINO, CLIP / SigLIP's image and text towers): pooled
    features, an optional head on them, and `TowerOutput`. Decoders are `Model`s without it."""

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
