"""PIL image + text -> logits through HF's own processors, jimm vs HF Transformers end to end.

No hub: the tokenizers are built here (CLIP's byte-level BPE from a small vocab and merge list,
SigLIP's from a sentencepiece unigram model trained on a few sentences), the image processors
from parameters, and both are saved with the random-weight HF model into one directory, which
`AutoProcessor` / `AutoModel` / `jimm_linen.from_pretrained` then load offline.
"""

import dataclasses
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jax

import numpy as np
import pytest
import torch
from PIL import Image

import jimm_linen
from jimm_nnx.reference import perturb_
from jimm_linen.preprocess import ModelInputs, is_siglip, load_processor, prepare, text_kwargs, to_model_inputs
from tests.helpers import assert_close, bound

from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

CLASSES = ["cat", "dog", "hot air balloon"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "a drawing of a {}!"]
# Different lengths, so CLIP's `padding=True` pads (and masks) all but the longest.
TEXTS = ["a photo of a cat.", "dog", "a blurry photo of the hot air balloon."]
MAX_LENGTH = 16  # text max_position_embeddings and the tokenizers' model_max_length
IMAGE_SIZE = 32


def pil_images(seed: int = 0) -> list[Image.Image]:
    """Two RGB images of other sizes than the model's (one landscape, one portrait), so the
    processors resize (and CLIP's centre-crops)."""
    rng = np.random.RandomState(seed)
    out = []
    for h, w in ((40, 48), (56, 36)):
        ramp = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1.0, h)[:, None, None]
        noise = rng.randint(0, 64, (h, w, 3))
        out.append(Image.fromarray(np.clip(ramp + noise, 0, 255).astype(np.uint8), "RGB"))
    return out


def _clip_tokenizer():
    """CLIP's BPE (`CLIPTokenizer`: byte-level, `</w>` word ends) over lowercase letters and
    punctuation, with left-to-right merges of the words used here (most become one token)."""
    from transformers import CLIPTokenizer

    chars = list("abcdefghijklmnopqrstuvwxyz.!")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    merges = []
    words = sorted({w.strip(".!") for text in TEXTS + [t.format(c) for t in TEMPLATES for c in CLASSES]
                    for w in text.split()})
    for word in words:
        piece = word[0]
        for i, ch in enumerate(word[1:], 1):
            nxt = ch + ("</w>" if i == len(word) - 1 else "")
            if (piece, nxt) not in merges:
                merges.append((piece, nxt))
            piece += nxt
            vocab.setdefault(piece, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)


def _siglip_tokenizer(work_dir: Path):
    """`SiglipTokenizer` over a sentencepiece unigram model trained here (pad 0, eos 1, unk 2,
    no bos: the layout of SigLIP's own vocabulary)."""
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    sentences = [t.format(c) for t in TEMPLATES for c in CLASSES] + TEXTS + ["an image of the sky", "a bird"]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 10), model_writer=buf, vocab_size=48, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, character_coverage=1.0,
        num_threads=1, minloglevel=2)
    path = work_dir / "spiece.model"
    path.write_bytes(buf.getvalue())
    return SiglipTokenizer(vocab_file=str(path), model_max_length=MAX_LENGTH)


def build_clip(out_dir: Path, seed: int = 0):
    """A random-weight HF `CLIPModel` and its `CLIPProcessor`, saved together in `out_dir`."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    tokenizer = _clip_tokenizer()
    config = CLIPConfig(
        projection_dim=24,
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=8))
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    perturb_(model, seed + 1)
    model.save_pretrained(out_dir)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                            crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


def build_siglip(out_dir: Path, seed: int = 0):
    """A random-weight HF `SiglipModel` and its `SiglipProcessor`, saved together in `out_dir`."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _siglip_tokenizer(out_dir)
    config = SiglipConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_size=40,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=None),
        vision_config=dict(hidden_size=40, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=8))
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    perturb_(model, seed + 1)
    model.save_pretrained(out_dir)
    image_processor = SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir


BUILDERS = {"clip": build_clip, "siglip": build_siglip}
# How HF documents calling each processor: SigLIP pads to max_length (it was trained that way
# and pools the last position), CLIP pads to the longest text.
HF_TEXT_KWARGS = {"clip": {"padding": True}, "siglip": {"padding": "max_length", "truncation": True}}


