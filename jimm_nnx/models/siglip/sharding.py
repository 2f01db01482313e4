"""`jimm.models.siglip.sharding` (defined in `jimm_nnx.sharding`)."""

from jimm_nnx.sharding import SigLIPSharding

__all__ = ["SigLIPSharding"]
