"""Text generation for the decoder LMs: a prefill and a decode loop compiled once, HF's sampling
filters value for value, and a streaming form.

    out = jimm_linen.generate(module, variables, input_ids, attention_mask, max_new_tokens=32)
    out.sequences                    # [B, T + 32]: the prompt, then the new tokens
    for tokens in jimm_linen.generation.stream(module, variables, input_ids, max_new_tokens=32):
        ...                          # [B] numpy ids, one step at a time

Generation knows only the model contract (`module.apply(variables, ids, mask, cache=cache)` ->
`(logits, cache)`, `module.init_cache`, `module.config`, and `module.decoding()` /
`decoding_variables(variables)`: the layout its decode steps read), never a family.

The filters are transformers' logits processors (`generation/logits_process.py`) in the order
`GenerationMixin._get_logits_processor` applies them: repetition penalty (also when greedy),
then, when sampling, temperature, top-k, top-p, min-p. Each takes its setting as a traced value,
so changing temperature, top-k, top-p, min-p, the penalty, `do_sample`, the pad id or the EOS
ids (same count) reuses the compiled program.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, PartitionSpec

from jimm_linen.layers.kv_cache import KVCache
from jimm_linen.models.decoder import check_token_ids
from jimm_linen.outputs import GenerationOutput

# transformers' own fallbacks (`GenerationConfig._get_default_generation_params`) for what
# neither the call nor the checkpoint's generation_config.json sets. top_k 50 is HF's, so a
# sampled call draws from the distribution HF's `generate` draws from; min_p 0 keeps every token
# (HF adds no min-p processor then).
HF_DEFAULTS: dict[str, Any] = dict(do_sample=False, temperature=1.0, top_k=50, top_p=1.0, min_p=0.0,
                                   repetition_penalty=1.0)


# --- the filters (each one of HF's logits processors) ------------------------------------------

def apply_repetition_penalty(logits: jax.Array, seen: jax.Array, penalty) -> jax.Array:
    """HF's `RepetitionPenaltyLogitsProcessor`: where `seen [B, V]` (the token occurs in the
    sequence so far), a negative logit is multiplied by `penalty`, any other divided by it."""
    return jnp.where(seen, jnp.where(logits < 0, logits * penalty, logits / penalty), logits)


def seen_tokens(input_ids: jax.Array, mask: jax.Array, vocab_size: int) -> jax.Array:
    """`[B, V]`: the token occurs in the row's prompt. Like HF's penalty (`prompt_ignore_length`),
    the left padding does not count."""
    rows = jnp.arange(input_ids.shape[0])[:, None]
    ids = jnp.where(mask, input_ids, vocab_size)  # padded slots point past the vocabulary: dropped
    return jnp.zeros((input_ids.shape[0], vocab_size), bool).at[rows, ids].set(True, mode="drop")


def apply_temperature(logits: jax.Array, temperature) -> jax.Array:
    """HF's `TemperatureLogitsWarper`."""
    return logits / temperature


def top_k_filter(logits: jax.Array, top_k, min_tokens_to_keep: int = 1) -> jax.Array:
    """HF's `TopKLogitsWarper`: -inf below the k-th largest logit, k = max(top_k,
    min_tokens_to_keep) (ties with the k-th are kept, so more than k may stay). `top_k` may be
    traced; 0 is not "off" here (generation skips the filter for 0, as HF does)."""
    v = logits.shape[-1]
    k = jnp.clip(jnp.maximum(jnp.asarray(top_k, jnp.int32), min_tokens_to_keep), 1, v)
    index = jnp.broadcast_to(v - k, (*logits.shape[:-1], 1))
    kth = jnp.take_along_axis(jnp.sort(logits, axis=-1), index, axis=-1)
    return jnp.where(logits < kth, -jnp.inf, logits)


def _one_minus(top_p):
    # HF compares float32 cumulative probabilities with `1 - top_p` computed in Python (double),
    # rounded to float32; doing the subtraction in float32 would move the cut by an ulp.
    if isinstance(top_p, (int, float, np.integer, np.floating)):
        return np.float32(1.0 - float(top_p))
    return 1 - top_p


