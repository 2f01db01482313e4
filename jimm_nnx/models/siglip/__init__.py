"""`jimm.models.siglip`'s path to its classes (defined in `model.py`)."""

from jimm_nnx.models.siglip.model import SigLIP, SigLIPTextModel, SigLIPVisionModel
from jimm_nnx.models.siglip.sharding import SigLIPSharding

__all__ = ["SigLIP", "SigLIPTextModel", "SigLIPVisionModel", "SigLIPSharding"]
