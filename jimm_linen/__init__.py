"""jimm_linen: the canonical Flax Linen models of jimm."""

from jimm_linen.attention import dot_product_attention, make_tokamax_attention
from jimm_linen.models.vit import ViT, ViTConfig, ViTOutput

__all__ = ["ViT", "ViTConfig", "ViTOutput", "dot_product_attention", "make_tokamax_attention"]

from jimm_linen.pretrained import from_pretrained, save_pretrained  # noqa: E402

__all__ += ["from_pretrained", "save_pretrained"]
