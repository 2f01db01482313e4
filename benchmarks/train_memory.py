"""XLA temporaries of a compiled next-token gradient: the chunked loss against full logits.

    python -m benchmarks.train_memory                # B 4, T 1024, V 32000; a Llama 256 wide, 2 layers

Prints one JSON line per loss (`temp_bytes` from `compiled.memory_analysis()`): what a training
step allocates besides its arguments and outputs. The chunked loss never holds `[B, T, V]`
float32 logits; the full-logits loss does (1 GiB at these sizes, plus its gradient).
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp


def temporaries(batch: int, length: int, vocab: int, chunk_size: int | None) -> int:
    import jimm_linen
    from jimm_linen import training

    config = jimm_linen.LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=length)
    module = jimm_linen.Llama(config)
    params = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))
    ids = jax.ShapeDtypeStruct((batch, length), jnp.int32)

    def full(variables, ids):
        logits = module.apply(variables, ids)[:, :-1]
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), ids[:, 1:, None], -1).mean()

    def chunked(variables, ids):
        return training.next_token_loss(module, variables, ids, chunk_size=chunk_size)[0]

    loss = full if chunk_size is None else chunked
    compiled = jax.jit(jax.grad(loss)).lower(params, ids).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    for chunk in (None, 256, 64):
        temp = temporaries(args.batch, args.length, args.vocab, chunk)
        print(json.dumps({"loss": "full-logits" if chunk is None else f"chunked-{chunk}", "batch": args.batch,
                          "length": args.length, "vocab": args.vocab, "temp_bytes": temp,
                          "temp_mib": round(temp / 2**20, 1), "jax": jax.__version__}), flush=True)


if __name__ == "__main__":
    main()
