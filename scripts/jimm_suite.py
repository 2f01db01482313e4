"""Run the `jimm` library's own test suite (PyPI `jax-image-models`, its sdist's `tests/`)
against `import jimm_nnx as jimm`, or against the genuine library, on an offline HF hub cache.

    python scripts/jimm_suite.py --target ours                      # this checkout
    python scripts/jimm_suite.py --target genuine --python VENV/bin/python

Each run: the sdist is fetched from the package registry (`pip download`, never vendored
here), the hub cache of random-weight checkpoints under the hub ids the tests use is built
once (transformers' PyTorch classes from configs, `save_pretrained`, laid out as a hub cache;
tokenizers built from a byte vocabulary / a tiny sentencepiece model, so nothing comes from
the hub), and pytest runs the sdist's `tests/` with `HF_HUB_OFFLINE=1`. For `ours`, a `jimm`
package on `sys.path` for that run only makes every `jimm.X` the very module `jimm_nnx.X`.
The summary line and a JSON of per-test outcomes go to `--out`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

JIMM_VERSION = "0.4.0"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / ".cache" / "jimm_suite"

# Where each name of the shim resolves: `jimm.X` is `jimm_nnx.X`, the same module object (a
# second copy of a module would hold second copies of its classes).
SHIM = '''"""`jimm` as an alias of `jimm_nnx` for the jimm test suite run (scripts/jimm_suite.py)."""
import importlib
import importlib.abc
import importlib.util
import sys


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.startswith("jimm."):
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):
        real = importlib.import_module("jimm_nnx" + spec.name[len("jimm"):])
        self._spec = real.__spec__
        return real

    def exec_module(self, module):
        # importlib stamped the alias spec on the real module; give it back its own.
        module.__spec__ = self._spec


sys.meta_path.insert(0, _Alias())
import jimm_nnx  # noqa: E402

sys.modules[__name__] = jimm_nnx
'''


# jimm's tests that do not pass for jimm_nnx, each with the reason (README lists them too). A
# module that cannot be imported is one entry ("::tests.<module>"), however many tests it holds.
KNOWN_FAILURES: dict[str, str] = {
    "::tests.test_loading_utils": "jimm.common.loading_utils (apply_mapping, expand_scanned_layers) is the "
    "internals of jimm's own NNX weight loader; jimm_nnx loads through jimm_linen's engine, which has no such "
    "functions (4 tests)",
    "::tests.test_transformer": "jimm.common.transformer (Transformer, TransformerEncoder) is jimm's internal NNX "
    "block stack; jimm_nnx's blocks are jimm_linen's Linen modules inside the bridged models (2 tests)",
}


def fetch_sdist(work: Path) -> Path:
    """`jax-image-models==JIMM_VERSION`'s sdist from the package registry, unpacked."""
    root = work / f"jax_image_models-{JIMM_VERSION}"
    if (root / "tests").is_dir():
        return root
    dist = work / "sdist"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    f"jax-image-models=={JIMM_VERSION}", "-d", str(dist)], check=True)
    (archive,) = dist.glob(f"jax_image_models-{JIMM_VERSION}.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    return root


# -- the offline hub cache --------------------------------------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2 / CLIP byte-level BPE's byte -> printable character table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_tokenizer():
    """A CLIP tokenizer over single bytes (no merges): real token ids below the vocab size,
    `<|endoftext|>` the largest id as in OpenAI's vocabulary (so argmax pooling finds it)."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def siglip_tokenizer(directory: Path):
    """A SigLIP tokenizer over a small sentencepiece model trained here on the suite's prompts.
    "cat" and "dog" are whole pieces, so the suite's two prompts are as long as each other (as
    with the hub's vocabulary: jimm's tests batch them unpadded), and it returns `input_ids`
    alone, as the hub's SigLIP tokenizers do (SigLIP was trained without attention masks)."""
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    lines = ["a photo of a cat", "a photo of a dog", "the quick brown fox jumps over the lazy dog"] * 50
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=40,
                                   model_type="unigram", hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, character_coverage=1.0, minloglevel=2,
                                   user_defined_symbols=["cat", "dog"])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spiece.model").write_bytes(model.getvalue())
    return SiglipTokenizer(vocab_file=str(directory / "spiece.model"), model_max_length=64,
                           model_input_names=["input_ids"])


