"""`jimm.models.dinov2`: `DINOv2Model` (defined in `model.py`) and `DINOv2Sharding`."""

from jimm_nnx.models.dinov2.model import DINOv2Model
from jimm_nnx.models.dinov2.sharding import DINOv2Sharding

__all__ = ["DINOv2Model", "DINOv2Sharding"]
