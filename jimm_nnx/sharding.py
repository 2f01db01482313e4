"""How a jimm_nnx model's parameters are laid out.

Two ways to say it, one placement underneath (`bridge.Placement`):

- jimm's per-model classes (`ViTSharding`, `CLIPSharding`, `SigLIPSharding`, `DINOv2Sharding`,
  `DINOv3Sharding`, `NoSharding`): frozen dataclasses with one PartitionSpec tuple per kind of
  parameter, exactly as the `jimm` library spells them. The FSDP ones split each large kernel
  on its contracting dimension over the "fsdp" mesh axis (attention q/k/v and MLP-up kernels
  on the hidden dim, MLP-down kernels on the MLP dim) and leave the attention-out kernel whole,
  so a batch sharded on "fsdp" never meets an output dim sharded on "fsdp". Each model class
  has one as its default. Activations keep the batch split over "data" (and "fsdp").
- `Sharding(rules, mesh)`: our logical-axis rule presets ("fsdp", "tp", "fsdp_tp", "ep",
  "replicated", or a table from `jimm_linen.partitioning.make_rules`), or a preset name.

Both take the mesh set with `jax.set_mesh` (inside `jit` too); with no mesh, nothing is sharded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import bridge

Spec = tuple[str | None, ...]


@dataclasses.dataclass(frozen=True)
class Sharding:
    """Parameters sharded by logical-axis `rules` (a `jimm_linen.partitioning` preset:
    "fsdp", "tp", "fsdp_tp", "ep", "replicated", one extended with `make_rules`, or a rule
    list) on `mesh`. `mesh=None` takes the mesh set with `jax.set_mesh` when the model is built;
    with no mesh, nothing is sharded."""

    rules: str | Sequence[tuple[str, Any]] = "fsdp"
    mesh: Mesh | None = None


@dataclasses.dataclass(frozen=True)
class ShardingSpec:
    """jimm's sharding specification: the mesh axes of each dim, per kind of parameter (per
    layer; a scanned `layers` axis stays whole). Subclass it, or `dataclasses.replace` one of
    the presets, to lay a model out differently.

    How the kinds meet this library's parameters (by their logical axis names):

        attn_qkv_kernel (hidden, heads, head_dim)   attn_qkv_bias (heads, head_dim)
        attn_out_kernel (heads, head_dim, hidden)    mlp_up_kernel (hidden, mlp)
        mlp_up_bias (mlp,)                           mlp_down_kernel (mlp, hidden)
        patch_conv_kernel (patch, patch, channels, hidden)
        embed (vocab, hidden)                        pos_embed_3d (1, positions, hidden)
        cls_token (1, 1, hidden)                     proj_kernel (hidden, out)   proj_bias (out,)
        layernorm (hidden,)

    Here every bias of width `hidden` (attention out, MLP down, patch embedding) is one kind of
    array with the LayerNorm vectors, and the MAP-head probe one with the class token, so those
    fields must agree (an error says which do not). The text tower's position table is 3-D
    here and follows `pos_embed_3d`; `pos_embed_2d`, `vision_pos_id`, `text_pos_embed`,
    `layer_scale` (and DINOv3's `register_tokens`) are kept for jimm's spelling and lay out a
    parameter only in a family whose arrays carry such names (see `SIGNATURES`).
    """

    attn_qkv_kernel: tuple[str | None, str | None, str | None] = (None, None, None)
    attn_qkv_bias: tuple[str | None, str | None] = (None, None)
    attn_out_kernel: tuple[str | None, str | None, str | None] = (None, None, None)
    attn_out_bias: tuple[str | None] = (None,)
    mlp_up_kernel: tuple[str | None, str | None] = (None, None)
    mlp_up_bias: tuple[str | None] = (None,)
    mlp_down_kernel: tuple[str | None, str | None] = (None, None)
    mlp_down_bias: tuple[str | None] = (None,)
    layernorm: tuple[str | None] = (None,)
    patch_conv_kernel: tuple[str | None, str | None, str | None, str | None] = (None, None, None, None)
    patch_conv_bias: tuple[str | None] = (None,)
    embed: tuple[str | None, str | None] = (None, None)
    pos_embed_3d: tuple[str | None, str | None, str | None] = (None, None, None)
    pos_embed_2d: tuple[str | None, str | None] = (None, None)
    vision_pos_id: tuple[str | None, str | None] = (None, None)
    text_pos_embed: tuple[str | None, str | None] = (None, None)
    cls_token: tuple[str | None, str | None, str | None] = (None, None, None)
    probe_token: tuple[str | None, str | None, str | None] = (None, None, None)
    proj_kernel: tuple[str | None, str | None] = (None, None)
    proj_bias: tuple[str | None] = (None,)
    layer_scale: tuple[str | None] = (None,)

    def layout(self) -> bridge.placement.Layout:
        """(logical names, mesh axes) for each kind of parameter, for `bridge.Placement`."""
        out: dict[tuple, tuple[str, Spec]] = {}
        for field, signatures in SIGNATURES.items():
            if not hasattr(self, field):
                continue
            spec = tuple(getattr(self, field))
            for names in signatures:
                if len(spec) != len(names):
                    raise ValueError(f"{type(self).__name__}.{field} = {spec}: {len(names)} dims expected "
                                     f"(logical names {names})")
                if names in out and out[names][1] != spec:
                    other = out[names][0]
                    raise ValueError(f"{type(self).__name__}: {other} = {out[names][1]} and {field} = {spec} "
                                     f"are one kind of parameter here (logical names {names}); give them "
                                     f"the same spec")
                out.setdefault(names, (field, spec))
        return tuple((names, spec) for names, (_, spec) in out.items())


# jimm's field -> the logical names of the parameters it lays out (see ShardingSpec). A family
# whose parameters carry other names adds them here.
SIGNATURES: dict[str, tuple[tuple[str | None, ...], ...]] = {
    "attn_qkv_kernel": (("embed", "heads", "kv"),),
    "attn_qkv_bias": (("heads", "kv"),),
    "attn_out_kernel": (("heads", "kv", "embed"),),
    "mlp_up_kernel": (("embed", "mlp"),),
    "mlp_up_bias": (("mlp",),),
    "mlp_down_kernel": (("mlp", "embed"),),
    "layernorm": (("embed",),),
    "attn_out_bias": (("embed",),),
    "mlp_down_bias": (("embed",),),
    "patch_conv_bias": (("embed",),),
    "patch_conv_kernel": (("patch_height", "patch_width", "channels", "embed"),),
    "embed": (("vocab", "embed"),),
    "pos_embed_3d": ((None, "length", "embed"),),
    "cls_token": ((None, None, "embed"),),
    "probe_token": ((None, None, "embed"),),
    "proj_kernel": (("embed", "classes"),),
    "proj_bias": (("classes",),),
}


@dataclasses.dataclass(frozen=True)
class NoSharding(ShardingSpec):
    """No parameter sharded: every one replicated on the current mesh (if any). A model under
    a mesh still runs there, its batch split as the inputs are."""


@dataclasses.dataclass(frozen=True)
class ViTSharding(ShardingSpec):
    """FSDP for ViT (jimm's): q/k/v and MLP-up kernels split on the hidden dim, MLP-down on the
    MLP dim (each a contracting dim), the attention-out kernel whole; the position embedding and
    patch kernel on the hidden dim; the classifier kernel on its input dim."""

    attn_qkv_kernel: tuple[str | None, str | None, str | None] = ("fsdp", None, None)
    mlp_up_kernel: tuple[str | None, str | None] = ("fsdp", None)
    mlp_down_kernel: tuple[str | None, str | None] = ("fsdp", None)
    patch_conv_kernel: tuple[str | None, str | None, str | None, str | None] = (None, None, None, "fsdp")
    pos_embed_3d: tuple[str | None, str | None, str | None] = (None, None, "fsdp")
    proj_kernel: tuple[str | None, str | None] = ("fsdp", None)


@dataclasses.dataclass(frozen=True)
class CLIPSharding(ShardingSpec):
    """FSDP for CLIP (jimm's): `ViTSharding`'s layout plus the token embedding split on the
    vocabulary."""

    attn_qkv_kernel: tuple[str | None, str | None, str | None] = ("fsdp", None, None)
    mlp_up_kernel: tuple[str | None, str | None] = ("fsdp", None)
    mlp_down_kernel: tuple[str | None, str | None] = ("fsdp", None)
    patch_conv_kernel: tuple[str | None, str | None, str | None, str | None] = (None, None, None, "fsdp")
    embed: tuple[str | None, str | None] = ("fsdp", None)
    pos_embed_3d: tuple[str | None, str | None, str | None] = (None, None, "fsdp")
    proj_kernel: tuple[str | None, str | None] = ("fsdp", None)


@dataclasses.dataclass(frozen=True)
class SigLIPSharding(CLIPSharding):
    """FSDP for SigLIP (jimm's): the layout of `CLIPSharding`."""


@dataclasses.dataclass(frozen=True)
class DINOv2Sharding(ViTSharding):
    """FSDP for DINOv2 (jimm's): `ViTSharding` with the MLP-up bias and LayerScale vectors
    split on "fsdp" as well."""

    mlp_up_bias: tuple[str | None] = ("fsdp",)
    layer_scale: tuple[str | None] = ("fsdp",)


@dataclasses.dataclass(frozen=True)
class DINOv3Sharding(DINOv2Sharding):
    """FSDP for DINOv3 (jimm's): `DINOv2Sharding`'s choices, and the register tokens whole."""

    register_tokens: tuple[str | None, str | None, str | None] = (None, None, None)


ShardingArg = Sharding | ShardingSpec | type[ShardingSpec] | str | None


def resolve_sharding(sharding: ShardingArg, default: ShardingArg = ViTSharding) -> bridge.Placement:
    """The placement a `sharding=` argument means on the current mesh. `None` is the model's
    `default`; a `ShardingSpec` may be given as its class (jimm's defaults are classes) or an
    instance; a string is a rule preset."""
    if sharding is None:
        sharding = default
    if isinstance(sharding, type) and issubclass(sharding, ShardingSpec):
        sharding = sharding()
    if isinstance(sharding, str):
        sharding = Sharding(rules=sharding)
    if isinstance(sharding, ShardingSpec):
        # Parameters as the spec says; activations only split the batch.
        return bridge.Placement.resolve(None, "replicated", layout=sharding.layout())
    if isinstance(sharding, Sharding):
        return bridge.Placement.resolve(sharding.mesh, sharding.rules)
    raise TypeError(f"sharding must be a ShardingSpec (ViTSharding(), NoSharding(), ...), Sharding(...) "
                    f"or a preset name, got {sharding!r}")


# -- jimm's helpers for code written in explicit-sharding mode --------------------------------

def sharding_of(value: Any) -> NamedSharding:
    """The NamedSharding a traced value carries in explicit mode."""
    return jax.typeof(value).sharding


def named_sharding_like(reference: Any, spec: P | tuple[str | None, ...]) -> NamedSharding:
    """A NamedSharding with `spec` on the mesh of `reference`."""
    return NamedSharding(sharding_of(reference).mesh, spec if isinstance(spec, P) else P(*spec))


def replicated_sharding(reference: Any) -> NamedSharding:
    """Fully replicated, on `reference`'s mesh and with its rank."""
    return named_sharding_like(reference, P(*([None] * reference.ndim)))


def reshard_like(value: Any, reference: Any) -> Any:
    """`value` resharded to `reference`'s sharding."""
    return jax.sharding.reshard(value, sharding_of(reference))
