"""`jimm.models.vit`'s path to the classes of `jimm_nnx.models`."""

from jimm_nnx.models import VisionTransformer
from jimm_nnx.models.vit.sharding import ViTSharding

__all__ = ["VisionTransformer", "ViTSharding"]
