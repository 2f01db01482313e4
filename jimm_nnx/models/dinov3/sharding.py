"""`jimm.models.dinov3.sharding` (defined in `jimm_nnx.sharding`)."""

from jimm_nnx.sharding import DINOv3Sharding

__all__ = ["DINOv3Sharding"]
