"""What every decoder-only language model shares: the config fields and their HF round trip,
the KV cache, and the model shell (embed -> stacked blocks -> norm -> LM head). A family adds
its block and its config's few differences (`models/llama`, `models/qwen3`, `models/olmo2`).

The model contract (what generation and training rely on, never a family):
`apply(variables, input_ids, attention_mask=None, positions=None, cache=None)` returns float32
logits `[B, T, V]`, or `(logits, cache)` when a cache was given; `return_hidden_states=True`
returns a `CausalLMOutput`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jimm_linen import checkpoint as ckpt
from jimm_linen.activations import get_activation
from jimm_linen.config_utils import check_fields
from jimm_linen.layers import DenseGeneral, stack
from jimm_linen.layers.stack import Stacked
from jimm_linen.layers.attention import MultiHeadAttention
from jimm_linen.layers.embed import Embed
from jimm_linen.layers.linear import default_kernel_init
from jimm_linen.layers.mlp import GatedMlpBlock
from jimm_linen.layers.norm import RMSNorm
from jimm_linen.layers.rope import Rope, rotary_embedding
from jimm_linen.models.base import Model
from jimm_linen.outputs import CausalLMOutput
from jimm_linen.partitioning import constrain

ACT_EMBED = ("act_batch", "act_length", "act_embed")
CACHE_AXES = ("layers", "cache_batch", "cache_length", "cache_kv_heads", "cache_kv")


# --- config -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CausalLMConfig:
    """The fields HF's Llama, Qwen3 and OLMo 2 configs share (HF's names and meanings).
    Subclasses set `model_type`, `architecture`, the block's variant (`qk_norm`, `norm_order`)
    and add their own fields. `generation` holds the checkpoint's `generation_config.json`."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    rope: Rope = Rope()
    attention_bias: bool = False
    attention_dropout: float = 0.0
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    generation: tuple[tuple[str, Any], ...] = ()

    model_type: ClassVar[str] = ""
    architecture: ClassVar[str] = ""
    qk_norm: ClassVar[str | None] = None
    norm_order: ClassVar[str] = "cast_then_scale"
    mlp_bias: ClassVar[bool] = False
    # HF fields read and written unchanged that do not change the computation here.
    passthrough: ClassVar[tuple[str, ...]] = ("use_cache",)

    def __post_init__(self):
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                                 f"{self.num_attention_heads}; give head_dim explicitly")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads {self.num_key_value_heads} does not divide "
                             f"num_attention_heads {self.num_attention_heads}")
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for the rotary embedding")
        get_activation(self.hidden_act)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        eos = dict(self.generation).get("eos_token_id", self.eos_token_id)
        return () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)

    def dummy_inputs(self) -> tuple:
        return (np.zeros((1, 4), np.int32),)

    @classmethod
    def _own_fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("rope", "generation"))

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> CausalLMConfig:
        """From a config.json dict; an unknown field, or a known one with a value this model
        does not implement, is an error naming it."""
        hf = dict(hf)
        cls.refuse(hf)
        rope = Rope.from_hf(hf)
        check_fields(hf, {*cls._own_fields(), *cls.passthrough, "rope_theta", "rope_scaling",
                          "rope_parameters"}, cls.model_type)
        return cls(rope=rope, **{k: hf[k] for k in cls._own_fields() if k in hf})

    @classmethod
    def refuse(cls, hf: dict[str, Any]) -> None:
        """A family raises here for HF fields whose value asks for what it does not implement
        (e.g. Llama's `pretraining_tp > 1`)."""

    def to_hf_config(self) -> dict[str, Any]:
        hf = {k: getattr(self, k) for k in self._own_fields()}
        if isinstance(hf["eos_token_id"], tuple):
            hf["eos_token_id"] = list(hf["eos_token_id"])
        return {**hf, **self.rope.to_hf(), "model_type": self.model_type, "architectures": [self.architecture]}


# --- the KV cache ---------------------------------------------------------------------------

