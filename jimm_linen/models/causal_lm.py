"""Transitional: the decoder shell moved to `models.decoder`, the cache to `layers.kv_cache`."""

from jimm_linen.layers.kv_cache import KVCache  # noqa: F401
from jimm_linen.models.decoder import CausalLM, CausalLMConfig, check_token_ids, positions_from_mask  # noqa: F401
