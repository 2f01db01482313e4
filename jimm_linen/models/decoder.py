"""The decoder shell every causal LM family runs: the config fields HF's decoder configs share
(and the rule for the fields they do not), and the model: token embedding -> stacked blocks ->
final norm -> logits. A family writes its block (`models/<family>/model.py`) and overrides the
shell's named hooks where it differs: `embed` (a scale, a learned position table), `rotary`
(RoPE per attention kind), `final_norm`, `logits` (tied or not, a soft-cap).

The model contract (what generation and training rely on, never a family):
`apply(variables, input_ids, attention_mask=None, positions=None, cache=None)` returns float32
logits `[B, T, V]`, or `(logits, cache)` when a cache was given; `return_hidden_states=True`
returns a `CausalLMOutput` (with `aux`, the blocks' per-layer auxiliary outputs), and so does
`output_router_logits=True` (mixture-of-experts families: with HF's `router_logits` and
`aux_loss`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jimm_linen.activations import get_activation
from jimm_linen.config_utils import HF_GENERIC_FIELDS
from jimm_linen.layers import DenseGeneral, stack
from jimm_linen.layers.block_inputs import FULL, SLIDING, Out, Own, Shared
from jimm_linen.layers.embed import Embed
from jimm_linen.layers.kv_cache import KVCache
from jimm_linen.layers.linear import default_kernel_init
from jimm_linen.layers.norm import RMSNorm
from jimm_linen.layers.rope import Rope, rotary_embedding
from jimm_linen.layers.stack import Block, Stacked, scan_to_loop
from jimm_linen.models.base import Model
from jimm_linen.outputs import CausalLMOutput
from jimm_linen.partitioning import constrain

ACT_EMBED = ("act_batch", "act_length", "act_embed")
LAYER_KINDS = (FULL, SLIDING)


# --- config -------------------------------------------------------------------------------

def hf_config_class(model_type: str):
    import transformers

    return transformers.CONFIG_MAPPING[model_type]


@functools.cache
def hf_defaults(model_type: str) -> dict[str, Any]:
    """The fields HF's config class for `model_type` defines, with their defaults."""
    out = {}
    for f in dataclasses.fields(hf_config_class(model_type)):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    return out


