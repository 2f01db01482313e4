"""`jimm.models.clip.sharding` (defined in `jimm_nnx.sharding`)."""

from jimm_nnx.sharding import CLIPSharding

__all__ = ["CLIPSharding"]
