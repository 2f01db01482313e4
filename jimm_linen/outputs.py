"""What the models return: small dataclasses (pytrees), one place for all of them."""

from __future__ import annotations

import flax.struct
import jax


@flax.struct.dataclass
class TowerOutput:
    """What a tower (`ViT`, `TextTransformer`) returns with `return_hidden_states=True`.

    `output`: the `head`'s output (logits, or a CLIP/SigLIP projection) if the tower has one,
    else the pooled features.
    `pooled`: the pooled features (after `pre_logits` when there is one).
    `last_hidden_state`: all tokens after the final LayerNorm.
    `hidden_states`: the embeddings and every block's output, like HF's `hidden_states`.
    """

    output: jax.Array
    pooled: jax.Array
    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...]


@flax.struct.dataclass
class ImageTextOutput:
    """What CLIP and SigLIP return, as HF's `CLIPOutput` / `SiglipOutput`: L2-normalised
    `image_embeds` and `text_embeds`, `logits_per_image` `(images, texts)` and its transpose
    `logits_per_text`; `loss` with `return_loss=True`; the towers' `TowerOutput`s with
    `return_hidden_states=True`."""

    image_embeds: jax.Array
    text_embeds: jax.Array
    logits_per_image: jax.Array
    logits_per_text: jax.Array
    loss: jax.Array | None = None
    vision_output: TowerOutput | None = None
    text_output: TowerOutput | None = None


@flax.struct.dataclass
class CausalLMOutput:
    """What a causal LM returns with `return_hidden_states=True`: float32 `logits [B, T, V]`,
    `last_hidden_state` (after the final norm), `hidden_states` (as HF's: the embeddings and every
    block's output, the last one after the final norm), the updated `cache` when one was given and
    `aux`, the blocks' auxiliary outputs stacked over layers (e.g. `router_logits`; empty for
    dense families). With `output_router_logits=True` (mixture-of-experts families), as HF's
    `MoeCausalLMOutputWithPast`: `router_logits`, each MoE layer's `[B, T, experts]` (HF's are
    flattened to `[B * T, experts]`), and `aux_loss`, HF's load-balancing loss over them, padding
    (`attention_mask` 0) left out, not yet weighted by `router_aux_loss_coef`."""

    logits: jax.Array
    last_hidden_state: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None
    cache: object | None = None
    aux: dict = flax.struct.field(default_factory=dict)
    router_logits: tuple[jax.Array, ...] | None = None
    aux_loss: jax.Array | None = None


@flax.struct.dataclass
class GenerationOutput:
    """What `jimm_linen.generate` returns: `sequences [B, T + max_new_tokens]` int32 (the prompt
    as given, then the new tokens; `pad_token_id` after a row's EOS, and in every slot after the
    step at which all rows had stopped), `finished [B]` (the row produced an EOS) and
    `num_new_tokens [B]` (the tokens each row produced, its EOS included)."""

    sequences: jax.Array
    finished: jax.Array
    num_new_tokens: jax.Array
