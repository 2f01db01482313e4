from jimm_linen.models.qwen3.config import Qwen3Config
from jimm_linen.models.qwen3.model import Qwen3

__all__ = ["Qwen3", "Qwen3Config"]