def top_p_filter(logits: jax.Array, top_p, min_tokens_to_keep: int = 1) -> jax.Array:
    """HF's `TopPLogitsWarper` (nucleus): sort ascending, drop the tokens whose cumulative
    probability is <= 1 - top_p, always keeping the `min_tokens_to_keep` most likely.

    Equal logits across the cut: the sort is stable, so the lower index is dropped first, as HF
    does with `torch.sort(stable=True)`. torch's default sort orders equal values arbitrarily,
    so HF may keep another of the equal tokens: as many of them, of the same value."""
    return _top_p_cut(logits, _one_minus(top_p), min_tokens_to_keep)


def _top_p_cut(logits, cut, min_tokens_to_keep: int):
    order = jnp.argsort(logits, axis=-1, stable=True)
    cumulative = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1), axis=-1)
    drop = cumulative <= cut
    drop = drop.at[..., logits.shape[-1] - min_tokens_to_keep:].set(False)
    drop = jnp.put_along_axis(drop, order, drop, axis=-1, inplace=False)
    return jnp.where(drop, -jnp.inf, logits)


def min_p_filter(logits: jax.Array, min_p, min_tokens_to_keep: int = 1) -> jax.Array:
    """HF's `MinPLogitsWarper`: drop the tokens less likely than `min_p` times the most likely
    one, always keeping the `min_tokens_to_keep` most likely (among equal ones the lower index,
    as `torch.topk` on a stable sort)."""
    probs = jax.nn.softmax(logits, axis=-1)
    drop = probs < min_p * probs.max(axis=-1, keepdims=True)
    if min_tokens_to_keep > 1:
        _, keep = jax.lax.top_k(probs, min(min_tokens_to_keep, logits.shape[-1]))
        drop = jnp.put_along_axis(drop, keep, False, axis=-1, inplace=False)
    return jnp.where(drop, -jnp.inf, logits)


# --- settings ----------------------------------------------------------------------------------

@flax.struct.dataclass
class Sampling:
    """The settings of one generation as arrays (traced: changing a value does not recompile).
    `top_p_cut` is `1 - top_p` as HF computes it; `eos` holds the EOS ids (-1 for none)."""

    do_sample: Any
    temperature: Any
    top_k: Any
    top_p_cut: Any
    min_p: Any
    repetition_penalty: Any
    eos: Any
    pad: Any


def process_logits(logits: jax.Array, seen: jax.Array, s: Sampling) -> jax.Array:
    """The filters in HF's order, each skipped (not computed) where HF adds no processor."""
    logits = apply_repetition_penalty(logits, seen, s.repetition_penalty)

    def skip(x):
        return x

    def warp(x):
        x = apply_temperature(x, s.temperature)
        x = jax.lax.cond(s.top_k != 0, lambda y: top_k_filter(y, s.top_k), skip, x)
        x = jax.lax.cond(s.top_p_cut > 0, lambda y: _top_p_cut(y, s.top_p_cut, 1), skip, x)
        return jax.lax.cond(s.min_p > 0, lambda y: min_p_filter(y, s.min_p), skip, x)

    return jax.lax.cond(s.do_sample, warp, skip, logits)


def next_token(logits: jax.Array, seen: jax.Array, s: Sampling, key: jax.Array) -> jax.Array:
    """The next token of each row: argmax of the processed logits (greedy; the first on ties, as
    torch's argmax) or a draw from their softmax."""
    scores = process_logits(logits, seen, s)
    return jax.lax.cond(s.do_sample, lambda x: jax.random.categorical(key, x, axis=-1),
                        lambda x: jnp.argmax(x, axis=-1), scores).astype(jnp.int32)


