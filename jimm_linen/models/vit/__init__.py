from jimm_linen.models.vit.config import ViTConfig
from jimm_linen.models.vit.model import ViT
from jimm_linen.outputs import TowerOutput

__all__ = ["ViT", "ViTConfig", "TowerOutput"]
