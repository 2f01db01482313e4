"""`jimm.models.dinov3`: `DINOv3Sharding`, and `DINOv3Model` from `jimm_nnx.models` where that family is."""

from jimm_nnx.models.dinov3.sharding import DINOv3Sharding

__all__ = ["DINOv3Model", "DINOv3Sharding"]


def __getattr__(name: str):
    # Looked up when asked: the class is defined in jimm_nnx.models, which imports this module.
    if name == "DINOv3Model":
        import jimm_nnx.models

        return getattr(jimm_nnx.models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
