"""What the suites run: workloads, the contenders in each, and the FLOP count used for MFU.

A workload names an HF config (the checkpoint every contender loads is built from it by
`transformers` with seeded random weights and saved once per run), a task (`infer`, `train`,
or `compile`: AOT compile time only, from abstract parameters), batch, dtype, and its entries:
a contender plus per-entry options (attention backend, scan or loop, device). `reference` is
the entry every other entry's outputs are checked against before anything is recorded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

VIT_B16 = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
               image_size=224, patch_size=16, num_labels=1000)
VIT_L16 = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
               image_size=224, patch_size=16, num_labels=1000)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            image_size=32, patch_size=8, num_labels=10)
# CLIPModel configs (HF `CLIPConfig` kwargs). CLIP_B32 spells out transformers' CLIPConfig
# defaults (= jimm_nnx.reference.CLIP_B32 = openai/clip-vit-base-patch32's sizes) so that the
# FLOP count and the recorded config can read them.
CLIP_B32 = dict(
    projection_dim=512,
    text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                     num_attention_heads=8, max_position_embeddings=77),
    vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=32))
# Tiny, but in the shapes the `jimm` library's CLIP can hold (it fixes vision heads at width / 64,
# MLPs at 4 x width and the projection at the text width), and with the EOS as the largest id (as
# in CLIP's real vocabulary), where jimm.CLIP pools.
TINY_CLIP = dict(
    projection_dim=64,
    text_config=dict(vocab_size=99, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=12, pad_token_id=1, bos_token_id=97,
                     eos_token_id=98),
    vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                       image_size=32, patch_size=8))

CPU_CONTENDERS = ("hf_torch_eager", "hf_torch_compile", "jimm_linen", "jimm_nnx", "legacy_hf_flax", "jimm_lib")
SIDE_INSTALLED = ("legacy_hf_flax", "jimm_lib")
TOKAMAX_GPU_BACKENDS = ("mosaic", "triton", "cudnn", "xla_chunked", "xla")

AGREE_RTOL = {"float32": 1e-4, "bfloat16": 4e-2}  # max |out - ref| / max(1, max |ref|)


@dataclasses.dataclass(frozen=True)
class Entry:
    contender: str
    label: str = ""
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.label or self.contender


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    task: str  # "infer" | "train" | "compile"
    hf_config: dict[str, Any]
    batch: int
    dtype: str
    entries: tuple[Entry, ...]
    reference: str | None = "hf_torch_eager"
    rounds: int | None = None  # None: the command line's --rounds
    steps: int | None = None
    status: str = "ready"  # anything else: listed, not run
    note: str = ""
    model: str = "vit"  # "vit": ViTForImageClassification; "clip": CLIPModel (images + texts in, logits_per_image out);
    # a decoder family of `DECODER_MODELS` ("llama", "qwen3"): its *ForCausalLM on random token ids
    seq: int = 0  # decoders: prompt / sequence length
    new_tokens: int = 0  # decode: greedy tokens generated per call (no EOS)
    warmup: int | None = None  # None: the command line's --warmup

    @property
    def decoder(self) -> bool:
        return self.model in DECODER_MODELS

    def flops(self) -> float:
        """Model FLOPs of one step of this workload (`vit_flops` / `clip_flops` / `decoder_flops`)."""
        if self.decoder:
            return decoder_flops(self.hf_config, self.batch, self.seq, train=self.task == "train")
        if self.model == "clip":
            return clip_flops(self.hf_config, self.batch)
        return vit_flops(self.hf_config, self.batch, train=self.task == "train")


def _entries(names) -> tuple[Entry, ...]:
    return tuple(Entry(n) for n in names)


# XLA:CPU allocates a step's temporaries afresh each call; with 4 KiB pages that is ~580k minor
# page faults per ViT-B/16 training step (1-1.5 s of kernel time on 2 cores). glibc's malloc
# can ask for transparent huge pages instead (Linux THP in "madvise" or "always" mode).
HUGETLB = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def variants(task: str, quick: bool = False) -> tuple[Entry, ...]:
    """Settings benchmarked both ways beside the plain contenders: nnx.jit's default graph mode
    (jimm_nnx runs in tree mode), the huge-page malloc setting for one contender per framework,
    for inference the looped (unscanned) layers, and for training two remat policies: keep
    every matmul output, or only the projections'."""
    out = (Entry("jimm_nnx", "jimm_nnx+graph_mode", dict(graph=True)),)
    if quick:
        return out
    out += tuple(Entry(c, f"{c}+hugetlb", dict(env=HUGETLB)) for c in ("jimm_linen", "legacy_hf_flax", "hf_torch_eager"))
    if task == "infer":
        out += (Entry("jimm_linen", "jimm_linen+loop", dict(scan=False)),)
    if task == "train":
        out += tuple(Entry("jimm_linen", f"jimm_linen+{p}", dict(remat=p)) for p in ("dots_saveable", "minimal"))
    return out