def hf_processor(directory):
    """HF's own loading, with the PIL backend pinned (torchvision, if installed, resizes
    slightly differently)."""
    from transformers import AutoImageProcessor, AutoProcessor

    return AutoProcessor.from_pretrained(directory, image_processor=AutoImageProcessor.from_pretrained(
        directory, backend="pil"))


def hf_logits(directory, family, images, texts):
    """HF's pipeline: processor -> torch tensors -> `AutoModel` -> `logits_per_image`."""
    from transformers import AutoModel

    inputs = hf_processor(directory)(text=texts, images=images, return_tensors="pt", **HF_TEXT_KWARGS[family])
    with torch.no_grad():
        return AutoModel.from_pretrained(directory).eval()(**inputs).logits_per_image.numpy()


@dataclasses.dataclass
class Checkpoint:
    """One family's saved HF model + processor, loaded by both sides, and HF's logits for
    `pil_images()` and `TEXTS`."""

    family: str
    directory: Path
    processor: Any  # load_processor(directory)
    model: Any  # jimm's, from_pretrained(directory)
    variables: Any
    apply: Any  # jax.jit(model.apply)
    ref: np.ndarray  # HF's logits_per_image


@pytest.fixture(scope="module", params=["clip", "siglip"])
def checkpoint(request, tmp_path_factory):
    family = request.param
    directory = BUILDERS[family](tmp_path_factory.mktemp(family))
    model, variables = jimm_linen.from_pretrained(directory)
    return Checkpoint(family, directory, load_processor(directory), model, variables, jax.jit(model.apply),
                      hf_logits(directory, family, pil_images(), TEXTS))


def test_processor_saved_and_loaded_offline(checkpoint):
    from transformers import (CLIPImageProcessorPil, CLIPProcessor, CLIPTokenizer, SiglipImageProcessorPil,
                              SiglipProcessor, SiglipTokenizer)

    family, processor = checkpoint.family, checkpoint.processor
    expected = {"clip": (CLIPProcessor, CLIPImageProcessorPil, CLIPTokenizer),
                "siglip": (SiglipProcessor, SiglipImageProcessorPil, SiglipTokenizer)}[family]
    assert (type(processor), type(processor.image_processor), type(processor.tokenizer)) == expected
    assert processor.tokenizer.backend in ("tokenizers", "sentencepiece")  # not relabelled by the image backend
    assert is_siglip(processor) == (family == "siglip")
    hf = json.loads((checkpoint.directory / "config.json").read_text())["text_config"]
    assert processor.tokenizer.vocab_size == hf["vocab_size"] == checkpoint.model.config.text.vocab_size
    assert processor.tokenizer.model_max_length == hf["max_position_embeddings"]
    assert text_kwargs(processor) == HF_TEXT_KWARGS[family]