def _vit_labels(n: int) -> dict:
    return {"id2label": {str(i): f"class_{i}" for i in range(n)}, "label2id": {f"class_{i}": i for i in range(n)}}


def checkpoints() -> dict[str, callable]:
    """hub id -> a function writing that checkpoint (random weights, the hub config's sizes)
    into a directory."""
    import torch
    import transformers as tf

    def vit(d: Path):
        config = tf.ViTConfig(image_size=224, patch_size=16, **_vit_labels(1000))
        tf.ViTForImageClassification(config).save_pretrained(d)
        tf.ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(d)

    def clip(vision: dict, text: dict, projection_dim: int, torch_too: bool):
        def write(d: Path):
            # eos_token_id 2, as these hub configs say: pooling at the largest token id.
            config = tf.CLIPConfig(text_config={"eos_token_id": 2, "bos_token_id": 0, "pad_token_id": 1, **text},
                                   vision_config=vision, projection_dim=projection_dim)
            model = tf.CLIPModel(config)
            model.save_pretrained(d)
            if torch_too:  # openai/clip-vit-base-patch32 ships pytorch_model.bin (jimm's use_pytorch=True)
                torch.save(model.state_dict(), d / "pytorch_model.bin")
            tf.CLIPProcessor(image_processor=tf.CLIPImageProcessor(), tokenizer=clip_tokenizer()).save_pretrained(d)
        return write

    def siglip(image_size: int):
        def write(d: Path):
            config = tf.SiglipConfig(vision_config={"image_size": image_size, "patch_size": 16})
            tf.SiglipModel(config).save_pretrained(d)
            image_processor = tf.SiglipImageProcessor(size={"height": image_size, "width": image_size})
            tf.SiglipProcessor(image_processor=image_processor, tokenizer=siglip_tokenizer(d / "_spm")).save_pretrained(d)
        return write

    def dinov2(hidden: int, heads: int):
        def write(d: Path):
            config = tf.Dinov2Config(hidden_size=hidden, num_attention_heads=heads, image_size=518, patch_size=14,
                                     layerscale_value=1.0)
            tf.Dinov2Model(config).save_pretrained(d)
        return write

    def dinov3(d: Path):
        config = tf.DINOv3ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                    intermediate_size=1536, patch_size=16, image_size=224, num_register_tokens=4,
                                    rope_theta=100.0, layerscale_value=1.0, use_gated_mlp=False, hidden_act="gelu")
        tf.DINOv3ViTModel(config).save_pretrained(d)

    clip_b_text = {}
    clip_l_vision = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                     "intermediate_size": 4096, "patch_size": 14, "image_size": 224}
    clip_l_text = {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072}
    return {
        "google/vit-base-patch16-224": vit,
        "openai/clip-vit-base-patch32": clip({"patch_size": 32, "image_size": 224}, clip_b_text, 512, True),
        "openai/clip-vit-large-patch14": clip(clip_l_vision, clip_l_text, 768, False),
        "google/siglip-base-patch16-224": siglip(224),
        "google/siglip-base-patch16-256": siglip(256),
        "facebook/dinov2-small": dinov2(384, 6),
        "facebook/dinov2-base": dinov2(768, 12),
        "facebook/dinov3-vits16-pretrain-lvd1689m": dinov3,
    }


def build_hub_cache(cache: Path, only: list[str] | None = None) -> Path:
    """The hub cache (`HF_HUB_CACHE` layout: models--org--name/{refs/main, snapshots/REV/...})
    with a random-weight checkpoint under each hub id; ids already there are kept."""
    import torch

    cache.mkdir(parents=True, exist_ok=True)
    for i, (repo, write) in enumerate(checkpoints().items()):
        if only and repo not in only:
            continue
        root = cache / f"models--{repo.replace('/', '--')}"
        if (root / "refs" / "main").is_file():
            continue
        revision = hashlib.sha1(repo.encode()).hexdigest()
        snapshot = root / "snapshots" / revision
        snapshot.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(i)
        print(f"building {repo} (random weights) in {snapshot}", file=sys.stderr, flush=True)
        write(snapshot)
        for extra in snapshot.glob("_spm"):
            for f in extra.iterdir():
                f.unlink()
            extra.rmdir()
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / "main").write_text(revision)  # last: a half-built repo is rebuilt next time
    return cache


# -- running the suite ------------------------------------------------------------------------

