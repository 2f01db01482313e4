"""The `jimm` command line: `jimm parity [PATH ...]`."""

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


def _parity(args) -> int:
    for problem in map(_checkpoint_problem, args.checkpoints):
        if problem:
            print(problem, file=sys.stderr)
            return 2
    from jimm_linen import parity
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
    results = check(args.checkpoints, {p: RUNNERS[p] for p in paths}, args.batch, args.image_size, families,
                    args.full, progress=_progress)
    print(parity.format_table(results))
    bad = [f"{r.name}/{r.path}" for r in results if not r.ok]
    if bad:
        print(f"\nout of tolerance (rel > {parity.RTOL:g}): {', '.join(bad)}", file=sys.stderr)
        return 1
    print(f"\nall {len(results)} checks within rel {parity.RTOL:g} of HF Transformers (PyTorch)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jimm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("parity", help="compare jimm with HF Transformers' PyTorch models",
                       description="Compare jimm with HF Transformers' PyTorch models: the table on stdout, "
                                   "one line per step on stderr while it works.")
    p.add_argument("checkpoints", nargs="*", type=Path,
                   help="HF checkpoint directories (ViT, CLIP, SigLIP, DINOv2, DINOv3, Llama, Qwen3, OLMo 2); "
                        "default: small random-weight reference models built here")
    p.add_argument("--paths", default="linen,nnx", help="which jimm faces to check (default: linen,nnx)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--image-size", type=int, default=None,
                   help="also run image models at this resolution, interpolating position embeddings "
                        "(default for the embedded models: two patches larger)")
    p.add_argument("--family", default=None,
                   help="which model families the embedded defaults cover, comma-separated (default: all of "
                        "vit, clip, siglip, dinov2, dinov3, llama, qwen3, olmo2)")
    p.add_argument("--full", action="store_true",
                   help="add the full-size configs (ViT-B/16, CLIP ViT-B/32, SigLIP base/16, DINOv2 S/14, DINOv3 S/16; "
                        "Llama-3.2-1B, Qwen3-0.6B and OLMo-2-1B at their width with 2 layers) to the defaults")
    args = parser.parse_args(argv)
    if args.command == "parity":
        return _parity(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
