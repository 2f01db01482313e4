"""`jimm.models.dinov2`: `DINOv2Sharding`, and `DINOv2Model` from `jimm_nnx.models` where that family is."""

from jimm_nnx.models.dinov2.sharding import DINOv2Sharding

__all__ = ["DINOv2Model", "DINOv2Sharding"]


def __getattr__(name: str):
    # Looked up when asked: the class is defined in jimm_nnx.models, which imports this module.
    if name == "DINOv2Model":
        import jimm_nnx.models

        return getattr(jimm_nnx.models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