def cpu_suite(quick: bool = False) -> list[Workload]:
    cfg = TINY if quick else VIT_B16
    batch = 2 if quick else 8
    contenders = ("hf_torch_eager", "jimm_linen", "jimm_nnx") if quick else CPU_CONTENDERS
    depth_cfg = TINY if quick else VIT_B16
    depths = (1, 2, 4) if quick else (6, 12, 24)
    long_cfg = dict(TINY, image_size=128) if quick else dict(VIT_B16, image_size=1024)
    return [
        Workload("vit_b16_infer", "infer", cfg, batch, "float32", _entries(contenders) + variants("infer", quick)),
        Workload("vit_b16_train", "train", cfg, batch, "float32", _entries(contenders) + variants("train", quick)),
        Workload(
            "clip_b32_image_text", "infer", TINY_CLIP if quick else CLIP_B32, batch, "float32",
            _entries(contenders), model="clip",
            note="CLIPModel forward on `batch` images and `batch` texts (full-length token rows, random "
                 "EOS positions, padding masked), compared on logits_per_image; throughput counts "
                 "image+text pairs. jimm_lib is jimm.CLIP (no attention_mask input: its causal text "
                 "tower pools at the largest id, which is the EOS here, so padding cannot reach it; "
                 "its text-layer LayerNorm eps, 1e-6 in jimm 0.4.0, is set to the checkpoint's 1e-5)."),
        Workload(
            "compile_vs_depth", "compile", depth_cfg, batch, "float32",
            tuple(Entry("jimm_linen", f"{task}-{'scan' if scan else 'loop'}-{d}L",
                        dict(depth=d, scan=scan, compile_task=task))
                  for task in ("infer", "train") for scan in (True, False) for d in depths),
            reference=None, rounds=1),
        Workload(
            "long_sequence", "infer", long_cfg, 1, "float32",
            (Entry("jimm_linen", "jimm_linen+default"),
             Entry("jimm_linen", "jimm_linen+xla_chunked", dict(attention="xla_chunked"))),
            reference="jimm_linen+default", rounds=1, steps=2 if quick else 10,
            note=f"{(long_cfg['image_size'] // long_cfg['patch_size']) ** 2} patch tokens + cls"),
    ]


# --- decoders (`--suite llm`) -------------------------------------------------------------------

DECODER_MODELS = ("llama", "qwen3")
# Llama-3-shaped (GQA, SwiGLU, untied head), 336M parameters. RoPE theta 10000 because legacy HF
# Flax (transformers 4.57.6) hard-codes it: one checkpoint for every contender.
LLAMA_336M = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=4,
                  intermediate_size=2816, vocab_size=32000, max_position_embeddings=1024, rope_theta=10000.0,
                  rms_norm_eps=1e-5, tie_word_embeddings=False)
# Qwen3-0.6B's real sizes (596M parameters, tied embeddings, head_dim 128 > hidden / heads).
QWEN3_06B = dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 intermediate_size=3072, vocab_size=151936, max_position_embeddings=1024, rope_theta=1000000.0,
                 rms_norm_eps=1e-6, tie_word_embeddings=True)
TINY_LLAMA = dict(LLAMA_336M, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, vocab_size=128, max_position_embeddings=64)
TINY_QWEN3 = dict(QWEN3_06B, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, intermediate_size=64, vocab_size=128, max_position_embeddings=64)
# Llama-3.2-1B's real sizes (1.24B parameters, tied embeddings, head_dim 64, llama3 RoPE scaling).
LLAMA32_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                  intermediate_size=8192, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                  rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                    original_max_position_embeddings=8192),
                  rms_norm_eps=1e-5, tie_word_embeddings=True)
TINY_LLAMA32 = dict(LLAMA32_1B, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=8, intermediate_size=64, vocab_size=128, max_position_embeddings=64)
DECODE_CONTENDERS = ("hf_torch_eager", "hf_torch_compile", "jimm_linen", "jimm_nnx", "legacy_hf_flax")
TRAIN_CONTENDERS = ("hf_torch_eager", "jimm_linen", "legacy_hf_flax")


