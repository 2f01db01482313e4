from jimm_linen.models.vit.config import ViTConfig
from jimm_linen.models.vit.model import ViT
from jimm_linen.outputs import TowerOutput

__all__ = ["ViT", "ViTConfig", "TowerOutput"]

from jimm_linen.models.vit import hf as _hf  # noqa: E402
from jimm_linen.registry import Family  # noqa: E402

FAMILIES = (Family("vit", ViT, _hf.keymap, ViTConfig.from_hf_config, adapt_config=_hf.adapt_config,
                   owns=lambda c: not c.pre_norm and c.pooling != "map"),)
