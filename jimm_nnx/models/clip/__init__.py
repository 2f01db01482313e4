"""`jimm.models.clip`'s path to its classes (defined in `model.py`)."""

from jimm_nnx.models.clip.model import CLIP, CLIPTextModel, CLIPVisionModel
from jimm_nnx.models.clip.sharding import CLIPSharding

__all__ = ["CLIP", "CLIPTextModel", "CLIPVisionModel", "CLIPSharding"]