def llm_suite(quick: bool = False) -> list[Workload]:
    """Greedy decode at batch 1 and 16 (128-token prompt, 128 new tokens), a 4 x 512 forward
    (bf16 too) and a 4 x 512 training step, on the 336M Llama and the Qwen3-0.6B shapes. Every
    decoder workload runs 1 round of 2 timed calls after the first (compile / warm-up) call:
    a 128-token generate is tens of seconds on 2 cores. `--quick`: the tiny configs, 8 + 8
    tokens, the Llama workloads only, the three contenders of the main environment."""
    fast = ("hf_torch_eager", "jimm_linen", "jimm_nnx")
    seq, new, long_seq = (8, 8, 16) if quick else (128, 128, 512)
    out = []
    for family, cfg in (("llama", TINY_LLAMA if quick else LLAMA_336M), ("qwen3", TINY_QWEN3 if quick else QWEN3_06B)):
        if quick and family != "llama":
            continue
        legacy = () if family != "llama" else ("legacy_hf_flax",)  # legacy HF Flax has no Qwen3

        def entries(names, extra=()):
            names = [n for n in names if n in fast or not quick]
            return _entries([n for n in names if n != "legacy_hf_flax" or legacy]) + tuple(extra)

        common = dict(model=family, rounds=1, steps=2, warmup=0)
        # torch's default is one thread per core; on a shared host one thread can be faster (its
        # OpenMP workers wait on each other), so batch-1 decode runs both ways.
        one_thread = () if quick else (Entry("hf_torch_eager", "hf_torch_eager+1thread",
                                             dict(env={"OMP_NUM_THREADS": "1"})),)
        # A generate call unstacks the scanned layers into fresh buffers (`CausalLM.decoding`),
        # and a training step allocates its temporaries afresh: both page-fault 4 KiB at a time.
        hugetlb = () if quick else tuple(Entry(c, f"{c}+hugetlb", dict(env=HUGETLB))
                                         for c in ("jimm_linen", "hf_torch_eager"))
        out += [
            Workload(f"{family}_decode_b1", "decode", cfg, 1, "float32",
                     entries(DECODE_CONTENDERS, one_thread + hugetlb), seq=seq, new_tokens=new, **common),
            Workload(f"{family}_decode_b16", "decode", cfg, 16 if not quick else 4, "float32",
                     entries(DECODE_CONTENDERS), seq=seq, new_tokens=new, **common),
            Workload(f"{family}_prefill", "prefill", cfg, 4, "float32", entries(DECODE_CONTENDERS), seq=long_seq,
                     **common),
            Workload(f"{family}_prefill_bf16", "prefill", cfg, 4, "bfloat16", entries(("hf_torch_eager", "jimm_linen")),
                     seq=long_seq, **common),
            Workload(f"{family}_train_step", "train", cfg, 4, "float32", entries(TRAIN_CONTENDERS, hugetlb + (
                () if quick else tuple(Entry("jimm_linen", f"jimm_linen+{p}", dict(remat=p))
                                       for p in ("dots_saveable", "minimal", "full")))), seq=long_seq, **common),
        ]
    return out


def decoder_matmul_params(cfg: dict[str, Any]) -> int:
    """Parameters a decoder's forward multiplies by: every projection of every layer and the LM
    head (a tied head is the embedding table, counted once, as the head); the input embedding
    (a lookup) and the norm weights are not counted."""
    d, layers, heads = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    dh = cfg.get("head_dim") or d // heads
    kv = cfg.get("num_key_value_heads") or heads
    per_layer = d * heads * dh * 2 + d * kv * dh * 2 + 3 * d * cfg["intermediate_size"]
    return layers * per_layer + d * cfg["vocab_size"]


def decoder_flops(cfg: dict[str, Any], batch: int, seq: int, train: bool) -> float:
    """Model FLOPs of a decoder forward over `batch` x `seq` tokens (multiply-add = 2 FLOPs,
    matmuls only):

        forward = 2 * P * batch * seq                   (P = `decoder_matmul_params`: q, k, v, o,
                                                         gate, up, down, LM head at every position)
                + 4 * L * batch * seq^2 * heads * head_dim   (q.k^T and probs.v, counted unmasked:
                                                              the usual MFU convention, though a causal
                                                              kernel could skip half)
        training step = 3 x forward (backward = 2 x forward; remat recomputation not counted).
    """
    heads = cfg["num_attention_heads"]
    dh = cfg.get("head_dim") or cfg["hidden_size"] // heads
    fwd = 2 * decoder_matmul_params(cfg) * batch * seq + 4 * cfg["num_hidden_layers"] * batch * seq * seq * heads * dh
    return float(fwd * (3 if train else 1))


