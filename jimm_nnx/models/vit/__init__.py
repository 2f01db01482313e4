"""`jimm.models.vit`'s path to its classes (defined in `model.py`)."""

from jimm_nnx.models.vit.model import VisionTransformer
from jimm_nnx.models.vit.sharding import ViTSharding

__all__ = ["VisionTransformer", "ViTSharding"]
