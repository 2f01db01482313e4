"""Reading HF `config.json` dicts strictly: every field is either used, or a known generic one."""

from __future__ import annotations

import re
from typing import Any

# Fields every `transformers.PretrainedConfig` writes that say nothing about the architecture
# (generation defaults, runtime flags, bookkeeping). Anything else we do not know is an error.
HF_GENERIC_FIELDS = frozenset({
    "_name_or_path", "_commit_hash", "_attn_implementation", "_attn_implementation_autoset",
    "add_cross_attention", "architectures", "auto_map", "bad_words_ids", "begin_suppress_tokens",
    "bos_token_id", "chunk_size_feed_forward", "cross_attention_hidden_size",
    "decoder_start_token_id", "diversity_penalty", "do_sample", "dtype", "early_stopping",
    "encoder_no_repeat_ngram_size", "eos_token_id", "exponential_decay_length_penalty",
    "finetuning_task", "forced_bos_token_id", "forced_eos_token_id", "id2label",
    "is_decoder", "is_encoder_decoder", "label2id", "length_penalty", "max_length",
    "min_length", "model_type", "no_repeat_ngram_size", "num_beam_groups", "num_beams",
    "num_labels", "num_return_sequences", "output_attentions", "output_hidden_states",
    "output_scores", "pad_token_id", "prefix", "problem_type", "pruned_heads",
    "remove_invalid_values", "repetition_penalty", "return_dict", "return_dict_in_generate",
    "sep_token_id", "suppress_tokens", "task_specific_params", "temperature",
    "tf_legacy_loss", "tie_encoder_decoder", "tie_word_embeddings", "tokenizer_class",
    "top_k", "top_p", "torch_dtype", "torchscript", "transformers_version", "typical_p",
    "use_bfloat16",
})


class ImageGrid:
    """What a vision tower's config (`image_size`, `patch_size`, `num_channels`) gives its model:
    example inputs for `init` and the side of its patch grid."""

    def dummy_inputs(self) -> tuple:
        """Example inputs for `init` (and abstract inits): one NHWC image of `image_size`."""
        import jax.numpy as jnp

        return (jnp.zeros((1, self.image_size, self.image_size, self.num_channels), jnp.float32),)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


def check_fields(hf: dict[str, Any], known: set[str], model_type: str) -> None:
    unknown = sorted(set(hf) - set(known) - HF_GENERIC_FIELDS)
    if unknown:
        raise ValueError(f"unknown config field(s) for model_type {model_type!r}: {unknown}")
    if hf.get("pruned_heads"):
        raise ValueError(f"pruned_heads {hf['pruned_heads']} is not supported: jimm models have "
                         f"the same number of heads in every layer")


def check_heads(config, what: str) -> None:
    """Every head gets `hidden_size / num_attention_heads` dims, so they must divide."""
    if config.hidden_size % config.num_attention_heads:
        raise ValueError(f"{what} hidden_size {config.hidden_size} is not divisible by "
                         f"num_attention_heads {config.num_attention_heads}")


def labels_from_hf(hf: dict[str, Any]) -> tuple[str, ...] | None:
    """`id2label` as a tuple in index order, or None when it only holds HF's LABEL_i defaults."""
    id2label = hf.get("id2label")
    if not id2label:
        return None
    labels = tuple(id2label[k] for k in sorted(id2label, key=int))
    if all(re.fullmatch(f"LABEL_{i}", lab) for i, lab in enumerate(labels)):
        return None
    return labels


def labels_to_hf(labels: tuple[str, ...] | None, num_labels: int) -> dict[str, Any]:
    names = labels or tuple(f"LABEL_{i}" for i in range(num_labels))
    return {"id2label": {str(i): n for i, n in enumerate(names)},
            "label2id": {n: i for i, n in enumerate(names)}}
