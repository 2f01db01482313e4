from jimm_linen.models.dino.config import DINOv2Config, DINOv3Config
from jimm_linen.models.dino.model import DINOv2, DINOv3

__all__ = ["DINOv2", "DINOv2Config", "DINOv3", "DINOv3Config"]