def _as_ids(value, what: str) -> tuple[int, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{what} must be an int or a list of ints, got {value!r}")
    return tuple(int(v) for v in values)


def resolve_settings(config, *, do_sample=None, temperature=None, top_k=None, top_p=None, min_p=None,
                     repetition_penalty=None, eos_token_id=None, pad_token_id=None) -> dict[str, Any]:
    """Each setting as HF's `generate` picks it: the argument when given (not None), else the
    checkpoint's generation_config.json (`config.generation`), else (token ids) `config.json`,
    else `HF_DEFAULTS`. Without a pad id the first EOS id pads, as in HF. Checks the ranges."""
    gen = dict(config.generation)
    given = dict(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                 repetition_penalty=repetition_penalty)
    out = {k: v if v is not None else gen[k] if gen.get(k) is not None else HF_DEFAULTS[k] for k, v in given.items()}
    if eos_token_id is None:
        eos = config.eos_token_ids
    else:
        eos = _as_ids(eos_token_id, "eos_token_id")
    vocab = config.vocab_size
    bad = [e for e in eos if not 0 <= e < vocab]
    if bad:
        raise ValueError(f"eos_token_id {bad} outside the vocabulary [0, {vocab})")
    if pad_token_id is None:
        pad_token_id = gen.get("pad_token_id", config.pad_token_id)
    if pad_token_id is None:
        pad_token_id = eos[0] if eos else 0  # with no EOS no row stops, so no slot is ever padded
    if not isinstance(pad_token_id, (int, np.integer)) or isinstance(pad_token_id, bool):
        raise ValueError(f"pad_token_id must be an int, got {pad_token_id!r}")

    if not isinstance(out["do_sample"], (bool, np.bool_)):
        raise ValueError(f"do_sample must be a bool, got {out['do_sample']!r}")
    if not isinstance(out["top_k"], (int, np.integer)) or isinstance(out["top_k"], bool) or out["top_k"] < 0:
        raise ValueError(f"top_k must be an int >= 0 (0: no top-k filter), got {out['top_k']!r}")
    for name, lo, hi in (("top_p", 0.0, 1.0), ("min_p", 0.0, 1.0)):
        if not isinstance(out[name], (int, float, np.number)) or not lo <= out[name] <= hi:
            raise ValueError(f"{name} must be a float in [{lo}, {hi}], got {out[name]!r}")
    if not isinstance(out["repetition_penalty"], (int, float, np.number)) or not out["repetition_penalty"] > 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0: none), got {out['repetition_penalty']!r}")
    if not isinstance(out["temperature"], (int, float, np.number)):
        raise ValueError(f"temperature must be a float, got {out['temperature']!r}")
    if out["do_sample"] and not out["temperature"] > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {out['temperature']} (it divides the logits; "
                         f"for greedy decoding pass do_sample=False)")
    return dict(out, eos_token_id=eos, pad_token_id=int(pad_token_id))


def sampling_arrays(settings: dict[str, Any]) -> Sampling:
    """`resolve_settings`' result as the traced `Sampling` (numpy arrays: no device op here)."""
    sample = bool(settings["do_sample"])
    eos = settings["eos_token_id"] or (-1,)
    return Sampling(
        do_sample=np.asarray(sample),
        # Greedy ignores the warpers (HF adds none); 1.0 keeps a temperature of 0 out of the program.
        temperature=np.float32(settings["temperature"] if sample else 1.0),
        top_k=np.int32(settings["top_k"]), top_p_cut=_one_minus(settings["top_p"]),
        min_p=np.float32(settings["min_p"]), repetition_penalty=np.float32(settings["repetition_penalty"]),
        eos=np.asarray(eos, np.int32), pad=np.int32(settings["pad_token_id"]))


# --- input checks -------------------------------------------------------------------------------

