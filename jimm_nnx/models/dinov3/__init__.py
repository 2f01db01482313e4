"""`jimm.models.dinov3`: `DINOv3Model` (defined in `model.py`) and `DINOv3Sharding`."""

from jimm_nnx.models.dinov3.model import DINOv3Model
from jimm_nnx.models.dinov3.sharding import DINOv3Sharding

__all__ = ["DINOv3Model", "DINOv3Sharding"]
