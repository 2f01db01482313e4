"""`DINOv2Model` (and `_DINO`, what DINOv3 shares with it): `jimm_linen.DINOv2` with jimm's NNX
surface."""

from __future__ import annotations

import jax

from jimm_linen.models import dino as linen_dino
from jimm_nnx.models.base import RngsArg
from jimm_nnx.models.vit.model import VisionTransformer
from jimm_nnx.sharding import DINOv2Sharding


class _DINO(VisionTransformer):
    def __call__(self, x: jax.Array, *, train: bool | None = None, interpolate_pos_encoding: bool = True,
                 return_hidden_states: bool = False, bool_masked_pos: jax.Array | None = None,
                 rngs: RngsArg = None):
        """The class token after the final LayerNorm (HF's `pooler_output`, jimm's output), or a
        `jimm_linen.TowerOutput` with `return_hidden_states=True`. `bool_masked_pos`
        `[batch, patches]` replaces those patches by the mask token."""
        return self._run(x, train=train, rngs=rngs, interpolate_pos_encoding=interpolate_pos_encoding,
                         return_hidden_states=return_hidden_states, bool_masked_pos=bool_masked_pos)


class DINOv2Model(_DINO):
    """`jimm_linen.DINOv2` as an `nnx.Module` (HF `Dinov2Model` and `Dinov2WithRegistersModel`
    checkpoints); other resolutions resize the position embeddings as HF does."""

    linen_cls = linen_dino.DINOv2
    config_cls = linen_dino.DINOv2Config
    model_type = "dinov2"
    default_sharding = DINOv2Sharding
