from jimm_linen.models.dino.config import DINOv2Config, DINOv3Config
from jimm_linen.models.dino.model import DINOv2, DINOv3

__all__ = ["DINOv2", "DINOv2Config", "DINOv3", "DINOv3Config"]

from jimm_linen.models.dino import hf as _hf  # noqa: E402
from jimm_linen.registry import Family  # noqa: E402

FAMILIES = (
    Family("dinov2", DINOv2, _hf.dinov2_keymap, DINOv2Config.from_hf_config, owns=lambda c: c.model_type == "dinov2"),
    Family("dinov2_with_registers", DINOv2, _hf.dinov2_keymap, DINOv2Config.from_hf_config,
           owns=lambda c: c.model_type == "dinov2_with_registers"),
    Family("dinov3_vit", DINOv3, _hf.dinov3_keymap, DINOv3Config.from_hf_config),
)