def decode_bytes_per_step(cfg: dict[str, Any], batch: int, seq: int, new_tokens: int, dtype_bytes: int) -> float:
    """Bytes one greedy decode step must read at least: the weights it multiplies by
    (`decoder_matmul_params`) plus the live KV cache of every row at the mean length over the
    call, `seq + new_tokens / 2` positions (2 x layers x kv heads x head_dim values each)."""
    heads = cfg["num_attention_heads"]
    dh = cfg.get("head_dim") or cfg["hidden_size"] // heads
    kv = cfg.get("num_key_value_heads") or heads
    cache = batch * 2 * cfg["num_hidden_layers"] * kv * dh * (seq + new_tokens / 2)
    return float(dtype_bytes * (decoder_matmul_params(cfg) + cache))


def _backends(label: str = "jimm_linen") -> tuple[Entry, ...]:
    """jimm_linen once per tokamax GPU backend (`make_tokamax_attention(name)`)."""
    return tuple(Entry("jimm_linen", f"{label}+{b}", dict(attention=b)) for b in TOKAMAX_GPU_BACKENDS)


def gpu_suite(quick: bool = False) -> list[Workload]:
    """bf16 on one GPU: ViT-B/16 and ViT-L/16 training, ViT-B/16 inference, every tokamax
    backend on the ViT forward, then `gpu_decoder_workloads`. `--quick`: tiny configs."""
    b16, l16 = (TINY, TINY) if quick else (VIT_B16, VIT_L16)
    dev = dict(device="cuda")
    train_batch = 2 if quick else 128
    infer_batch = 2 if quick else 256
    backends = _backends()
    return [
        Workload("gpu_vit_b16_train_bf16", "train", b16, train_batch, "bfloat16",
                 (Entry("jimm_linen"), Entry("hf_torch_sdpa_compile", options=dev)), reference="hf_torch_sdpa_compile"),
        Workload("gpu_vit_l16_train_bf16", "train", l16, train_batch // 2, "bfloat16",
                 (Entry("jimm_linen"), Entry("hf_torch_sdpa_compile", options=dev)), reference="hf_torch_sdpa_compile"),
        Workload("gpu_vit_b16_infer_bf16", "infer", b16, infer_batch, "bfloat16",
                 (Entry("jimm_linen"), Entry("jimm_nnx"), Entry("hf_torch_sdpa_compile", options=dev)),
                 reference="hf_torch_sdpa_compile"),
        Workload("gpu_attention_backends_bf16", "infer", b16, infer_batch, "bfloat16",
                 (Entry("jimm_linen", "jimm_linen+default"),) + backends, reference="jimm_linen+default"),
    ] + gpu_decoder_workloads(quick)


def gpu_decoder_workloads(quick: bool = False) -> list[Workload]:
    """bf16 decoders at Llama-3.2-1B's and Qwen3-0.6B's sizes, per family:

    * `train`: 8 x 1024-token training step (MFU);
    * `prefill`: 8 x 1024-token forward, the default attention and every tokamax backend,
      checked against the default (jimm_linen);
    * `decode_b1`: greedy decode of 128 tokens after a 128-token prompt at batch 1 (share of the
      measured memory bandwidth);
    * `decode_b64`: the same at batch 64 (throughput), the default attention and every backend
      on the decode steps, checked against the default.

    Contenders beside jimm_linen: HF PyTorch on the GPU, eager and compiled (decode: static
    cache + `torch.compile`), and jimm_nnx where its program is not jimm_linen's own (prefill, and
    batch-1 decode, where its per-call overhead shows). One round; a decode call is a timed step.
    `--quick`: the tiny configs, 2 x 16 tokens, 8 + 8 tokens at batch 1 and 4."""
    seq, prompt, new = (16, 8, 8) if quick else (1024, 128, 128)
    batch, wide = (2, 4) if quick else (8, 64)
    dev = dict(device="cuda")
    hf = (Entry("hf_torch_eager", options=dev), Entry("hf_torch_compile", options=dev))
    out = []
    for family, name, cfg in (("llama", "llama32_1b", TINY_LLAMA32 if quick else LLAMA32_1B),
                              ("qwen3", "qwen3_06b", TINY_QWEN3 if quick else QWEN3_06B)):
        common = dict(model=family, rounds=1)
        out += [
            Workload(f"gpu_{name}_train_bf16", "train", cfg, batch, "bfloat16", (Entry("jimm_linen"),) + hf,
                     seq=seq, steps=5, warmup=1, **common),
            Workload(f"gpu_{name}_prefill_bf16", "prefill", cfg, batch, "bfloat16",
                     (Entry("jimm_linen"), Entry("jimm_nnx")) + _backends() + hf, reference="jimm_linen",
                     seq=seq, steps=5, warmup=1, **common),
            Workload(f"gpu_{name}_decode_b1_bf16", "decode", cfg, 1, "bfloat16",
                     (Entry("jimm_linen"), Entry("jimm_nnx")) + hf, seq=prompt, new_tokens=new, steps=3, warmup=0,
                     **common),
            Workload(f"gpu_{name}_decode_b64_bf16", "decode", cfg, wide, "bfloat16",
                     (Entry("jimm_linen"),) + _backends() + hf, reference="jimm_linen", seq=prompt, new_tokens=new,
                     steps=3, warmup=0, **common),
        ]
    return out