def shim_dir(work: Path) -> Path:
    shim = work / "shim"
    (shim / "jimm").mkdir(parents=True, exist_ok=True)
    (shim / "jimm" / "__init__.py").write_text(SHIM)
    return shim


def run_suite(target: str, python: str, work: Path, out: Path, pytest_args: list[str],
              files: list[str] | None = None) -> dict:
    sdist = fetch_sdist(work)
    cache = build_hub_cache(work / "hub")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
    env.pop("HF_HOME", None)
    if target == "ours":
        env["PYTHONPATH"] = os.pathsep.join([str(shim_dir(work)), str(REPO)])
    else:
        env.pop("PYTHONPATH", None)
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"pytest-{target}.log"
    log.write_text("")
    outcomes: dict[str, str] = {}
    test_files = sorted((sdist / "tests").glob("test_*.py"))
    if files:
        unknown = set(files) - {f.name for f in test_files}
        if unknown:
            raise SystemExit(f"no such test file(s) in jimm's tests/: {sorted(unknown)}")
        test_files = [f for f in test_files if f.name in files]
    # One pytest process per test file: jimm's modules build full-size models at import and
    # keep them, which in one process outgrows a 24 GiB machine; apart, each file's memory
    # goes back when it ends.
    for test_file in test_files:
        junit = out / f"junit-{target}-{test_file.stem}.xml"
        junit.unlink(missing_ok=True)
        cmd = [python, "-m", "pytest", f"tests/{test_file.name}", "-p", "no:cacheprovider", "-o", "addopts=",
               "-q", "-rA", f"--junitxml={junit}", *pytest_args]
        print(f"[{target}] {' '.join(cmd)}  (in {sdist})", file=sys.stderr, flush=True)
        with log.open("a") as f:
            f.write(f"\n===== {test_file.name} =====\n")
            f.flush()
            proc = subprocess.run(cmd, cwd=sdist, env=env, stdout=f, stderr=subprocess.STDOUT)
        if not junit.is_file():  # killed (e.g. out of memory) before pytest wrote its report
            outcomes[f"::tests.{test_file.stem}"] = f"error: pytest exited {proc.returncode} without a report"
    # Every file's latest report: a run with --files refreshes those files and keeps the others'.
    for junit in sorted(out.glob(f"junit-{target}-test_*.xml")):
        outcomes.update(summarize(junit))
    count = {k: sum(v.split(":")[0] == k for v in outcomes.values()) for k in ("passed", "failure", "error", "skipped")}
    result = {"target": target, "counts": count, "tests": outcomes}
    (out / f"result-{target}.json").write_text(json.dumps(result, indent=2))
    return result


def summarize(junit: Path) -> dict[str, str]:
    """Per-test outcomes from pytest's junit XML; a module that fails to import is one error."""
    outcomes: dict[str, str] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = [child.tag for child in case]
        outcome = next((k for k in ("error", "failure", "skipped") if k in kinds), "passed")
        if outcome != "passed":
            child = next(c for c in case if c.tag == outcome)
            outcome += f": {(child.get('message') or '').splitlines()[0][:200] if child.get('message') else ''}"
        outcomes[name] = outcome
    return outcomes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=("ours", "genuine"), default="ours")
    p.add_argument("--python", default=sys.executable,
                   help="the interpreter that runs pytest (for genuine: one whose environment has jax-image-models)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where the sdist, hub cache and shim go")
    p.add_argument("--out", type=Path, default=None, help="where the log, junit XML and result JSON go")
    p.add_argument("--build-only", action="store_true", help="fetch the sdist and build the hub cache, run nothing")
    p.add_argument("--files", nargs="+", help="run only these files of jimm's tests/ (e.g. test_vit.py); the "
                   "summary keeps the other files' latest results in --out")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --), e.g. -k clip")
    args = p.parse_args(argv)
    if args.build_only:
        fetch_sdist(args.work)
        build_hub_cache(args.work / "hub")
        return 0
    result = run_suite(args.target, args.python, args.work, args.out or args.work / "results", args.pytest_args,
                       args.files)
    c = result["counts"]
    for name, outcome in result["tests"].items():
        if outcome != "passed":
            print(f"  {name}: {outcome}")
    print(f"{args.target}: {c['passed']} passed, {c['failure']} failed, {c['error']} errors, {c['skipped']} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
