"""Rotary position embeddings: the rotation (HF's `rotate_half` form), the decoders' frequencies
for HF's `rope_type`s `default`, `linear`, `dynamic`, `yarn`, `llama3` (transformers'
`modeling_rope_utils.py` is the reference, value for value), and DINOv3's 2-D patch frequencies.

`Rope` holds a config's rope parameters, read from transformers 5's `rope_parameters` or from
the `rope_theta` + `rope_scaling` keys that hub configs still carry, and written back as
`rope_parameters`. The inverse frequencies are computed in float32 as PyTorch computes them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# The keys each rope_type reads (besides rope_type and rope_theta); anything else is an error.
_KEYS: dict[str, frozenset[str]] = {
    "default": frozenset(),
    "linear": frozenset({"factor"}),
    "dynamic": frozenset({"factor"}),
    "yarn": frozenset({"factor", "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
                       "original_max_position_embeddings", "truncate"}),
    "llama3": frozenset({"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}),
}
ROPE_TYPES = tuple(_KEYS)


@dataclasses.dataclass(frozen=True)
class Rope:
    """A config's rotary embedding: `rope_type`, `rope_theta` and the type's own parameters
    (`params`, sorted `(key, value)` pairs so that configs stay hashable)."""

    rope_type: str = "default"
    rope_theta: float = 10000.0
    params: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if self.rope_type not in _KEYS:
            raise ValueError(f"unknown rope_type {self.rope_type!r}; supported: {ROPE_TYPES}")
        unknown = sorted(set(dict(self.params)) - _KEYS[self.rope_type])
        if unknown:
            raise ValueError(f"rope_type {self.rope_type!r} does not take {unknown}; it reads "
                             f"{sorted(_KEYS[self.rope_type])}")
        required = {"linear": {"factor"}, "dynamic": {"factor"}, "yarn": {"factor"},
                    "llama3": {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"},
                    }.get(self.rope_type, set())
        missing = sorted(required - set(dict(self.params)))
        if missing:
            raise ValueError(f"rope_type {self.rope_type!r} needs {missing}")

    @classmethod
    def from_hf(cls, hf: dict[str, Any], default_theta: float = 10000.0) -> Rope:
        """From a config.json dict: `rope_parameters` (transformers 5) or `rope_theta` +
        `rope_scaling` (with `type` or `rope_type`; older files). With both, `rope_scaling` wins
        and `rope_parameters` is not read, its theta included (transformers'
        `convert_rope_params_to_dict`). Consumes those keys from `hf`."""
        params = hf.pop("rope_parameters", None)
        theta = hf.pop("rope_theta", None)
        scaling = hf.pop("rope_scaling", None)
        if scaling:  # transformers reads `rope_scaling` over `rope_parameters` when a file has both
            params = scaling
        params = dict(params or {})
        if "layer_types" in hf and params and all(isinstance(v, dict) for v in params.values()):
            raise ValueError("per-layer-type rope_parameters are not supported by this model family")
        rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
        params.pop("type", None)
        theta = params.pop("rope_theta", theta)
        if params.pop("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("partial_rotary_factor != 1 is not supported by this model family (HF's "
                             "rotary application in these families rotates the whole head)")
        if rope_type == "default":
            params.pop("factor", None)  # some hub files carry a factor that "default" ignores
        return cls(rope_type, float(default_theta if theta is None else theta), tuple(sorted(params.items())))

    def to_hf(self) -> dict[str, Any]:
        return {"rope_parameters": {"rope_type": self.rope_type, "rope_theta": self.rope_theta, **dict(self.params)}}

    def inv_freq(self, head_dim: int, max_position_embeddings: int) -> tuple[np.ndarray, float]:
        """`(inverse frequencies [head_dim // 2] float32, attention factor)` as HF computes them
        at load time (dynamic's frequencies change with the sequence: see `rotary_embedding`)."""
        p, base, dim = dict(self.params), self.rope_theta, head_dim
        exponent = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
        inv_freq = (np.float32(1.0) / (np.float32(base) ** exponent)).astype(np.float32)
        if self.rope_type == "linear":
            return (inv_freq / np.float32(p["factor"])).astype(np.float32), 1.0
        if self.rope_type == "llama3":
            return _llama3(inv_freq, p), 1.0
        if self.rope_type == "yarn":
            return _yarn(base, dim, p, max_position_embeddings)
        return inv_freq, 1.0


def _llama3(inv_freq: np.ndarray, p: dict) -> np.ndarray:
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > old_len / low, inv_freq / np.float32(factor), inv_freq).astype(np.float32)
    smooth = ((np.float32(old_len) / wavelen - np.float32(low)) / np.float32(high - low)).astype(np.float32)
    smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _yarn(base: float, dim: int, p: dict, max_position_embeddings: int) -> tuple[np.ndarray, float]:
    factor = p["factor"]
    original = p.get("original_max_position_embeddings") or max_position_embeddings
    if factor is None:
        factor = max_position_embeddings / original

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = float(mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"]))
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # HF's guard against a zero-width ramp
    pos_freqs = np.float32(base) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim))
    extrapolation = np.float32(1.0) / pos_freqs
    interpolation = np.float32(1.0) / (np.float32(factor) * pos_freqs)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
    keep = (1 - ramp).astype(np.float32)
    return (interpolation * (1 - keep) + extrapolation * keep).astype(np.float32), float(attention_factor)