@dataclasses.dataclass(frozen=True)
class CausalLMConfig:
    """The fields HF's decoder configs share (HF's names and meanings). A family subclass sets
    `model_type`, `architecture`, its block's variant (`qk_norm`, `norm_order`) and adds its own
    fields. `generation` holds the checkpoint's `generation_config.json`; `kept` every other
    `config.json` field, written back as read (see `from_hf_config` for which are allowed)."""

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
    kept: tuple[tuple[str, str], ...] = ()

    model_type: ClassVar[str] = ""
    architecture: ClassVar[str] = ""
    qk_norm: ClassVar[str | None] = None
    norm_order: ClassVar[str] = "cast_then_scale"
    # Added to every RMSNorm weight in float32 (Gemma stores `w` for a scale of `1 + w`).
    norm_offset: ClassVar[float] = 0.0
    mlp_bias: ClassVar[bool] = False
    # False for a family without rotary embeddings (GPT-2's learned positions): no rope is read
    # from or written to config.json (rope keys there are kept as read), head_dim may be odd.
    uses_rope: ClassVar[bool] = True
    # Fields of ours that the family's HF modeling code never reads (HF hard-codes the value).
    hf_unread: ClassVar[tuple[str, ...]] = ()
    # Fields HF defines that no forward pass reads (HF's runtime and bookkeeping switches).
    runtime_fields: ClassVar[frozenset[str]] = frozenset({"use_cache", "dtype", "torch_dtype",
                                                          "transformers_version"})
    # Fields HF defines that the family's `refuse` checks itself (kept and written back).
    refused_fields: ClassVar[frozenset[str]] = frozenset()
    # Other names HF's config class reads for our fields (its `attribute_map`): name -> ours.
    hf_aliases: ClassVar[dict[str, str]] = {}
    # HF's `default_theta`: the rope base of a config.json that gives none.
    default_theta: ClassVar[float] = 10000.0

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
        if self.uses_rope and self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for the rotary embedding")
        get_activation(self.hidden_act)
        kinds = self.layer_kinds()
        if len(kinds) != self.num_hidden_layers or set(kinds) - set(LAYER_KINDS):
            raise ValueError(f"layer_types must give one of {LAYER_KINDS} for each of the {self.num_hidden_layers} "
                             f"layers, got {list(kinds)}")
        window = self.window(SLIDING) if SLIDING in kinds else 1
        if window is None:
            raise ValueError("layer_types has sliding_attention layers but sliding_window is not set")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"sliding_window must be a positive whole number of tokens or None, got {window!r}")

    # Per-layer attention: a family with sliding windows overrides these two.
    def layer_kinds(self) -> tuple[str, ...]:
        """Each layer's attention kind, HF's `layer_types` spelling."""
        return (FULL,) * self.num_hidden_layers

    def window(self, kind: str) -> int | None:
        return getattr(self, "sliding_window", None) if kind == SLIDING else None

    def rope_for(self, kind: str) -> Rope:
        """The rotary embedding of layers of `kind` (one for all unless a family says otherwise)."""
        return self.rope

    @property
    def extrapolates(self) -> bool:
        """Whether positions past `max_position_embeddings` are meant to work (dynamic RoPE)."""
        return any(self.rope_for(k).rope_type == "dynamic" for k in set(self.layer_kinds()))

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        eos = dict(self.generation).get("eos_token_id", self.eos_token_id)
        return () if eos is None else tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)

    def dummy_inputs(self) -> tuple:
        return (np.zeros((1, 4), np.int32),)

    @classmethod
    def _own_fields(cls) -> tuple[str, ...]:
        """The fields read from and written to `config.json` (not those the family's HF modeling
        code never reads, `hf_unread`: a value there is kept, ours stays the default)."""
        return tuple(f.name for f in dataclasses.fields(cls)
                     if f.name not in ("rope", "generation", "kept", *cls.hf_unread))

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> CausalLMConfig:
        """From a `config.json` dict, as HF reads it. Our fields are read; the rope from
        `rope_parameters` or `rope_theta` + `rope_scaling` (both present: `rope_scaling` wins, as
        in transformers). Every other field is kept and written back, and must not change HF's
        computation: one neither HF's config class for this `model_type` nor its modeling code
        reads cannot (our fields are what the modeling code reads, `getattr` fallbacks such as
        OLMo 2's `head_dim` included); one the class defines must hold HF's default unless it is a
        runtime switch (`use_cache`, `dtype`, ...).
        A field whose value asks for what we do not implement is an error naming it."""
        hf = {k: v for k, v in hf.items() if k not in ("model_type", "architectures")}
        # HF's mask functions read `is_causal` from any config (getattr, default True).
        if hf.get("is_causal", True) is not True:
            raise ValueError(f"is_causal={hf['is_causal']!r} (bidirectional attention, which HF's masks read from "
                             f"config.json) is not supported: jimm's decoders are causal")
        for other, ours in cls.hf_aliases.items():
            if other in hf:
                value = hf.pop(other)
                if ours in hf and hf[ours] != value:
                    raise ValueError(f"config fields {other}={value!r} and {ours}={hf[ours]!r} name one setting "
                                     f"(HF reads {other} as {ours}) with different values")
                hf[ours] = value
        cls.refuse(hf)
        rope = Rope.from_hf(hf, cls.default_theta) if cls.uses_rope else Rope()
        own = {k: hf.pop(k) for k in cls._own_fields() if k in hf}
        if hf.get("pruned_heads"):
            raise ValueError(f"pruned_heads {hf['pruned_heads']} is not supported")
        # HF's config class is read only when a field asks (importing transformers imports torch
        # where it is installed: seconds a plain checkpoint's load need not pay).
        rest = [k for k in hf if k not in cls.runtime_fields | cls.refused_fields and k not in HF_GENERIC_FIELDS]
        defaults = hf_defaults(cls.model_type) if rest else {}
        unsupported = sorted(k for k in rest if k in defaults and hf[k] != defaults[k])
        if unsupported:
            raise ValueError(f"config field(s) {', '.join(f'{k}={hf[k]!r}' for k in unsupported)} of "
                             f"model_type {cls.model_type!r}: only HF's defaults "
                             f"({', '.join(f'{k}={defaults[k]!r}' for k in unsupported)}) are implemented")
        kept = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in hf.items()))
        return cls(rope=rope, kept=kept, **own)

    @classmethod
    def refuse(cls, hf: dict[str, Any]) -> None:
        """A family raises here for HF fields whose value asks for what it does not implement
        (e.g. Llama's `pretraining_tp > 1`)."""

    def to_hf_config(self) -> dict[str, Any]:
        hf = {k: json.loads(v) for k, v in self.kept}
        hf.update({k: getattr(self, k) for k in self._own_fields()})
        if isinstance(hf["eos_token_id"], tuple):
            hf["eos_token_id"] = list(hf["eos_token_id"])
        rope = self.rope.to_hf() if self.uses_rope else {}
        return {**hf, **rope, "model_type": self.model_type, "architectures": [self.architecture]}


