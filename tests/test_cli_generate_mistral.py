"""`jimm generate` on a Mistral checkpoint with Mistral's real SentencePiece vocabulary
(`tokenizer.model.v1` of the `mistral-common` package, Mistral 7B v0.1's 32000 tokens) as a
transformers `LlamaTokenizer`: the prompt's ids, the CLI's text and its greedy tokens against HF
`generate` + decode. The model is a tiny random `MistralForCausalLM` whose window (4) the prompt
and the new tokens run past."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jimm_nnx
from jimm_nnx import cli
from jimm_nnx import reference as parity

PROMPT = "Hello world"
NEW = 5
CONFIG = dict(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, sliding_window=4, bos_token_id=1, eos_token_id=2)


def sentencepiece_model() -> Path:
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    assert path.is_file(), path
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from transformers import LlamaTokenizer

    d = tmp_path_factory.mktemp("mistral-sp-vocab")
    model = parity.build_decoder_reference("mistral", CONFIG, d, seed=5)
    source = tmp_path_factory.mktemp("sentencepiece")
    shutil.copy(sentencepiece_model(), source / "tokenizer.model")
    # Mistral's tokenizer adds <s> (id 1) in front, as its hub tokenizer_config.json says.
    LlamaTokenizer.from_pretrained(source, add_bos_token=True).save_pretrained(d)
    from transformers import AutoTokenizer

    return d, model, AutoTokenizer.from_pretrained(d)  # the tokenizer the CLI reads


def hf_tokens(model, ids) -> np.ndarray:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                             max_new_tokens=NEW, do_sample=False, pad_token_id=2)
    return out[0, len(ids):].numpy()


def test_the_tokenizer_is_mistrals_sentencepiece(checkpoint):
    import sentencepiece

    _, model, tokenizer = checkpoint
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model()))
    assert len(tokenizer) == sp.vocab_size() == model.config.vocab_size == 32000
    ids = tokenizer(PROMPT)["input_ids"]
    assert ids == [1, *sp.encode(PROMPT)] == [1, 22557, 1526]
    assert tokenizer.decode(ids, skip_special_tokens=True) == PROMPT


def test_generate_prints_hf_generates_text_and_tokens(checkpoint, capsys):
    d, model, tokenizer = checkpoint
    ids = tokenizer(PROMPT)["input_ids"]
    expected = hf_tokens(model, ids)
    assert len(ids) + NEW > CONFIG["sliding_window"] and 2 not in expected  # past the window, no early EOS
    assert cli.main(["generate", str(d), "--prompt", PROMPT, "--max-new-tokens", str(NEW), "--temperature", "0"]) == 0
    out, err = capsys.readouterr()
    text = tokenizer.decode(expected, skip_special_tokens=True)
    assert text.strip(), f"HF's continuation {expected} decodes to no text"
    # The prompt first, then the continuation, as the whole sequence decodes (a SentencePiece
    # token's leading space shows only after the text before it).
    whole = tokenizer.decode([*ids, *expected], skip_special_tokens=True)
    assert whole.startswith(PROMPT) and whole.endswith(text.strip())
    assert out == whole + "\n"
    assert f"{NEW} tokens in " in err
    # The same greedy tokens from the model the CLI loads, on the same ids.
    lm = jimm_nnx.CausalLM.from_pretrained(d, sharding=jimm_nnx.NoSharding())
    assert type(lm.config).__name__ == "MistralConfig"
    out = lm.generate(jnp.asarray([ids], jnp.int32), max_new_tokens=NEW, do_sample=False)
    np.testing.assert_array_equal(np.asarray(out.sequences)[0], [*ids, *expected])
