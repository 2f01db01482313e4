"""`jimm.models.vit.sharding` (defined in `jimm_nnx.sharding`)."""

from jimm_nnx.sharding import ViTSharding

__all__ = ["ViTSharding"]