def test_pipeline_matches_hf(checkpoint):
    """PIL images + texts -> logits_per_image: jimm (NumPy processor outputs, NHWC, Linen) vs
    HF (torch processor outputs, torch model, loaded by HF from the same directory)."""
    inputs = prepare(checkpoint.processor, images=pil_images(), text=TEXTS)
    assert inputs.images.shape == (2, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert inputs.attention_mask is not None
    out = checkpoint.apply(checkpoint.variables, *inputs)
    assert out.logits_per_image.shape == (2, len(TEXTS))
    ref = checkpoint.ref
    assert_close(out.logits_per_image, ref, what=f"{checkpoint.family} logits_per_image")
    assert np.abs(ref).max() > 0.1  # not a degenerate comparison
    assert np.abs(ref[0] - ref[1]).max() > 1e-3  # the two images differ after preprocessing


def test_text_padding_per_family(checkpoint):
    processor = checkpoint.processor
    _, ids, mask = prepare(processor, text=TEXTS)
    ids, mask = np.asarray(ids), np.asarray(mask)
    lengths = mask.sum(-1)
    if checkpoint.family == "clip":  # padded to the longest text, which is shorter than max_length
        assert len(set(lengths.tolist())) == len(TEXTS)
        assert ids.shape[1] == lengths.max() < MAX_LENGTH
        assert (mask == 0).any()
        first_eos = np.argmax(ids == processor.tokenizer.eos_token_id, axis=-1)
        np.testing.assert_array_equal(first_eos, lengths - 1)  # CLIP pools here; padding comes after
    else:  # every text padded (or truncated) to the tokenizer's max length
        assert ids.shape[1] == MAX_LENGTH
        assert lengths.min() < MAX_LENGTH


def test_attention_mask_is_passed_on(checkpoint):
    """SigLIP pools the last (padding) position without a causal mask, so the padding mask
    changes its logits: the pipeline must pass it on as HF does (the match with HF above).
    For CLIP (causal, pooled at EOS) a mask over trailing padding changes nothing."""
    images, ids, mask = prepare(checkpoint.processor, images=pil_images(), text=TEXTS)
    with_mask = np.asarray(checkpoint.apply(checkpoint.variables, images, ids, mask).logits_per_image)
    without = np.asarray(checkpoint.apply(checkpoint.variables, images, ids).logits_per_image)
    diff = float(np.abs(with_mask - without).max())
    if checkpoint.family == "clip":
        assert diff <= bound(with_mask)
    else:
        assert diff > 100 * bound(with_mask)


def test_to_model_inputs_layout(checkpoint):
    family, processor = checkpoint.family, checkpoint.processor
    images = pil_images()
    raw = processor(text=TEXTS, images=images, return_tensors="np", **HF_TEXT_KWARGS[family])
    inputs = to_model_inputs(raw)
    assert isinstance(inputs, ModelInputs)
    assert inputs.images.dtype == np.float32 and inputs.input_ids.dtype == np.int32
    assert inputs.attention_mask.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(inputs.images), raw["pixel_values"].transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(inputs.input_ids), raw["input_ids"])
    np.testing.assert_array_equal(np.asarray(inputs.attention_mask), raw["attention_mask"])
    # torch outputs convert the same way
    pt = to_model_inputs(processor(text=TEXTS, images=images, return_tensors="pt", **HF_TEXT_KWARGS[family]))
    for a, b in zip(pt, inputs):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # one modality at a time
    only_images = prepare(processor, images=images[0])
    assert only_images.input_ids is None and only_images.images.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    only_text = prepare(processor, text="a cat")
    assert only_text.images is None and only_text.input_ids.shape[0] == 1
    with pytest.raises(ValueError, match="images, text or both"):
        prepare(processor)


def test_ragged_text_is_an_error(checkpoint):
    raw = checkpoint.processor.tokenizer(TEXTS)  # no padding: lists of different lengths
    with pytest.raises(ValueError, match="ragged"):
        to_model_inputs({"input_ids": np.array(raw["input_ids"], dtype=object)})


NO_TORCH = textwrap.dedent("""
    import json, sys
    sys.modules["torch"] = None  # `import torch` fails and transformers sees no torch
    sys.modules["torchvision"] = None
    import jax
    import numpy as np
    from PIL import Image
    import jimm_linen
    from jimm_linen.preprocess import load_processor, prepare
    directory, texts, paths = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
    model, variables = jimm_linen.from_pretrained(directory)
    inputs = prepare(load_processor(directory), images=[Image.open(p) for p in paths], text=texts)
    out = jax.jit(model.apply)(variables, *inputs)
    assert not [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("torch", "torchvision")]
    print(json.dumps(np.asarray(out.logits_per_image).tolist()))
""")


@pytest.mark.parametrize("checkpoint", ["siglip"], indirect=True)  # the family with the most (sentencepiece)
def test_pipeline_without_torch(checkpoint, tmp_path):
    """The whole jimm path (processor, conversion, loading, model) in a process where torch
    cannot be imported gives HF's logits."""
    paths = []
    for i, image in enumerate(pil_images()):
        paths.append(str(tmp_path / f"image{i}.png"))  # PNG: the same pixels back
        image.save(paths[-1])
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(checkpoint.directory), json.dumps(TEXTS), *paths],
                          capture_output=True, text=True, timeout=180, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = np.array(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert_close(ours, checkpoint.ref, what="siglip logits without torch")
