from jimm_linen.models.vit.config import ViTConfig
from jimm_linen.models.vit.model import ViT, ViTOutput

__all__ = ["ViT", "ViTConfig", "ViTOutput"]