# --- the shell ------------------------------------------------------------------------------

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


class DecoderBlock(Block):
    """Base of a family's block: `__call__(x, shared: Shared, own: Own) -> (x, Out)`."""

    @property
    def kw(self) -> dict[str, Any]:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)

    @property
    def kernel_init(self):
        return default_kernel_init(self.config.initializer_range)

    def out(self, x, keys=None, values=None, **aux) -> tuple[jax.Array, Out]:
        x = constrain(x, ACT_EMBED)
        return x, Out(keys, values, x if self.collect else None, aux)


class Decoder(Stacked):
    """The stacked blocks (`layers`, see `layers.stack`) and the final norm `decoder_norm`.
    `blocks`: each layer's block class."""

    blocks: tuple = ()
    final_norm: Any = None

    @nn.compact
    def __call__(self, x, shared: Shared, own: Own, collect: bool):
        # `nn.scan` runs one block over parameters stacked alike. Layers of different kinds (a
        # dense MLP among MoE layers) hold different parameters, so such a model runs its layers
        # in a loop (`layers_0`, `layers_1`, ...) whatever `scan` says.
        scan = self.scan and len(set(self.blocks)) == 1
        blocks = stack(self.blocks[0] if scan else self.blocks, length=self.config.num_hidden_layers, name="layers",
                       scan=scan, remat=self.remat_policy, config=self.config, attention_fn=self.attention_fn,
                       collect=collect, dtype=self.dtype, param_dtype=self.param_dtype)
        x, out = blocks(x, shared, own)
        return self.final_norm(name="decoder_norm")(x), out


