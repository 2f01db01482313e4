from jimm_linen.models.llama.config import LlamaConfig
from jimm_linen.models.llama.model import Llama, LlamaBlock

__all__ = ["Llama", "LlamaBlock", "LlamaConfig"]
