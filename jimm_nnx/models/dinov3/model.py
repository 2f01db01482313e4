"""`DINOv3Model`: `jimm_linen.DINOv3` with jimm's NNX surface (DINOv2's `_DINO` call)."""

from __future__ import annotations

from jimm_linen.models import dino as linen_dino
from jimm_nnx.models.dinov2.model import _DINO
from jimm_nnx.sharding import DINOv3Sharding


class DINOv3Model(_DINO):
    """`jimm_linen.DINOv3` as an `nnx.Module` (HF `DINOv3ViTModel` checkpoints); any image size
    divisible by the patch size."""

    linen_cls = linen_dino.DINOv3
    config_cls = linen_dino.DINOv3Config
    model_type = "dinov3_vit"
    default_sharding = DINOv3Sharding
