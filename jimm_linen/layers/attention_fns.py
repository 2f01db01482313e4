"""Attention backends behind the one `attention_fn` slot every model has.

An attention function takes `query [B, T, N, H]`, `key [B, S, K, H]`, `value [B, S, K, H]`
(K key/value heads, K dividing N: grouped-query attention, query head n reading key/value head
n // (N / K)), an optional boolean `mask` broadcastable to `[B, N, T, S]` (True = attend),
`is_causal` (the causal diagonal aligned to the last key, as with a KV cache), and tokamax's
keywords `scale` (default `H ** -0.5`), `logits_soft_cap` (`cap * tanh(logits / cap)` after the
scale, before the mask: Gemma 2) and `local_window_size` (`(left, right)`: query i sees keys
i - left .. i + right; HF's sliding window W is `(W - 1, 0)`), and returns `[B, T, N, H]`, like
`jax.nn.dot_product_attention`. A backend that cannot do what is asked raises
`NotImplementedError` with the reason, and a fallback list moves on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

AttentionFn = Callable[..., jax.Array]

log = logging.getLogger(__name__)

# Our backend name -> (tokamax implementation name, platforms it is meant for or None for any).
TOKAMAX_BACKENDS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "mosaic": ("mosaic", ("gpu", "cuda", "rocm")),
    "mosaic_tpu": ("mosaic", ("tpu",)),
    "triton": ("triton", None),
    "cudnn": ("cudnn", None),
    "xla_chunked": ("xla_chunked", None),
    "xla": ("xla", None),
    "auto": (None, None),  # tokamax's own choice for the device (its implementation=None)
}


def _window(local_window_size) -> tuple[int | None, int | None]:
    if local_window_size is None:
        return None, None
    if isinstance(local_window_size, int):
        return local_window_size, local_window_size
    return tuple(local_window_size)


def _combine_masks(mask, is_causal: bool, t: int, s: int, local_window_size=None):
    """The caller's mask and the causal / window rules on query i's key column `i + s - t`."""
    left, right = _window(local_window_size)
    if not is_causal and left is None:
        return mask
    q = jnp.arange(t)[:, None] + (s - t)
    k = jnp.arange(s)[None, :]
    rule = jnp.ones((t, s), bool)
    if is_causal:
        rule &= k <= q
    if left is not None:
        rule &= k >= q - left
    if right is not None:
        rule &= k <= q + right
    return rule if mask is None else jnp.logical_and(mask, rule)


@jax.custom_jvp
def softmax(x: jax.Array) -> jax.Array:
    """Softmax over the last axis with the same forward values as `jax.nn.softmax`.

    `jax.nn.softmax` is traced through unless the global `jax_softmax_custom_jvp` flag is on
    (off by default before jax 0.12, and a library must not flip it), so the backward pass keeps
    the unnormalised exponentials and their sums next to the probabilities: one more [B, N, T, S]
    tensor per layer. The stated derivative needs only the output; from jax 0.12 it is also
    `jax.nn.softmax`'s default.
    """
    unnormalized = jnp.exp(x - lax.stop_gradient(x.max(-1, keepdims=True)))
    return unnormalized / unnormalized.sum(-1, keepdims=True)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
    y = softmax(primals[0])
    t = tangents[0]
    return y, y * (t - (y * t).sum(-1, keepdims=True))


def dot_product_attention(query, key, value, mask=None, *, is_causal: bool = False, scale: float | None = None,
                          logits_soft_cap: float | None = None, local_window_size=None,
                          dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None):
    """Exact softmax attention; logits and softmax in float32 whatever the input dtype.

    `dropout_rate` / `dropout_rng` drop attention probabilities as HF does in training; only
    this default function supports that (a fused kernel never materialises the probabilities).
    """
    b, t, n, h = query.shape
    s, kv_heads = key.shape[1], key.shape[2]
    if n % kv_heads:
        raise ValueError(f"{n} query heads cannot share {kv_heads} key/value heads (it must divide)")
    groups = n // kv_heads
    scale = h ** -0.5 if scale is None else scale
    # Heads-major ([B, N, T, H]) throughout, one transpose back at the end: XLA:CPU runs
    # q.k^T, probs.v and their gradients as batched GEMMs on contiguous heads. Contracting a
    # [B, T, N, H] operand or writing a [B, T, N, H] result makes it transpose the [B, N, T, S]
    # probabilities or their gradient instead (1.2-1.5x slower forward + backward on a
    # ViT-B/16 block, measured on a 2-core Zen 4). The scale stays on the float32 logits, as
    # HF's eager attention applies it, so a bfloat16 query is never multiplied by a rounded scale.
    # Grouped-query attention without repeating keys and values: the query heads that share a
    # key/value head are folded into its rows ([B, K, G*T, H]), one batched GEMM per K head.
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (query, key, value))
    q = q.reshape(b, kv_heads, groups * t, h)
    logits = jnp.einsum("bkth,bksh->bkts", q, k, preferred_element_type=jnp.float32) * scale
    if logits_soft_cap is not None:
        logits = logits_soft_cap * jnp.tanh(logits / logits_soft_cap)
    mask = _combine_masks(mask, is_causal, t, s, local_window_size)
    if mask is not None:
        mask = jnp.asarray(mask)
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
        mask = jnp.broadcast_to(mask, (mask.shape[0], n, t, s)).reshape(mask.shape[0], kv_heads, groups * t, s)
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = softmax(logits)
    if dropout_rate > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    out = jnp.einsum("bkts,bksh->bkth", probs.astype(v.dtype), v).reshape(b, n, t, h)
    return jnp.swapaxes(out, 1, 2)


def _absl_flags_parsed() -> None:
    """tokamax reads its options through absl flags and, if nobody parsed them yet, parses
    `sys.argv` itself, which fails inside any program with its own arguments (pytest, our CLI).
    Marking them parsed keeps every flag at its default (or what the program already set)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_tokamax_attention(impls: str | Sequence[str] | None = None) -> AttentionFn:
    """Attention through tokamax, using the first backend in `impls` that runs here.

    `impls` is one name or an ordered list of "mosaic" (GPU), "mosaic_tpu", "triton", "cudnn",
    "xla_chunked", "xla", "auto" (tokamax picks for the device); None is "auto". The choice is made when the function is traced, because whether a
    kernel runs depends on the device, shapes and dtypes; if none runs, the error names each
    backend tried and why it refused.
    """
    import tokamax  # imported here so that models without tokamax attention never need it

    _absl_flags_parsed()
    names = ["auto"] if impls is None else [impls] if isinstance(impls, str) else list(impls)
    if not names:
        raise ValueError("make_tokamax_attention needs at least one backend name")
    unknown = [n for n in names if n not in TOKAMAX_BACKENDS]
    if unknown:
        raise ValueError(
            f"unknown attention backend(s) {unknown}; known: {sorted(TOKAMAX_BACKENDS)}"
        )

    def attention(query, key, value, mask=None, *, is_causal: bool = False, scale=None, logits_soft_cap=None,
                  local_window_size=None):
        platform = jax.default_backend()
        if scale is not None and not isinstance(scale, (int, float)):
            # tokamax takes a Python float: a traced scale (GPT-2's per-layer one under scan) goes
            # into the query, in float32.
            query, scale = (query.astype(jnp.float32) * scale).astype(query.dtype), 1.0
        refusals = []
        for name in names:
            impl, platforms = TOKAMAX_BACKENDS[name]
            if platforms is not None and platform not in platforms:
                refusals.append(f"{name}: meant for {'/'.join(platforms)}, this is {platform}")
                continue
            try:
                out = tokamax.dot_product_attention(
                    query, key, value, mask=mask, is_causal=is_causal, scale=scale, logits_soft_cap=logits_soft_cap,
                    local_window_size=local_window_size, implementation=impl)
            except NotImplementedError as e:
                refusals.append(f"{name}: {e}")
                continue
            log.debug("tokamax attention backend %r chosen (refused: %s)", name, refusals)
            return out
        raise RuntimeError(
            f"none of the attention backends {names} runs on {platform} for "
            f"query {query.shape} {query.dtype}: " + "; ".join(refusals)
        )

    attention.backends = tuple(names)
    return attention