def check_prompt(config, input_ids, attention_mask, max_new_tokens) -> tuple[np.ndarray, np.ndarray]:
    """The prompt and its mask as int32 / bool numpy arrays, or a ValueError naming the problem:
    ids outside the vocabulary, a mask of another shape, a row without tokens, a batch that is
    not left-padded, more positions than `max_position_embeddings`."""
    if isinstance(input_ids, jax.core.Tracer) or isinstance(attention_mask, jax.core.Tracer):
        raise ValueError("generate takes concrete arrays (call it outside jit: it compiles its own program)")
    if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    ids = np.asarray(input_ids)
    check_token_ids(ids, config.vocab_size)
    if ids.shape[1] == 0:
        raise ValueError("input_ids has no tokens (shape [batch, 0]); give a prompt of at least one token")
    if attention_mask is None:
        mask = np.ones(ids.shape, bool)
    else:
        mask = np.asarray(attention_mask)
        if mask.shape != ids.shape:
            raise ValueError(f"attention_mask has shape {mask.shape}, input_ids {ids.shape}: they must match")
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("attention_mask must hold 0 / 1 (or False / True)")
        mask = mask.astype(bool)
    for row in range(mask.shape[0]):
        m = mask[row]
        if not m.any():
            raise ValueError(f"attention_mask row {row} has no tokens")
        if (m[1:] < m[:-1]).any():
            kind = "right-padded (padding after its tokens)" if (m[1:] <= m[:-1]).all() else "padded between tokens"
            raise ValueError(f"attention_mask row {row} is {kind}: new tokens go after the last column, so the batch "
                             f"must be left-padded (tokenizer.padding_side = 'left')")
    longest = int(mask.sum(axis=1).max())
    limit = config.max_position_embeddings
    if longest + max_new_tokens > limit and not config.extrapolates:
        raise ValueError(f"the longest prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) = "
                         f"{longest + max_new_tokens} positions exceed max_position_embeddings ({limit}) of the "
                         f"config (only a model made to extrapolate past it, such as rope_type 'dynamic', may)")
    return ids.astype(np.int32), mask


# --- the compiled pieces ------------------------------------------------------------------------

@flax.struct.dataclass
class _State:
    cache: KVCache
    sequences: jax.Array  # [B, T + max_new_tokens]
    pos: jax.Array        # the next slot of `sequences` to write
    step: jax.Array       # tokens chosen so far
    last: jax.Array       # [B] the model's last choice (fed back; a finished row's is never shown)
    done: jax.Array       # [B] the row produced an EOS
    num_new: jax.Array    # [B]
    seen: jax.Array       # [B, V] the token occurs in the row (for the repetition penalty)
    rng: jax.Array


def _choose(state: _State, logits: jax.Array, s: Sampling) -> _State:
    token = next_token(logits, state.seen, s, jax.random.fold_in(state.rng, state.step))
    shown = jnp.where(state.done, s.pad, token)
    rows = jnp.arange(token.shape[0])
    return state.replace(
        sequences=jax.lax.dynamic_update_slice_in_dim(state.sequences, shown[:, None], state.pos, axis=1),
        pos=state.pos + 1, step=state.step + 1, last=token, done=state.done | jnp.isin(token, s.eos),
        num_new=state.num_new + (~state.done).astype(jnp.int32), seen=state.seen.at[rows, token].set(True))


def _start(module, variables, input_ids, mask, s: Sampling, rng, max_new_tokens: int) -> _State:
    """Prefill the prompt into a fresh cache and choose the first token. The state holds the
    cache a layer per buffer, as the decode steps run it (`_advance`)."""
    b, t = input_ids.shape
    vocab = module.config.vocab_size
    cache = module.init_cache(b, t + max_new_tokens)
    logits, cache = module.apply(variables, input_ids, mask, cache=cache, logits_to_keep=1)
    seen = seen_tokens(input_ids, mask, vocab)
    sequences = jnp.full((b, t + max_new_tokens), s.pad, jnp.int32).at[:, :t].set(input_ids)
    zeros = jnp.zeros((b,), jnp.int32)
    state = _State(cache=cache.per_layer(), sequences=sequences, pos=jnp.int32(t), step=jnp.int32(0), last=zeros,
                   done=jnp.zeros((b,), bool), num_new=zeros, seen=seen, rng=rng)
    return _choose(state, logits[:, -1], s)