def vit_flops(cfg: dict[str, Any], batch: int, train: bool) -> float:
    """Model FLOPs of a ViT step (multiply-add = 2 FLOPs; matmuls only, the standard MFU count):

        T = (image/patch)^2 + 1 tokens, d = hidden, m = mlp, L = layers, P = patch^2 * channels
        forward per image = 2*T*L*(4*d^2 + 2*d*m)      (q, k, v, out and the two MLP matmuls)
                          + 4*L*T^2*d                  (q.k^T and probs.v)
                          + 2*(T-1)*P*d + 2*d*classes  (patch embedding, head)
        training step = 3 x forward (backward = 2 x forward), x batch.

    No remat; norms, softmax, GELU and the optimizer are not counted.
    """
    d, m, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    n = (cfg["image_size"] // cfg["patch_size"]) ** 2
    t = n + 1
    p = cfg["patch_size"] ** 2 * cfg.get("num_channels", 3)
    fwd = 2 * t * layers * (4 * d * d + 2 * d * m) + 4 * layers * t * t * d + 2 * n * p * d + 2 * d * cfg.get("num_labels", 0)
    return float(batch * fwd * (3 if train else 1))


def _encoder_flops(tokens: int, d: int, m: int, layers: int) -> float:
    """Forward FLOPs of `layers` transformer layers over `tokens` tokens (matmuls only)."""
    return 2 * tokens * layers * (4 * d * d + 2 * d * m) + 4 * layers * tokens * tokens * d


def clip_flops(cfg: dict[str, Any], batch: int) -> float:
    """Model FLOPs of a CLIPModel forward on `batch` images and `batch` texts, counted like
    `vit_flops` (matmuls only, multiply-add = 2 FLOPs):

        vision per image = 2*T*L*(4*d^2 + 2*d*m) + 4*L*T^2*d   (T = (image/patch)^2 + 1 tokens)
                         + 2*(T-1)*P*d + 2*d*proj              (patch embedding, visual projection)
        text per text    = 2*S*L*(4*d^2 + 2*d*m) + 4*L*S^2*d   (S = max_position_embeddings: every
                         + 2*d*proj                             row is full length; causal and padding
                                                                masks do not skip work), text projection
        logits           = 2*batch^2*proj                       (image embeds x text embeds^T)

    The token embedding lookup, norms, softmax, activations and the L2 normalisation are not counted.
    """
    v, t, proj = cfg["vision_config"], cfg["text_config"], cfg["projection_dim"]
    n = (v["image_size"] // v["patch_size"]) ** 2
    p = v["patch_size"] ** 2 * v.get("num_channels", 3)
    vision = (_encoder_flops(n + 1, v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"])
              + 2 * n * p * v["hidden_size"] + 2 * v["hidden_size"] * proj)
    text = (_encoder_flops(t["max_position_embeddings"], t["hidden_size"], t["intermediate_size"],
                           t["num_hidden_layers"]) + 2 * t["hidden_size"] * proj)
    return float(batch * (vision + text) + 2 * batch * batch * proj)


# Dense bf16 peak FLOP/s by device kind (vendor datasheets, no sparsity).
PEAK_BF16 = {"H100 80GB HBM3": 989e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def peak_flops(device_kind: str) -> float | None:
    for k, v in PEAK_BF16.items():
        if k in device_kind:
            return v
    return None
