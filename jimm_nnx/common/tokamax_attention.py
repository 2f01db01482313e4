"""`jimm.common.tokamax_attention`: attention through tokamax (defined in `jimm_linen`)."""

from jimm_linen import make_tokamax_attention

# jimm's default tokamax attention: tokamax picks the backend for the device.
tokamax_attention_fn = make_tokamax_attention()

__all__ = ["make_tokamax_attention", "tokamax_attention_fn"]