def _advance(module, variables, state: _State, s: Sampling) -> _State:
    """One decode step: the last token through the cache, then the next choice. `module` runs
    its layers in a loop (`module.decoding()`), each over its own cache buffer."""
    ones = jnp.ones((state.last.shape[0], 1), bool)
    logits, cache = module.apply(variables, state.last[:, None], ones, cache=state.cache)
    return _choose(state.replace(cache=cache), logits[:, -1], s)


def _on_auto_axes(rules):
    """Run the decorated program body under the caller's logical-axis rules, and, inside a mesh
    whose axes are Explicit (`jax.make_mesh`'s default), with those axes made Auto: Linen's
    sharding constraints and the cache writes are Auto-mode code (under Explicit axes they
    raise `ShardingTypeError`), and parameters placed by the rules carry Auto shardings. The
    outputs come back replicated there."""
    def wrap(body):
        def run(*args):
            mesh = jax.sharding.get_abstract_mesh()
            explicit = () if mesh.empty else tuple(
                name for name, kind in zip(mesh.axis_names, mesh.axis_types) if kind == AxisType.Explicit)

            def ruled(*a):
                with nn.logical_axis_rules(rules):
                    return body(*a)

            if not explicit:
                return ruled(*args)
            return jax.sharding.auto_axes(ruled, axes=explicit, out_sharding=PartitionSpec())(*args)
        return run
    return wrap


@functools.partial(jax.jit, static_argnames=("module", "max_new_tokens", "rules"))
def _generate(module, variables, input_ids, mask, s: Sampling, rng, *, max_new_tokens: int, rules):
    # The cache is created here and updated in place by the loop: it never leaves the program.
    @_on_auto_axes(rules)
    def body(variables, input_ids, mask, s, rng):
        state = _start(module, variables, input_ids, mask, s, rng, max_new_tokens)
        stepper, unstacked = module.decoding(), module.decoding_variables(variables)
        state = jax.lax.while_loop(lambda st: (st.step < max_new_tokens) & ~st.done.all(),
                                   lambda st: _advance(stepper, unstacked, st, s), state)
        return GenerationOutput(sequences=state.sequences, finished=state.done, num_new_tokens=state.num_new)

    return body(variables, input_ids, mask, s, rng)


def _shown(state: _State):
    return state, state.sequences[:, state.pos - 1], state.done.all()


@functools.partial(jax.jit, static_argnames=("module", "max_new_tokens", "rules"))
def _stream_start(module, variables, input_ids, mask, s: Sampling, rng, *, max_new_tokens: int, rules):
    """The prefill's state and first tokens, and the variables the decode steps read."""
    def start(variables, *args):
        return _shown(_start(module, variables, *args, max_new_tokens)), module.decoding_variables(variables)

    return _on_auto_axes(rules)(start)(variables, input_ids, mask, s, rng)


@functools.partial(jax.jit, static_argnames=("module", "rules"), donate_argnames=("state",))
def _stream_step(module, variables, state: _State, s: Sampling, *, rules):
    return _on_auto_axes(rules)(lambda *a: _shown(_advance(module, *a)))(variables, state, s)


# --- the API ------------------------------------------------------------------------------------

_DEFAULT_KEY: list = []


def _key(rng):
    if rng is None:
        if not _DEFAULT_KEY:
            _DEFAULT_KEY.append(jax.random.key(0))
        return _DEFAULT_KEY[0]
    if isinstance(rng, (int, np.integer)):
        return jax.random.key(int(rng))
    return rng


def _prepare(module, input_ids, attention_mask, max_new_tokens, rng, settings):
    config = getattr(module, "config", None)
    if not hasattr(module, "init_cache") or config is None or not hasattr(config, "eos_token_ids"):
        raise TypeError(f"generate needs a decoder LM (a jimm_linen CausalLM), got {type(module).__name__}")
    ids, mask = check_prompt(config, input_ids, attention_mask, max_new_tokens)
    s = sampling_arrays(resolve_settings(config, **settings))
    if config.generation:  # resolved above: checkpoints that differ only there share the program
        module = module.clone(config=dataclasses.replace(config, generation=()))
    # The caller's logical-axis rules shape the traced program, so they key the compile cache.
    rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes)
                  for name, axes in nn.get_logical_axis_rules())
    return module, ids, mask, s, _key(rng), rules