@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer, `[layers, batch, length, kv_heads, head_dim]`, the
    padding mask of every slot written so far (`[batch, length]`, False for left padding and
    unwritten slots) and `index`, the next slot to write (the same for every row: a batch is
    left-padded to a common length)."""

    keys: jax.Array
    values: jax.Array
    mask: jax.Array
    index: jax.Array

    @classmethod
    def zeros(cls, config: CausalLMConfig, batch: int, length: int, dtype: Any = jnp.float32) -> KVCache:
        shape = (config.num_hidden_layers, batch, length, config.num_key_value_heads, config.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch, length), bool),
                   jnp.zeros((), jnp.int32))

    @property
    def length(self) -> int:
        return self.keys.shape[2]

    @staticmethod
    def logical_axes() -> KVCache:
        """The logical axis names of each field (tensor parallelism shards `cache_kv_heads`)."""
        return KVCache(CACHE_AXES, CACHE_AXES, ("cache_batch", "cache_length"), ())


# --- the block's pieces -----------------------------------------------------------------------

def self_attention(cfg: CausalLMConfig, attention_fn, dtype, param_dtype) -> MultiHeadAttention:
    return MultiHeadAttention(
        num_heads=cfg.num_attention_heads, head_dim=cfg.head_dim, num_kv_heads=cfg.num_key_value_heads,
        qkv_bias=cfg.attention_bias, out_bias=cfg.attention_bias, qk_norm=cfg.qk_norm, norm_eps=cfg.rms_norm_eps,
        norm_order=cfg.norm_order, attention_fn=attention_fn, attention_dropout=cfg.attention_dropout,
        kernel_init=default_kernel_init(cfg.initializer_range), dtype=dtype, param_dtype=param_dtype,
        name="self_attention")


def mlp(cfg: CausalLMConfig, dtype, param_dtype) -> GatedMlpBlock:
    return GatedMlpBlock(cfg.intermediate_size, cfg.hidden_act, use_bias=cfg.mlp_bias, dtype=dtype,
                    param_dtype=param_dtype, kernel_init=default_kernel_init(cfg.initializer_range), name="mlp")


def rms_norm(cfg: CausalLMConfig, name: str, dtype, param_dtype) -> RMSNorm:
    return RMSNorm(cfg.rms_norm_eps, cfg.norm_order, dtype=dtype, param_dtype=param_dtype, name=name)


class Block(nn.Module):
    """Base of a family's decoder block: `__call__(x, mask, rotary, is_causal, deterministic,
    index, *kv)` returns `(x, (x or None, kv or None))` (scannable; `kv` is this layer's cache
    `(keys, values)`, written at `index`)."""

    config: Any
    attention_fn: Any = None
    collect: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def attend(self, y, mask, rotary, is_causal, deterministic, index, kv):
        attn = self_attention(self.config, self.attention_fn, self.dtype, self.param_dtype)
        if not kv:
            return attn(y, None, mask, deterministic, is_causal, rotary), None
        return attn(y, None, mask, deterministic, is_causal, rotary, (*kv, index))

    def mlp(self, y):
        return mlp(self.config, self.dtype, self.param_dtype)(y)

    def norm(self, name):
        return rms_norm(self.config, name, self.dtype, self.param_dtype)

    def out(self, x, kv):
        x = constrain(x, ACT_EMBED)
        return x, (x if self.collect else None, kv)


# --- the model shell ------------------------------------------------------------------------

def check_token_ids(input_ids, vocab_size: int) -> None:
    """Shape and dtype always; the id range when the ids are concrete (not inside `jit`)."""
    if getattr(input_ids, "ndim", None) != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {getattr(input_ids, 'shape', None)}")
    if not jnp.issubdtype(input_ids.dtype, jnp.integer):
        raise ValueError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    if not isinstance(input_ids, jax.core.Tracer) and input_ids.size:
        ids = np.asarray(input_ids)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"token ids must lie in [0, {vocab_size}) (the vocabulary); got ids from {lo} to {hi}")


def positions_from_mask(mask: jax.Array, offset: jax.Array | int = 0) -> jax.Array:
    """HF's `position_ids` for a left-padded batch: the count of real tokens before each one
    (padding gets 1, as `generate` fills it; it is never attended to)."""
    pos = offset + jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1
    return jnp.where(mask, pos, 1)


class Decoder(Stacked):
    """The stacked blocks of type `block` (`layers`, see `layers.stack`) and the final norm
    `decoder_norm`."""

    block: Any = None

    @nn.compact
    def __call__(self, x, mask, rotary, is_causal, deterministic, index, kv, collect):
        cfg = self.config
        blocks = stack(self.block, length=cfg.num_hidden_layers, name="layers", scan=self.scan,
                       remat=self.remat_policy, num_broadcast=5, static_argnums=(2, 3), config=cfg,
                       attention_fn=self.attention_fn, collect=collect, dtype=self.dtype,
                       param_dtype=self.param_dtype)
        x, (per_layer, kv) = blocks(x, mask, rotary, is_causal, deterministic, index, *kv)
        return rms_norm(cfg, "decoder_norm", self.dtype, self.param_dtype)(x), per_layer, kv


class CausalLM(Model):
    """A decoder-only LM: `token_embedder` -> `decoder` (blocks of type `block`, final norm)
    -> `logits_dense` (or the embedding table when `tie_word_embeddings`)."""

    block: ClassVar[type[nn.Module]] = Block

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.token_embedder = Embed(cfg.vocab_size, cfg.hidden_size,
                                    embedding_init=nn.initializers.normal(cfg.initializer_range), **kw)
        self.decoder = Decoder(cfg, block=self.block, **self.runtime())
        if not cfg.tie_word_embeddings:
            self.logits_dense = DenseGeneral(cfg.vocab_size, kernel_axes=("embed", "vocab"), use_bias=False,
                                             kernel_init=default_kernel_init(cfg.initializer_range), **kw)

    def __call__(self, input_ids, attention_mask=None, positions=None, cache: KVCache | None = None,
                 train: bool = False, return_hidden_states: bool = False):
        h, per_layer, cache = self.hidden(input_ids, attention_mask, positions, cache, train, return_hidden_states)
        logits = self.logits(h)
        if return_hidden_states:
            return CausalLMOutput(logits=logits, last_hidden_state=h, hidden_states=per_layer, cache=cache)
        return logits if cache is None else (logits, cache)

    def logits(self, h: jax.Array) -> jax.Array:
        """Float32 logits of final hidden states (training computes them a chunk at a time)."""
        if self.config.tie_word_embeddings:
            out = self.token_embedder.attend(h)
        else:
            out = self.logits_dense(h)
        return constrain(out.astype(jnp.float32), ("act_batch", "act_length", "act_vocab"))

    def hidden(self, input_ids, attention_mask=None, positions=None, cache: KVCache | None = None,
               train: bool = False, collect: bool = False):
        """`(final normed hidden states, per-layer states or None, cache or None)`."""
        cfg = self.config
        check_token_ids(input_ids, cfg.vocab_size)
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        if attention_mask.shape != (b, t):
            raise ValueError(f"attention_mask has shape {attention_mask.shape}, input_ids {input_ids.shape}: "
                             f"they must match")
        attention_mask = attention_mask.astype(bool)
        x = constrain(self.token_embedder(input_ids), ACT_EMBED)
        if cache is None:
            positions = positions_from_mask(attention_mask) if positions is None else positions
            mask, is_causal, index, kv = attention_mask[:, None, None, :], True, None, ()
        else:
            if t > cache.length:
                raise ValueError(f"{t} tokens do not fit a KV cache of length {cache.length}")
            if positions is None:
                positions = positions_from_mask(attention_mask, cache.mask.sum(-1, keepdims=True, dtype=jnp.int32))
            slots = jax.lax.dynamic_update_slice_in_dim(cache.mask, attention_mask, cache.index, axis=1)
            # Query t (slot index + t) sees the written slots up to its own.
            causal = jnp.arange(cache.length)[None, :] <= cache.index + jnp.arange(t)[:, None]
            mask, is_causal, index = slots[:, None, None, :] & causal[None, None], False, cache.index
            kv = (cache.keys, cache.values)
        rotary = rotary_embedding(cfg.rope, positions, cfg.head_dim, cfg.max_position_embeddings)
        h, per_layer, new_kv = self.decoder(x, mask, rotary, is_causal, not train, index, kv, collect)
        if cache is not None:
            cache = KVCache(*new_kv, mask=slots, index=cache.index + t)
        if collect:  # HF's hidden_states: the embeddings, each block's output, the last one normed
            per_layer = (x, *list(per_layer)[:-1], h)
        return h, per_layer, cache

    def init_cache(self, batch: int, length: int, dtype: Any = None) -> KVCache:
        """An empty cache for `batch` rows of up to `length` tokens (prompt + generated)."""
        return KVCache.zeros(self.config, batch, length, dtype or self.dtype)


# --- the HF key table -----------------------------------------------------------------------

def hf_keymap(config: CausalLMConfig, norms: dict[str, str]) -> ckpt.KeyMap:
    """The `*ForCausalLM` key table of the Llama-like families; `norms` maps each of the
    block's norm names to its HF module name (e.g. `{"pre_attention_norm": "input_layernorm"}`).
    A tied head has no `lm_head.weight` (transformers drops it when saving; one stored anyway
    is the embedding again and is not read)."""
    layer, block = "model.layers.{i}", "decoder/layers_{i}"
    attn = f"{block}/self_attention"
    rules = [
        ckpt.Rule("model.embed_tokens.weight", "token_embedder/embedding"),
        *(ckpt.Rule(f"{layer}.{hf}.weight", f"{block}/{ours}/scale") for ours, hf in norms.items()),
        *ckpt.linear(f"{layer}.self_attn.q_proj", f"{attn}/query", flat_bias=True),
        *ckpt.linear(f"{layer}.self_attn.k_proj", f"{attn}/key", flat_bias=True),
        *ckpt.linear(f"{layer}.self_attn.v_proj", f"{attn}/value", flat_bias=True),
        *ckpt.linear(f"{layer}.self_attn.o_proj", f"{attn}/out", in_dims=2),
        ckpt.Rule(f"{layer}.self_attn.q_norm.weight", f"{attn}/query_norm/scale"),
        ckpt.Rule(f"{layer}.self_attn.k_norm.weight", f"{attn}/key_norm/scale"),
        *ckpt.linear(f"{layer}.mlp.gate_proj", f"{block}/mlp/wi_0"),
        *ckpt.linear(f"{layer}.mlp.up_proj", f"{block}/mlp/wi_1"),
        *ckpt.linear(f"{layer}.mlp.down_proj", f"{block}/mlp/wo"),
        ckpt.Rule("model.norm.weight", "decoder/decoder_norm/scale"),
        *ckpt.linear("lm_head", "logits_dense"),
    ]
    return ckpt.KeyMap(rules, ignore=[r"lm_head\.weight"] if config.tie_word_embeddings else [])
