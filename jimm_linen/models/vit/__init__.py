from jimm_linen.models.vit.config import ViTConfig
from jimm_linen.models.vit.model import ViT, TowerOutput

__all__ = ["ViT", "ViTConfig", "TowerOutput"]
