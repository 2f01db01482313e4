"""The `jimm` command line: `jimm parity [PATH ...]`, `jimm generate PATH --prompt TEXT`.

This package parses the arguments and refuses bad ones (one line, exit status 2) before anything
imports jax, flax, torch or transformers, which take seconds to import: `--help` and argument
errors come at once. Each command's work is in `jimm_nnx.cli`, imported when the command runs.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import importlib.util
import sys
from pathlib import Path

# The image families `jimm parity` builds references of, by `--family` name (jimm_nnx.reference's
# DEFAULTS, before the decoders), with the names the help shows.
IMAGE_FAMILIES = {"vit": "ViT", "clip": "CLIP", "siglip": "SigLIP", "dinov2": "DINOv2", "dinov3": "DINOv3"}
# The faces `jimm parity --paths` checks (jimm_nnx.parity's RUNNERS).
PARITY_PATHS = ("linen", "nnx")
# What a checkpoint directory holds when it has a tokenizer transformers can load.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
# The positional parameters of `jimm_linen.registry.decoder_family` that name a family.
_FAMILY_PARAMS = ("model_type", "module_cls", "config_cls", "keymap", "nnx_name")


@functools.cache
def decoder_families() -> dict[str, str]:
    """`model_type` -> NNX class name of every decoder family, in `jimm_linen.registry.decoders()`'s
    order, read from the `decoder_family(...)` entries in the family packages' source: importing
    a family imports jax and flax, which `--help` must not wait for. tests/test_cli_fast.py holds
    this to the registry."""
    root = Path(importlib.util.find_spec("jimm_linen").submodule_search_locations[0]) / "models"
    out = {}
    for init in sorted(root.glob("*/__init__.py"), key=lambda p: p.parent.name):
        for node in ast.walk(ast.parse(init.read_text(), str(init))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "decoder_family":
                given = {**dict(zip(_FAMILY_PARAMS, node.args)), **{k.arg: k.value for k in node.keywords}}
                out[ast.literal_eval(given["model_type"])] = ast.literal_eval(given["nnx_name"])
    return out


def parity_families() -> list[str]:
    """Every `--family` name of `jimm parity`, in its order."""
    return [*IMAGE_FAMILIES, *decoder_families()]


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (argparse prints the usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _number(kind: type, test, wanted: str):
    """An argparse `type` reading a `kind` and refusing values that fail `test` as not `wanted`."""

    def parse(text: str):
        value = kind(text)  # a ValueError: argparse says "invalid int value: ..."
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _checkpoint_problem(ckpt: Path) -> str | None:
    """Why `ckpt` is not an HF checkpoint directory, or None when it is one."""
    if not ckpt.exists():
        return f"{ckpt}: no such directory"
    if not ckpt.is_dir():
        return f"{ckpt}: not a directory"
    if not (ckpt / "config.json").is_file():
        return f"{ckpt}: no config.json there (not an HF checkpoint directory)"
    return None


def _parity_problem(args) -> str | None:
    """Why `jimm parity`'s arguments are refused, or None; then `args.paths` and `args.family`
    (when given) are lists of names."""
    for ckpt in args.checkpoints:
        if problem := _checkpoint_problem(ckpt):
            return problem
    paths = [p for p in args.paths.split(",") if p]
    if not paths or set(paths) - set(PARITY_PATHS):
        return f"--paths must name some of {list(PARITY_PATHS)}, got {args.paths!r}"
    args.paths = paths
    if args.full and args.checkpoints:
        return "--full adds the full-size configs to the embedded defaults; it does not apply to checkpoint directories"
    if args.family is not None:
        if args.checkpoints:
            return "--family picks among the embedded defaults; a checkpoint directory's config.json names its family"
        families = [f for f in args.family.split(",") if f]
        if not families or set(families) - set(parity_families()):
            return f"--family must name some of {parity_families()}, got {args.family!r}"
        args.family = families
    return None


def _generate_problem(args) -> str | None:
    ckpt = args.checkpoint
    if problem := _checkpoint_problem(ckpt):
        return problem
    if not any((ckpt / f).is_file() for f in TOKENIZER_FILES):
        return (f"{ckpt}: no tokenizer there (none of {', '.join(TOKENIZER_FILES)}); jimm generate reads the "
                f"checkpoint's own tokenizer")
    filters = [flag for flag, value in (("--top-k", args.top_k), ("--top-p", args.top_p), ("--min-p", args.min_p))
               if value is not None]
    if args.temperature == 0 and filters:
        return (f"--temperature 0 is greedy decoding; {', '.join(filters)} applies only when sampling (give a "
                f"temperature > 0, or leave {', '.join(filters)} out)")
    return None


def _run(name: str):
    """The command `name` of `jimm_nnx.cli`, imported only when it runs."""
    return lambda args: getattr(importlib.import_module("jimm_nnx.cli"), name)(args)


def parser() -> argparse.ArgumentParser:
    lms = ", ".join(decoder_families().values())
    top = _Parser(prog="jimm", description="jimm: check its models against HF Transformers (parity), generate text "
                                           "from a decoder checkpoint (generate).")
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("parity", help="compare jimm with HF Transformers' PyTorch models",
                       description="Compare jimm with HF Transformers' PyTorch models: the table on stdout, "
                                   "one line per step on stderr while it works. Exit status 0 when every check "
                                   "is within tolerance, 1 when one is not, 2 for bad arguments or a checkpoint "
                                   "jimm cannot read.")
    p.set_defaults(check=_parity_problem, run=_run("parity"))
    p.add_argument("checkpoints", nargs="*", type=Path,
                   help=f"HF checkpoint directories ({', '.join(IMAGE_FAMILIES.values())}, {lms}); "
                        "default: small random-weight reference models built here")
    p.add_argument("--paths", default=",".join(PARITY_PATHS),
                   help=f"which jimm faces to check, comma-separated (default: {','.join(PARITY_PATHS)})")
    p.add_argument("--batch", type=_number(int, lambda n: n >= 1, "an integer >= 1"), default=2,
                   help="inputs per forward pass (default: 2)")
    p.add_argument("--image-size", type=_number(int, lambda n: n >= 1, "an integer >= 1"), default=None,
                   help="also run image models at this resolution, interpolating position embeddings "
                        "(default for the embedded models: two patches larger; for directories: none)")
    p.add_argument("--family", default=None,
                   help=f"which model families the embedded defaults cover, comma-separated (default: all of "
                        f"{', '.join(parity_families())})")
    p.add_argument("--full", action="store_true",
                   help="add the full-size configs (ViT-B/16, CLIP ViT-B/32, SigLIP base/16, DINOv2 S/14, DINOv3 S/16; "
                        "each decoder family at a real model's width with one or two layers) to the defaults")

    g = sub.add_parser("generate", help="stream text from a decoder checkpoint with its tokenizer",
                       description=f"Print a prompt and its continuation, streamed as it is generated, from an HF "
                                   f"decoder checkpoint directory ({lms}) and its own tokenizer; tokens/s on "
                                   f"stderr at the end. Greedy unless a sampling flag (--temperature > 0, "
                                   f"--top-k, --top-p, --min-p) is given or the checkpoint's "
                                   f"generation_config.json asks for sampling; a sampling setting left out takes "
                                   f"generation_config.json's value, else HF's default (given below). Exit "
                                   f"status 2 for bad arguments, a prompt too long for the model, or a checkpoint "
                                   f"jimm cannot read.")
    g.set_defaults(check=_generate_problem, run=_run("generate"))
    g.add_argument("checkpoint", type=Path, help="HF checkpoint directory with its tokenizer files")
    g.add_argument("--prompt", required=True,
                   help="the text to continue; printed first, as its tokens decode, so prompt and continuation read "
                        "as one text (with --chat, only the reply is printed)")
    g.add_argument("--max-new-tokens", type=_number(int, lambda n: n >= 1, "an integer >= 1"), default=128,
                   metavar="N", help="generate at most N tokens; fewer when an end-of-sequence token comes "
                                     "(default: 128)")
    g.add_argument("--temperature", type=_number(float, lambda t: t >= 0, "a number >= 0 (0: greedy)"),
                   default=None, metavar="T",
                   help="sample from softmax(logits / T): below 1 sharper, above 1 flatter; 0 picks the most likely "
                        "token each step, greedy (default: generation_config.json's, else 1)")
    g.add_argument("--top-k", type=_number(int, lambda k: k >= 0, "an integer >= 0 (0: no top-k filter)"),
                   default=None, metavar="K",
                   help="sample only among the K most likely tokens; 0 turns the filter off "
                        "(default: generation_config.json's, else 50)")
    g.add_argument("--top-p", type=_number(float, lambda p: 0 < p <= 1, "in (0, 1]"), default=None, metavar="P",
                   help="nucleus sampling: only among the most likely tokens whose probabilities add up to P; 1 turns "
                        "the filter off (default: generation_config.json's, else 1)")
    g.add_argument("--min-p", type=_number(float, lambda p: 0 <= p <= 1, "in [0, 1]"), default=None, metavar="P",
                   help="sample only among tokens at least P times as likely as the most likely one; 0 turns the "
                        "filter off (default: generation_config.json's, else 0)")
    g.add_argument("--seed", type=int, default=0, help="random seed of the sampling (default: 0)")
    g.add_argument("--chat", action="store_true",
                   help="wrap the prompt as a user message with the tokenizer's chat template, and print only the "
                        "reply")
    return top


def main(argv: list[str] | None = None) -> int:
    """Run `jimm` on `argv` (default: the command line); the exit status."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help, or an argument argparse refused (said on stderr, in one line)
        return e.code
    if problem := args.check(args):
        print(problem, file=sys.stderr)
        return 2
    return args.run(args)
