"""The `jimm` command line: `jimm parity [PATH ...]`, `jimm generate PATH --prompt TEXT`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _checkpoint_problem(ckpt: Path) -> str | None:
    """Why `ckpt` is not an HF checkpoint directory, or None when it is one."""
    if not ckpt.exists():
        return f"{ckpt}: no such directory"
    if not ckpt.is_dir():
        return f"{ckpt}: not a directory"
    if not (ckpt / "config.json").is_file():
        return f"{ckpt}: no config.json there (not an HF checkpoint directory)"
    return None


def _config_problem(ckpt: Path) -> str | None:
    """Why jimm cannot read `ckpt`'s `config.json` (invalid JSON, a `model_type` it does not
    support, a field it does not implement), or None when it can."""
    from jimm_linen.pretrained import read_config

    try:
        read_config(ckpt)
    except ValueError as e:
        return f"{ckpt}: {_one_line(e)}"
    return None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _parity(args) -> int:
    for check_one in (_checkpoint_problem, _config_problem):
        for problem in map(check_one, args.checkpoints):
            if problem:
                print(problem, file=sys.stderr)
                return 2
    from jimm_nnx import reference as parity
    from jimm_nnx.parity import RUNNERS, check

    paths = tuple(p for p in args.paths.split(",") if p)
    unknown = set(paths) - set(RUNNERS)
    if unknown or not paths:
        print(f"--paths must name some of {sorted(RUNNERS)}, got {args.paths!r}", file=sys.stderr)
        return 2
    if args.full and args.checkpoints:
        print("--full adds the full-size configs to the embedded defaults; it does not apply to checkpoint "
              "directories", file=sys.stderr)
        return 2
    families = list(parity.DEFAULTS) if args.family is None else [f for f in args.family.split(",") if f]
    unknown = set(families) - set(parity.DEFAULTS)
    if not args.checkpoints and (unknown or not families):
        print(f"--family must name some of {sorted(parity.DEFAULTS)}, got {args.family!r}", file=sys.stderr)
        return 2
    runners = {p: RUNNERS[p] for p in paths}
    results = [] if args.checkpoints else check((), runners, args.batch, args.image_size, families, args.full,
                                                 progress=_progress)
    for ckpt in args.checkpoints:
        try:
            results += check([ckpt], runners, args.batch, args.image_size, progress=_progress)
        except ValueError as e:  # CheckpointError: a missing, unexpected or mis-shaped tensor, a damaged file
            print(f"{ckpt}: {_one_line(e)}", file=sys.stderr)
            return 2
    print(parity.format_table(results))
    bad = [f"{r.name}/{r.path}" for r in results if not r.ok]
    if bad:
        print(f"\nout of tolerance (rel > {parity.RTOL:g}): {', '.join(bad)}", file=sys.stderr)
        return 1
    print(f"\nall {len(results)} checks within rel {parity.RTOL:g} of HF Transformers (PyTorch)")
    return 0


# What a checkpoint directory holds when it has a tokenizer transformers can load.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


class _Detokenizer:
    """Text of the tokens so far, handed out as it grows: the whole sequence is decoded again at
    each token (a token may be part of a character, or change how the previous ones read), and
    text ending in an incomplete character waits for the next token."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.shown = tokenizer, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return "" if text.endswith("\ufffd") else self._new(text)

    def flush(self) -> str:
        return self._new(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _new(self, text: str) -> str:
        new, self.shown = text[self.shown:], len(text)
        return new


def _generate(args) -> int:
    problem = _checkpoint_problem(args.checkpoint)
    if problem is None and not any((args.checkpoint / f).is_file() for f in TOKENIZER_FILES):
        problem = (f"{args.checkpoint}: no tokenizer there (none of {', '.join(TOKENIZER_FILES)}); jimm generate "
                   f"reads the checkpoint's own tokenizer")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    import time

    import numpy as np
    from transformers import AutoTokenizer

    import jimm_nnx

    from jimm_linen.models.decoder import CausalLMConfig
    from jimm_linen.pretrained import read_config
    from jimm_linen.registry import decoders

    try:
        _, config = read_config(args.checkpoint)
    except ValueError as e:
        print(f"{args.checkpoint}: {e}", file=sys.stderr)
        return 2
    if not isinstance(config, CausalLMConfig):
        print(f"{args.checkpoint}: a {type(config).__name__} checkpoint, not a decoder LM (jimm generate runs "
              f"{', '.join(sorted(decoders()))})", file=sys.stderr)
        return 2
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    if args.chat:
        if not tokenizer.chat_template:
            print(f"{args.checkpoint}: the tokenizer has no chat template (--chat needs one)", file=sys.stderr)
            return 2
        ids = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                            return_dict=True)["input_ids"]
    else:
        ids = tokenizer(args.prompt)["input_ids"]
    if not ids:
        print("the prompt is empty after tokenization", file=sys.stderr)
        return 2
    settings = dict(top_k=args.top_k, top_p=args.top_p, temperature=args.temperature)
    if args.temperature == 0:
        settings.update(do_sample=False, temperature=None)
    elif any(v is not None for v in settings.values()):
        settings["do_sample"] = True
    _progress(f"{args.checkpoint}: loading")
    text = _Detokenizer(tokenizer)
    start, first, count = time.perf_counter(), None, 0
    try:
        lm = jimm_nnx.CausalLM.from_pretrained(args.checkpoint)
        start = time.perf_counter()
        steps = lm.stream(np.asarray([ids], np.int32), max_new_tokens=args.max_new_tokens, rng=args.seed, **settings)
        for tokens in steps:
            first = time.perf_counter() - start if first is None else first
            count += 1
            print(text.push(int(tokens[0])), end="", flush=True)
    except ValueError as e:
        print(f"{args.checkpoint}: {e}", file=sys.stderr)
        return 2
    total = time.perf_counter() - start
    print(text.flush(), flush=True)
    rate = f"{count / total:.1f} tokens/s"
    if count > 1:
        rate += f"; {(count - 1) / (total - first):.1f} tokens/s after the first, which took {first:.2f} s (compiling)"
    _progress(f"{count} tokens in {total:.2f} s: {rate}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from jimm_linen.registry import decoders

    lms = ", ".join(f.config_cls.architecture.removesuffix("ForCausalLM") for f in decoders().values())
    parser = argparse.ArgumentParser(prog="jimm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("parity", help="compare jimm with HF Transformers' PyTorch models",
                       description="Compare jimm with HF Transformers' PyTorch models: the table on stdout, "
                                   "one line per step on stderr while it works.")
    p.add_argument("checkpoints", nargs="*", type=Path,
                   help=f"HF checkpoint directories (ViT, CLIP, SigLIP, DINOv2, DINOv3, {lms}); "
                        "default: small random-weight reference models built here")
    p.add_argument("--paths", default="linen,nnx", help="which jimm faces to check (default: linen,nnx)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--image-size", type=int, default=None,
                   help="also run image models at this resolution, interpolating position embeddings "
                        "(default for the embedded models: two patches larger)")
    p.add_argument("--family", default=None,
                   help="which model families the embedded defaults cover, comma-separated (default: all of "
                        f"vit, clip, siglip, dinov2, dinov3, {', '.join(decoders())})")
    p.add_argument("--full", action="store_true",
                   help="add the full-size configs (ViT-B/16, CLIP ViT-B/32, SigLIP base/16, DINOv2 S/14, DINOv3 S/16; "
                        "each decoder family at a real model's width with one or two layers) to the defaults")
    g = sub.add_parser("generate", help="stream text from a decoder checkpoint with its tokenizer",
                       description="Stream the continuation of a prompt to stdout, from an HF decoder checkpoint "
                                   f"directory ({lms}) and its tokenizer; tokens/s on stderr at the end. "
                                   "Sampling when --temperature > 0, --top-k or --top-p is given; --temperature 0 is "
                                   "greedy; otherwise the checkpoint's generation_config.json decides (greedy "
                                   "without one).")
    g.add_argument("checkpoint", type=Path, help="HF checkpoint directory with its tokenizer files")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=0, help="random seed of the sampling (default 0)")
    g.add_argument("--chat", action="store_true",
                   help="wrap the prompt as a user message with the tokenizer's chat template")
    args = parser.parse_args(argv)
    if args.command == "parity":
        return _parity(args)
    if args.command == "generate":
        return _generate(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