def generate(module: nn.Module, variables, input_ids, attention_mask=None, *, max_new_tokens: int,
             do_sample: bool | None = None, temperature: float | None = None, top_k: int | None = None,
             top_p: float | None = None, min_p: float | None = None, repetition_penalty: float | None = None,
             eos_token_id: int | Sequence[int] | None = None, pad_token_id: int | None = None,
             rng: jax.Array | int | None = None) -> GenerationOutput:
    """Continue each prompt row by up to `max_new_tokens` tokens, as HF's `generate`.

    `input_ids [B, T]` int; `attention_mask [B, T]` (1 = token) for a left-padded batch (positions
    come from the mask, as in HF). A right-padded batch is refused with an error (tokens would be
    appended after its padding); tokenize with `padding_side="left"`.

    Settings left None take the checkpoint's `generation_config.json` (`module.config.generation`),
    then `config.json` (token ids), then HF's own defaults: greedy, temperature 1, top_k 50 (as
    HF; 0 turns top-k off), top_p 1, min_p 0, repetition_penalty 1; the first EOS id pads when
    there is no pad id. `eos_token_id` may be a list (Llama 3 Instruct; `[]`: no EOS, every row
    runs `max_new_tokens`); a row stops at its first EOS and is padded with `pad_token_id` after
    it. `rng` (a key or an int seed; default key 0) makes sampling reproducible.

    One compiled program runs the prefill and a `lax.while_loop` of decode steps that stops when
    every row has produced an EOS. It is compiled once per module, shapes, `max_new_tokens` and
    number of EOS ids; every other setting is a traced value. The KV cache of `T +
    max_new_tokens` slots is created inside it and updated in place. Called under
    `nn.logical_axis_rules(...)` (and a mesh), the model's constraints follow those rules.

    Errors: ids outside the vocabulary, a mask of another shape or not left-padded, prompt +
    `max_new_tokens` beyond `max_position_embeddings` (rope_type "dynamic", which exists to
    extrapolate, is let through, as HF does), `temperature <= 0` when sampling, top_k < 0,
    top_p or min_p outside [0, 1], repetition_penalty <= 0.
    """
    module, ids, mask, s, key, rules = _prepare(module, input_ids, attention_mask, max_new_tokens, rng, dict(
        do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, eos_token_id=eos_token_id, pad_token_id=pad_token_id))
    return _generate(module, variables, ids, mask, s, key, max_new_tokens=max_new_tokens, rules=rules)


def stream(module: nn.Module, variables, input_ids, attention_mask=None, *, max_new_tokens: int,
           **settings: Any) -> Iterator[np.ndarray]:
    """`generate` one step at a time: yields each step's new token of every row (`[B]` numpy
    int32, `pad_token_id` for rows already finished) until every row is done or
    `max_new_tokens` were produced. Same keywords, same tokens as `generate`. Two programs
    (prefill, one decode step with its state donated) compile once; each step is dispatched
    before the previous step's tokens are handed out, so the device does not wait on the caller."""
    rng = settings.pop("rng", None)
    unknown = sorted(set(settings) - {"do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                                       "eos_token_id", "pad_token_id"})
    if unknown:
        raise TypeError(f"stream() got unexpected keywords {unknown}")
    module, ids, mask, s, key, rules = _prepare(module, input_ids, attention_mask, max_new_tokens, rng, settings)
    (state, tokens, finished), unstacked = _stream_start(module, variables, ids, mask, s, key,
                                                         max_new_tokens=max_new_tokens, rules=rules)
    stepper = module.decoding()
    for _ in range(max_new_tokens - 1):
        following = _stream_step(stepper, unstacked, state, s, rules=rules)
        out, stop = np.asarray(tokens), bool(finished)
        yield out
        if stop:
            return
        state, tokens, finished = following
    yield np.asarray(tokens)
