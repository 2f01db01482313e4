"""The work of each `jimm` command: `parity(args)`, `generate(args)`, run by `jimm_cli.main` (the
`jimm` console script) once it has parsed and checked the arguments without these imports."""

from __future__ import annotations

import sys
import time

import numpy as np

from jimm_cli import main  # noqa: F401  (`python -m jimm_nnx.cli` and older installs' console script)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _config_problem(ckpt) -> str | None:
    """Why jimm cannot read `ckpt`'s `config.json` (invalid JSON, a `model_type` it does not
    support, a field it does not implement), or None when it can."""
    from jimm_linen.pretrained import read_config

    try:
        read_config(ckpt)
    except ValueError as e:
        return f"{ckpt}: {_one_line(e)}"
    return None


def parity(args) -> int:
    for problem in map(_config_problem, args.checkpoints):
        if problem:
            print(problem, file=sys.stderr)
            return 2
    from jimm_nnx import reference
    from jimm_nnx.parity import RUNNERS, check

    runners = {p: RUNNERS[p] for p in args.paths}
    families = list(reference.DEFAULTS) if args.family is None else args.family
    results = [] if args.checkpoints else check((), runners, args.batch, args.image_size, families, args.full,
                                                 progress=_progress)
    for ckpt in args.checkpoints:
        try:
            results += check([ckpt], runners, args.batch, args.image_size, progress=_progress)
        except ValueError as e:  # CheckpointError: a missing, unexpected or mis-shaped tensor, a damaged file
            print(f"{ckpt}: {_one_line(e)}", file=sys.stderr)
            return 2
    print(reference.format_table(results))
    bad = [f"{r.name}/{r.path}" for r in results if not r.ok]
    if bad:
        print(f"\nout of tolerance (rel > {reference.RTOL:g}): {', '.join(bad)}", file=sys.stderr)
        return 1
    print(f"\nall {len(results)} checks within rel {reference.RTOL:g} of HF Transformers (PyTorch)")
    return 0


class _Detokenizer:
    """Text of the tokens so far (starting with `ids`), handed out as it grows: the whole sequence
    is decoded again at each token (a token may be part of a character, or change how the
    previous ones read), and text ending in an incomplete character waits for the next token."""

    def __init__(self, tokenizer, ids=()):
        self.tokenizer, self.ids, self.shown = tokenizer, list(ids), 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return "" if text.endswith("\ufffd") else self._new(text)

    def flush(self) -> str:
        return self._new(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _new(self, text: str) -> str:
        new, self.shown = text[self.shown:], len(text)
        return new


def _prompt_ids(tokenizer, args) -> list[int]:
    if args.chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                             return_dict=True)["input_ids"]
    return tokenizer(args.prompt)["input_ids"]


def generate(args) -> int:
    """Everything the model does not need is checked before it is built: the config, the
    tokenizer, the chat template, the prompt's length against the model's positions."""
    from transformers import AutoTokenizer

    import jimm_nnx
    from jimm_linen.generation import check_prompt, resolve_settings
    from jimm_linen.models.decoder import CausalLMConfig
    from jimm_linen.pretrained import read_config
    from jimm_linen.registry import decoders

    ckpt = args.checkpoint
    try:
        _, config = read_config(ckpt)
    except ValueError as e:
        print(f"{ckpt}: {_one_line(e)}", file=sys.stderr)
        return 2
    if not isinstance(config, CausalLMConfig):
        print(f"{ckpt}: a {type(config).__name__} checkpoint, not a decoder LM (jimm generate runs "
              f"{', '.join(sorted(decoders()))})", file=sys.stderr)
        return 2
    tokenizer = AutoTokenizer.from_pretrained(ckpt)
    if args.chat and not tokenizer.chat_template:
        print(f"{ckpt}: the tokenizer has no chat template (--chat needs one)", file=sys.stderr)
        return 2
    ids = _prompt_ids(tokenizer, args)
    if not ids:
        print("the prompt is empty after tokenization", file=sys.stderr)
        return 2
    settings = dict(top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, temperature=args.temperature)
    if args.temperature == 0:
        settings.update(do_sample=False, temperature=None)
    elif any(v is not None for v in settings.values()):
        settings["do_sample"] = True
    try:
        check_prompt(config, [ids], None, args.max_new_tokens)
        resolve_settings(config, **settings)  # with generation_config.json's values
    except ValueError as e:
        print(f"{ckpt}: {_one_line(e)}", file=sys.stderr)
        return 2
    _progress(f"{ckpt}: loading")
    try:
        lm = jimm_nnx.CausalLM.from_pretrained(ckpt)
    except ValueError as e:
        print(f"{ckpt}: {_one_line(e)}", file=sys.stderr)
        return 2
    # A chat prompt is the template's text, not the user's: only the reply is shown.
    text = _Detokenizer(tokenizer, () if args.chat else ids)
    print(text.flush(), end="", flush=True)
    start, first, count = time.perf_counter(), None, 0
    for tokens in lm.stream(np.asarray([ids], np.int32), max_new_tokens=args.max_new_tokens, rng=args.seed,
                            **settings):
        first = time.perf_counter() - start if first is None else first
        count += 1
        print(text.push(int(tokens[0])), end="", flush=True)
    total = time.perf_counter() - start
    print(text.flush(), flush=True)
    rate = f"{count / total:.1f} tokens/s"
    if count > 1:
        rate += f"; {(count - 1) / (total - first):.1f} tokens/s after the first, which took {first:.2f} s (compiling)"
    _progress(f"{count} tokens in {total:.2f} s: {rate}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
