"""`jimm.models.dinov2.sharding` (defined in `jimm_nnx.sharding`)."""

from jimm_nnx.sharding import DINOv2Sharding

__all__ = ["DINOv2Sharding"]
