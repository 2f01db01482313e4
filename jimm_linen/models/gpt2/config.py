"""GPT-2 configuration: HF `GPT2Config`'s fields, read and written under HF's names."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from jimm_linen.activations import ACTIVATIONS
from jimm_linen.models.decoder import CausalLMConfig

# HF's `GPT2Config.attribute_map` (what a config.json may spell either way) reversed: the
# config.json name -> ours. HF reads the alias over the GPT-2 name when a file has both.
HF_NAMES = {"n_embd": "hidden_size", "n_positions": "max_position_embeddings", "n_head": "num_attention_heads",
            "n_layer": "num_hidden_layers"}
ALIASES = {ours: name for name, ours in HF_NAMES.items()}


def _derived(default: Any = None):
    """A field of the decoder shell that GPT-2 does not have under that name: computed from the
    GPT-2 fields, never given (a value under that name in config.json is kept, as HF ignores it)."""
    return dataclasses.field(default=default, init=False)


@dataclasses.dataclass(frozen=True)
class GPT2Config(CausalLMConfig):
    """HF `GPT2Config` (GPT-2 124M's defaults) for `GPT2LMHeadModel`: LayerNorm blocks, fused
    q/k/v, learned absolute positions (`n_positions`), the head tied to `wte` unless
    `tie_word_embeddings=False`, no rotary embeddings. `n_inner` None is `4 * n_embd`.

    `scale_attn_weights=False` drops the `head_dim ** -0.5` scale; `scale_attn_by_inverse_layer_idx`
    divides layer i's scale by `i + 1` (as in Stanford CRFM's GPT-2 runs). `reorder_and_upcast_attn`
    asks HF's eager attention for float32 logits and softmax, which jimm's attention always
    computes (HF's default sdpa attention ignores the flag; in float32 the two orders are the same
    function). `summary_*` (the double-heads model's classifier) and `n_ctx` (older files) are kept
    and written back: `GPT2LMHeadModel` never reads them. Cross-attention is refused."""

    vocab_size: int = 50257
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 1024
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | tuple[int, ...] | None = 50256
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    # The shell's names for what GPT-2 calls otherwise (or has no choice of): derived.
    intermediate_size: int = _derived(0)
    hidden_act: str = _derived("gelu_new")
    attention_dropout: float = _derived(0.1)
    attention_bias: bool = _derived(True)
    num_key_value_heads: int | None = _derived()
    head_dim: int | None = _derived()
    rms_norm_eps: float = _derived(1e-5)

    model_type = "gpt2"
    architecture = "GPT2LMHeadModel"
    uses_rope = False
    hf_unread = ("intermediate_size", "hidden_act", "attention_dropout", "attention_bias", "num_key_value_heads",
                 "head_dim", "rms_norm_eps")
    runtime_fields: ClassVar[frozenset[str]] = CausalLMConfig.runtime_fields | {
        "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
        "n_ctx"}
    refused_fields: ClassVar[frozenset[str]] = frozenset({"add_cross_attention"})

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"n_embd {self.hidden_size} is not divisible by n_head {self.num_attention_heads} "
                             f"(GPT-2 gives every head n_embd / n_head dims)")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"unsupported activation_function {self.activation_function!r}; supported: "
                             f"{sorted(ACTIVATIONS)}")
        if self.n_inner is not None and (isinstance(self.n_inner, bool) or not isinstance(self.n_inner, int)
                                         or self.n_inner < 1):
            raise ValueError(f"n_inner must be a positive int or None (4 * n_embd), got {self.n_inner!r}")
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            rate = getattr(self, name)
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be a dropout probability in [0, 1], got {rate!r}")
        if isinstance(self.layer_norm_epsilon, bool) or not isinstance(self.layer_norm_epsilon, (int, float)) \
                or not self.layer_norm_epsilon >= 0:
            raise ValueError(f"layer_norm_epsilon must be a number >= 0, got {self.layer_norm_epsilon!r}")
        derived = dict(intermediate_size=4 * self.hidden_size if self.n_inner is None else self.n_inner,
                       hidden_act=self.activation_function, attention_dropout=self.attn_pdrop,
                       rms_norm_eps=self.layer_norm_epsilon, num_key_value_heads=self.num_attention_heads,
                       head_dim=self.hidden_size // self.num_attention_heads)
        for name, value in derived.items():
            object.__setattr__(self, name, value)
        super().__post_init__()

    # HF's GPT-2 names of the shell's fields, read-only (as `GPT2Config.attribute_map` aliases them).
    n_embd = property(lambda self: self.hidden_size)
    n_layer = property(lambda self: self.num_hidden_layers)
    n_head = property(lambda self: self.num_attention_heads)
    n_positions = property(lambda self: self.max_position_embeddings)

    @property
    def attention_scales(self) -> tuple[float, ...]:
        """Each layer's attention scale, computed as HF does (in Python floats)."""
        scale = self.head_dim ** -0.5 if self.scale_attn_weights else 1.0
        if not self.scale_attn_by_inverse_layer_idx:
            return (scale,) * self.num_hidden_layers
        return tuple(scale / float(i + 1) for i in range(self.num_hidden_layers))

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> GPT2Config:
        hf = dict(hf)
        for name, ours in HF_NAMES.items():
            if name in hf:
                hf.setdefault(ours, hf.pop(name))  # a file with both: HF reads the alias
        return super().from_hf_config(hf)

    @classmethod
    def refuse(cls, hf: dict[str, Any]) -> None:
        if hf.get("add_cross_attention"):
            raise ValueError(f"add_cross_attention={hf['add_cross_attention']!r} (cross-attention layers over an "
                             f"encoder's states, GPT-2 as the decoder of an encoder-decoder model) is not supported: "
                             f"jimm's GPT-2 is the decoder-only GPT2LMHeadModel")

    def to_hf_config(self) -> dict[str, Any]:
        hf = super().to_hf_config()
        for ours, name in ALIASES.items():
            hf[name] = hf.pop(ours)
        return hf