class CausalLM(Model):
    """A decoder-only LM: `token_embedder` -> `decoder` (blocks of type `block`, final norm)
    -> `logits_dense` (or the embedding table when `tie_word_embeddings`)."""

    dtype: Any = jnp.float32
    block: ClassVar[type[nn.Module]] = DecoderBlock

    # --- hooks ---
    def blocks(self) -> tuple[type[nn.Module], ...]:
        """Each layer's block class: `block` for every layer, unless the family mixes kinds of
        layer (then the layers run in a loop, see `Decoder`)."""
        return (self.block,) * self.config.num_hidden_layers

    def final_norm(self) -> functools.partial:
        """The final norm's module, to be called with `name=`."""
        cfg = self.config
        return functools.partial(RMSNorm, cfg.rms_norm_eps, cfg.norm_order, offset=cfg.norm_offset, dtype=self.dtype,
                                 param_dtype=self.param_dtype)

    def embed(self, input_ids, positions):
        return self.token_embedder(input_ids)

    def embed_dropout(self, x, deterministic: bool):
        """Dropout on the embeddings when training (GPT-2's `embd_pdrop`); none by default."""
        return x

    def rotary(self, positions, kinds: tuple[str, ...]) -> tuple:
        """`(cos, sin)` per attention kind (computed once per distinct rope); None per kind for a
        family without rotary embeddings."""
        cfg, tables = self.config, {}
        if not cfg.uses_rope:
            return (None,) * len(kinds)
        for kind in kinds:
            rope = cfg.rope_for(kind)
            if rope not in tables:
                tables[rope] = rotary_embedding(rope, positions, cfg.head_dim, cfg.max_position_embeddings)
        return tuple(tables[cfg.rope_for(k)] for k in kinds)

    def logits(self, h: jax.Array) -> jax.Array:
        """Float32 logits of final hidden states (training computes them a chunk at a time)."""
        if self.config.tie_word_embeddings:
            out = self.token_embedder.attend(h)
        else:
            out = self.logits_dense(h)
        return constrain(out.astype(jnp.float32), ("act_batch", "act_length", "act_vocab"))

    def aux_loss(self, aux: dict, attention_mask) -> jax.Array | None:
        """The training loss's auxiliary term from the blocks' `aux` outputs (MoE load
        balancing), already weighted; None when the family has none."""
        return None

    def router_outputs(self, aux: dict, attention_mask) -> tuple[tuple[jax.Array, ...], jax.Array]:
        """`(router_logits, aux_loss)` for `output_router_logits=True`: each MoE layer's router
        logits and HF's (unweighted) load-balancing loss. Mixture-of-experts families only."""
        raise ValueError(f"output_router_logits=True: {type(self).__name__} has no router (no mixture of experts)")

    # --- the model ---
    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.token_embedder = Embed(cfg.vocab_size, cfg.hidden_size,
                                    embedding_init=nn.initializers.normal(cfg.initializer_range), **kw)
        self.decoder = Decoder(cfg, blocks=self.blocks(), final_norm=self.final_norm(), **self.runtime())
        if not cfg.tie_word_embeddings:
            self.logits_dense = DenseGeneral(cfg.vocab_size, kernel_axes=("embed", "vocab"), use_bias=False,
                                             kernel_init=default_kernel_init(cfg.initializer_range), **kw)

    def __call__(self, input_ids, attention_mask=None, positions=None, cache: KVCache | None = None,
                 train: bool = False, return_hidden_states: bool = False, output_router_logits: bool = False,
                 logits_to_keep: int = 0):
        """`logits_to_keep` (HF's): logits of the last that many positions only (0: all), as
        generation's prefill wants one position, not a `[B, T, V]` array."""
        if not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int >= 0 (0: every position), got {logits_to_keep!r}")
        h, per_layer, cache, aux = self.hidden(input_ids, attention_mask, positions, cache, train,
                                               return_hidden_states)
        logits = self.logits(h[:, -logits_to_keep:] if logits_to_keep else h)
        if not (return_hidden_states or output_router_logits):
            return logits if cache is None else (logits, cache)
        out = CausalLMOutput(logits=logits, last_hidden_state=h, hidden_states=per_layer, cache=cache, aux=aux)
        if output_router_logits:
            router_logits, aux_loss = self.router_outputs(aux, attention_mask)
            out = out.replace(router_logits=router_logits, aux_loss=aux_loss)
        return out

    def hidden(self, input_ids, attention_mask=None, positions=None, cache: KVCache | None = None,
               train: bool = False, collect: bool = False):
        """`(final normed hidden states, per-layer states or None, cache or None, aux)`."""
        cfg = self.config
        check_token_ids(input_ids, cfg.vocab_size)
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        if attention_mask.shape != (b, t):
            raise ValueError(f"attention_mask has shape {attention_mask.shape}, input_ids {input_ids.shape}: "
                             f"they must match")
        attention_mask = attention_mask.astype(bool)
        layer_types = cfg.layer_kinds()
        kinds = tuple(dict.fromkeys(layer_types))
        own = Own(kind=np.asarray([kinds.index(k) for k in layer_types], np.int32),
                  layer=np.arange(cfg.num_hidden_layers, dtype=np.int32))
        if cache is None:
            positions = positions_from_mask(attention_mask) if positions is None else positions
            key_valid, index, fresh = attention_mask, None, True
        else:
            cache.check_fits(t)
            if positions is None:
                positions = positions_from_mask(attention_mask, cache.mask.sum(-1, keepdims=True, dtype=jnp.int32))
            key_valid, index, fresh = cache.written_mask(attention_mask), cache.index, cache.empty
            own = own.replace(keys=cache.keys, values=cache.values)
            if fresh:  # the prefill attends over its own keys: their validity is the prompt's
                key_valid = attention_mask
        shared = Shared(positions=positions, key_valid=key_valid, rotary=self.rotary(positions, kinds), index=index,
                        kinds=kinds, windows=tuple(cfg.window(k) for k in kinds), deterministic=not train,
                        fresh=fresh)
        x = constrain(self.embed_dropout(self.embed(input_ids, positions), not train), ACT_EMBED)
        h, out = self.decoder(x, shared, own, collect)
        if cache is not None:
            cache = cache.advance(out.keys, out.values, cache.written_mask(attention_mask), t)
        per_layer = None
        if collect:  # HF's hidden_states: the embeddings, each block's output, the last one normed
            per_layer = (x, *list(out.hidden)[:-1], h)
        return h, per_layer, cache, out.aux

    # --- the layout generation's decode steps read ---
    def decoding(self) -> CausalLM:
        """The module generation's decode steps run: a scanned model's layers unstacked.

        Under `nn.scan` each step slices every layer's weights out of the stacked arrays inside
        the loop, and XLA materialises the slices: a copy of the model per token (on CPU a
        336M-parameter Llama decoded 3x slower scanned than looped). Unstacked once per call
        (`decoding_variables`), a step reads each weight where it lies, at the cost of the
        weights' size in memory while generation runs. The prefill keeps the scanned layout: it
        reads each weight once for many tokens, and compiles one layer, not all."""
        return self.clone(scan=False) if self.scan else self

    def decoding_variables(self, variables) -> dict:
        """`variables` in `decoding()`'s layout."""
        return scan_to_loop(nn.meta.unbox(variables)) if self.scan else variables

    def init_cache(self, batch: int, length: int, dtype: Any = None) -> KVCache:
        """An empty cache for `batch` rows of up to `length` tokens (prompt + generated)."""
        cfg = self.config
        return KVCache.zeros(cfg.num_hidden_layers, batch, length, cfg.num_key_value_heads, cfg.head_dim,
                             dtype or self.dtype)