def frequencies(rope: Rope, positions: jax.Array, head_dim: int, max_position_embeddings: int) -> tuple[jax.Array, float]:
    """The inverse frequencies and attention factor a call with these `positions` uses.

    "dynamic" recomputes its base from the longest position in the call, as HF does on every
    forward (`dynamic_rope_update`): beyond `max_position_embeddings` it stretches the base,
    within it it keeps the load-time ("default") frequencies.
    """
    inv_freq, attention_factor = rope.inv_freq(head_dim, max_position_embeddings)
    inv_freq = jnp.asarray(inv_freq)
    if rope.rope_type == "dynamic":
        factor = dict(rope.params)["factor"]
        seq_len = jnp.maximum(positions.max() + 1, max_position_embeddings).astype(jnp.float32)
        base = rope.rope_theta * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (
            head_dim / (head_dim - 2))
        exponent = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
        inv_freq = jnp.where(seq_len > max_position_embeddings, 1.0 / (base ** exponent), inv_freq)
    return inv_freq, attention_factor


def rotary_embedding(rope: Rope, positions: jax.Array, head_dim: int,
                     max_position_embeddings: int) -> tuple[jax.Array, jax.Array]:
    """`(cos, sin)`, each `[B, T, head_dim]` float32, for integer `positions [B, T]`."""
    inv_freq, attention_factor = frequencies(rope, positions, head_dim, max_position_embeddings)
    freqs = positions[..., None].astype(jnp.float32) * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb) * attention_factor, jnp.sin(emb) * attention_factor


def rotate_half(x: jax.Array) -> jax.Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate `x [B, T, heads, head_dim]` in its dtype, as HF does. `cos`, `sin`: `[B, T, head_dim]`
    (a decoder's per-row positions), or `[P, head_dim]` for the last `P` tokens only (image
    patches; the `T - P` tokens before them, a class token and registers, stay as they are)."""
    if cos.ndim == 3:
        cos, sin = (a[:, :, None, :].astype(x.dtype) for a in (cos, sin))
        return x * cos + rotate_half(x) * sin
    p = cos.shape[0]
    prefix, tokens = x[:, : x.shape[1] - p], x[:, x.shape[1] - p:]
    cos, sin = (a.astype(x.dtype)[None, :, None, :] for a in (cos, sin))
    return jnp.concatenate([prefix, tokens * cos + rotate_half(tokens) * sin], axis=1)


def patch_centers(grid_h: int, grid_w: int) -> np.ndarray:
    """`(grid_h * grid_w, 2)` float32 `(y, x)` patch centres in [-1, 1], row-major, as HF's
    `get_patches_center_coordinates` computes them."""
    ys = np.arange(0.5, grid_h, dtype=np.float32) / np.float32(grid_h)
    xs = np.arange(0.5, grid_w, dtype=np.float32) / np.float32(grid_w)
    coords = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    return np.float32(2.0) * coords - np.float32(1.0)


def patch_rope(coords: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """`(cos, sin)`, each `[P, head_dim]` float32, for patch coordinates `[P, 2]`
    (HF `DINOv3ViTRopePositionEmbedding`): `head_dim / 4` frequencies per axis, the y angles
    then the x angles, the whole repeated twice to pair with `rotate_half`."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head_dim divisible by 4, got {head_dim}")
    # HF: 1 / theta ** torch.arange(0, 1, 4 / head_dim) in float32.
    exponents = (np.arange(head_dim // 4, dtype=np.float64) * (4 / head_dim)).astype(np.float32)
    inv_freq = np.float32(1) / np.power(np.float32(theta), exponents)
    angles = np.float32(2 * math.pi) * coords[:, :, None] * inv_freq[None, None, :]
    angles = jnp.tile(angles.reshape(angles.shape[0], -1), (1, 2))
    return jnp.cos(angles), jnp.sin(angles)
