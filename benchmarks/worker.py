"""One contender, one workload, in this process: `python -m benchmarks.worker SPEC.json`.

The parent (`benchmarks.run`) writes the spec (checkpoint directory, input files, task, steps)
and reads back one JSON line from stdout plus the contender's outputs (`<out>/check.npz`) for
the agreement check. This module imports only what the contender needs, because side-installed
contenders (legacy HF Flax on transformers 4.57.6, the `jimm` library) run it on a PYTHONPATH
where `jimm_linen` and transformers 5 must not be imported.

Decoder workloads (`--suite llm`) take their contenders from `benchmarks.llm`, whose `compile` is
the first call; the reported compile time is that first call minus the median steady one.

Timing protocol inside one process: build (load the checkpoint) -> compile (JAX: AOT
`lower().compile()`, timed; torch.compile: the first call, timed; torch eager: the first call)
-> `warmup` untimed steps -> `steps` timed steps, each run to completion
(`block_until_ready` / results on host). A training step is forward + cross-entropy on fixed
random labels + backward + AdamW (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01), with
parameters and optimizer state donated where the framework allows it.

Memory: `xla_peak_bytes` is XLA's `memory_analysis()` of the compiled step (arguments + outputs
- aliased (donated) + temporaries) for JAX contenders, None for torch; `max_rss_bytes` is the
process' peak resident set (`max_rss_bytes()`: VmHWM), for every contender (includes the framework itself
and the loaded checkpoint).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

LR, B1, B2, EPS, WD = 1e-3, 0.9, 0.999, 1e-8, 0.01


def _version(dist: str) -> str | None:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _versions(*dists: str) -> dict[str, str | None]:
    return {d: _version(d) for d in dists}


def max_rss_bytes() -> int:
    """This process' peak resident set: `VmHWM` of /proc/self/status, the high-water mark of
    the process' own address space. Not `getrusage`'s `ru_maxrss`: Linux carries that over from
    the parent through fork and exec, so a worker started by a parent holding a built checkpoint
    (1.5 GB for the 336M Llama) would report at least the parent's size."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Bench:
    """What a contender hands back: `compile()` -> seconds, `step()` runs one step to
    completion, `check()` -> {name: array} compared across contenders. A decode bench also has
    `first_token()`: the same generate call for one new token (its prefill and first step), so
    that the worker can tell the decode loop's steady step from a call's fixed cost."""

    def __init__(self, compile, step, check, versions, xla_peak_bytes=None, flops=None, first_token=None):
        self.compile, self.step, self.check = compile, step, check
        self.versions, self.xla_peak_bytes, self.flops = versions, xla_peak_bytes, flops
        self.first_token = first_token


# --- JAX helpers ---------------------------------------------------------------------------------

def _xla_peak(compiled) -> int | None:
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def _xla_flops(compiled) -> float | None:
    try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        return float(ca.get("flops")) if ca and ca.get("flops") else None
    except Exception:  # noqa: BLE001
        return None


def _ce(logits, labels):
    import jax.numpy as jnp
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()


def _adamw():
    import optax

    return optax.adamw(LR, b1=B1, b2=B2, eps=EPS, weight_decay=WD)


def _jax_apply_bench(spec, fwd_fn, params, x, labels, versions):
    """Inference or training bench around a pure `fwd_fn(params, x) -> logits` (jax.jit)."""
    import jax
    import numpy as np
    import optax

    state = {}
    if spec["task"] == "infer":
        jitted = jax.jit(fwd_fn)
        args = (params, x)

        def step():
            state["out"] = jax.block_until_ready(jitted(params, x))

        def check():
            return {"logits": np.asarray(jitted(params, x), np.float32)}
    else:
        tx = _adamw()
        opt_state = tx.init(params)

        def train_step(p, o, x, y):
            loss, grads = jax.value_and_grad(lambda p: _ce(fwd_fn(p, x), y))(p)
            updates, o = tx.update(grads, o, p)
            return optax.apply_updates(p, updates), o, loss

        jitted = jax.jit(train_step, donate_argnums=(0, 1))
        grad_fn = jax.jit(lambda p, x, y: jax.value_and_grad(lambda p: _ce(fwd_fn(p, x), y))(p))
        # Reference numbers from the initial parameters, before donation consumes them.
        loss0, g0 = grad_fn(params, x, labels)
        state["check"] = {"loss": np.asarray(loss0, np.float32),
                          "grad_norm": np.asarray(optax.tree.norm(g0), np.float32)}
        del g0
        state.update(p=params, o=opt_state)
        args = (params, opt_state, x, labels)

        def step():
            state["p"], state["o"], loss = jitted(state["p"], state["o"], x, labels)
            state.setdefault("first_loss", np.asarray(loss, np.float32))
            jax.block_until_ready(state["p"])

        def check():
            return {**state["check"], "first_step_loss": state["first_loss"]}

    holder = {}

    def compile_():
        t0 = time.perf_counter()
        holder["c"] = jitted.lower(*args).compile()
        return time.perf_counter() - t0

    bench = Bench(compile_, step, check, versions)
    bench._holder = holder
    return bench


def _finish_jax(bench):
    c = bench._holder.get("c")
    if c is not None:
        bench.xla_peak_bytes, bench.flops = _xla_peak(c), _xla_flops(c)


# --- contenders ----------------------------------------------------------------------------------

def _load_inputs(spec, layout: str):
    import numpy as np

    images = np.load(spec["images"])  # NCHW float32, as HF takes them
    labels = np.load(spec["labels"]).astype(np.int32)
    if layout == "nhwc":
        images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    return images, labels


def _jax_dtype(spec):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[spec["dtype"]]


def _attention(spec):
    name = spec.get("attention") or "default"
    if name == "default":
        return None
    import jimm_linen

    return jimm_linen.make_tokamax_attention(name)


def jimm_linen_bench(spec) -> Bench:
    import jax.numpy as jnp

    import jimm_linen

    images, labels = _load_inputs(spec, "nhwc")
    dtype = _jax_dtype(spec)
    model, variables = jimm_linen.from_pretrained(
        spec["checkpoint"], attention_fn=_attention(spec), dtype=dtype, scan=spec.get("scan", True),
        remat_policy=spec.get("remat", "none"))
    x = jnp.asarray(images, dtype)

    def fwd(p, x):
        return model.apply({"params": p}, x)

    return _jax_apply_bench(spec, fwd, variables["params"], x, jnp.asarray(labels),
                            _versions("jax", "jaxlib", "flax", "optax"))


def jimm_nnx_bench(spec) -> Bench:
    import jax.numpy as jnp

    import jimm_nnx

    images, labels = _load_inputs(spec, "nhwc")
    dtype = _jax_dtype(spec)
    model = jimm_nnx.VisionTransformer.from_pretrained(
        spec["checkpoint"], sharding=jimm_nnx.NoSharding(), attention_fn=_attention(spec), dtype=dtype,
        scan=spec.get("scan", True))
    return _nnx_bench(spec, model, jnp.asarray(images, dtype), jnp.asarray(labels),
                      _versions("jax", "jaxlib", "flax", "optax"), graph=spec.get("graph", False))


def _nnx_bench(spec, model, x, y, versions, call=lambda m, x: m(x), graph: bool = True) -> Bench:
    """Inference / training bench for an `nnx.Module` through `nnx.jit`.

    `graph=True` is `nnx.jit`'s default graph mode, which returns every variable of the
    modules passed in as outputs: without donation that is a copy of all parameters per call
    (346 MB for ViT-B/16, 6-7% of a CPU forward). `graph=False` (tree mode) returns only what
    the function returns, like `jax.jit`."""
    import jax
    import numpy as np
    import optax
    from flax import nnx

    state = {}
    if spec["task"] == "infer":
        fwd = nnx.jit(call, graph=graph)
        args = (model, x)

        def step():
            jax.block_until_ready(fwd(model, x))

        def check():
            return {"logits": np.asarray(fwd(model, x), np.float32)}
    else:
        optimizer = nnx.Optimizer(model, _adamw(), wrt=nnx.Param)

        def loss_fn(m, x, y):
            return _ce(call(m, x), y)

        @functools.partial(nnx.jit, graph=graph)
        def grads_of(m, x, y):
            loss, g = nnx.value_and_grad(loss_fn)(m, x, y)
            return loss, optax.tree.norm(g)

        loss0, gn = grads_of(model, x, y)
        state["check"] = {"loss": np.asarray(loss0, np.float32), "grad_norm": np.asarray(gn, np.float32)}

        def train_step(m, opt, x, y):
            loss, g = nnx.value_and_grad(loss_fn)(m, x, y)
            opt.update(m, g)
            return loss

        fwd = nnx.jit(train_step, donate_argnums=(0, 1), graph=graph)
        args = (model, optimizer, x, y)

        def step():
            loss = fwd(model, optimizer, x, y)
            state.setdefault("first_loss", np.asarray(loss, np.float32))
            jax.block_until_ready(nnx.state(model, nnx.Param))

        def check():
            return {**state["check"], "first_step_loss": state["first_loss"]}

    holder = {}

    def compile_():
        t0 = time.perf_counter()
        holder["c"] = fwd.lower(*args).compile()
        return time.perf_counter() - t0

    bench = Bench(compile_, step, check, versions)
    bench._holder = holder
    return bench


def _jimm_lib_model(cls, spec, dtype):
    """`cls.from_pretrained` of the `jimm` library under a 1-device ("fsdp",) mesh (it shards
    its parameters over that axis), in eval mode: its dropout_rate defaults to 0.1 where HF's
    checkpoint says 0.0. Returns the model and the mesh."""
    import jax
    import jax.numpy as jnp

    mesh = jax.make_mesh((1,), ("fsdp",), devices=jax.devices()[:1])
    jax.set_mesh(mesh)  # global: every later trace sees it
    model = cls.from_pretrained(spec["checkpoint"], dtype=dtype, param_dtype=jnp.float32)
    model.eval()
    return model, mesh


def jimm_lib_bench(spec) -> Bench:
    """The `jimm` NNX library (PyPI jax-image-models), side-installed. It shards its parameters
    over a mesh axis named `fsdp`, so it runs under a 1-device ("fsdp",) mesh."""
    import jax.numpy as jnp

    import jimm

    images, labels = _load_inputs(spec, "nhwc")
    dtype = _jax_dtype(spec)
    model, _ = _jimm_lib_model(jimm.VisionTransformer, spec, dtype)
    return _nnx_bench(spec, model, jnp.asarray(images, dtype), jnp.asarray(labels),
                      {**_versions("jax", "jaxlib", "flax", "optax"), "jax-image-models": jimm.__version__})


def legacy_hf_flax_bench(spec) -> Bench:
    """`transformers==4.57.6` FlaxViTForImageClassification (side-installed), `from_pt=True`
    from the same safetensors file; `jax.jit` of a function of its params."""
    import jax.numpy as jnp
    import transformers
    from transformers import FlaxViTForImageClassification
    from transformers.utils import logging

    logging.set_verbosity_error()
    images, labels = _load_inputs(spec, "nchw")  # the HF Flax ViT takes NCHW and transposes inside
    dtype = _jax_dtype(spec)
    model = FlaxViTForImageClassification.from_pretrained(spec["checkpoint"], from_pt=True, dtype=dtype)

    def fwd(p, x):
        return model(x, params=p, train=False).logits

    return _jax_apply_bench(spec, fwd, model.params, jnp.asarray(images, dtype), jnp.asarray(labels),
                            {**_versions("jax", "jaxlib", "flax", "optax"), "transformers": transformers.__version__})


def _torch_setup(spec, attn: str | None):
    """`(dtype, device, from_pretrained kwargs, sync)` of a torch contender."""
    import torch

    device = spec.get("device", "cpu")
    sync = (lambda: torch.cuda.synchronize()) if device.startswith("cuda") else (lambda: None)
    kw = {"attn_implementation": attn} if attn else {}
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[spec["dtype"]], device, kw, sync


def _first_call_timer(step):
    """A torch contender's `compile`: the first call (eager: allocator and caches;
    torch.compile: tracing + inductor)."""
    def compile_():
        t0 = time.perf_counter()
        step()
        return time.perf_counter() - t0

    return compile_


def _torch_bench(spec, compiled: bool, attn: str | None = None) -> Bench:
    import numpy as np
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import AutoModelForImageClassification
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    images, labels = _load_inputs(spec, "nchw")
    tdtype, device, kw, sync = _torch_setup(spec, attn)
    model = AutoModelForImageClassification.from_pretrained(spec["checkpoint"], dtype=tdtype, **kw).to(device)
    x = torch.from_numpy(images).to(device, tdtype)
    y = torch.from_numpy(labels.astype(np.int64)).to(device)
    versions = _versions("torch", "transformers")
    state = {}
    if spec["task"] == "infer":
        model.eval()
        fwd = torch.compile(model) if compiled else model

        def step():
            with torch.inference_mode():
                state["out"] = fwd(pixel_values=x).logits
            sync()

        def check():
            with torch.inference_mode():
                return {"logits": fwd(pixel_values=x).logits.float().cpu().numpy()}
    else:
        model.train()  # the checkpoint's dropout probabilities are 0: same math as eval
        opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(B1, B2), eps=EPS, weight_decay=WD)

        def loss_fn(x, y):
            return F.cross_entropy(model(pixel_values=x).logits.float(), y)

        lf = torch.compile(loss_fn) if compiled else loss_fn
        loss0 = loss_fn(x, y)
        loss0.backward()
        gn = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None))
        state["check"] = {"loss": np.float32(loss0.item()), "grad_norm": np.float32(gn.item())}
        opt.zero_grad(set_to_none=True)

        def step():
            loss = lf(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            state.setdefault("first_loss", np.float32(loss.item()))
            sync()

        def check():
            return {**state["check"], "first_step_loss": state["first_loss"]}

    return Bench(_first_call_timer(step), step, check, {**versions, "transformers": transformers.__version__})


CONTENDERS = {
    "jimm_linen": jimm_linen_bench,
    "jimm_nnx": jimm_nnx_bench,
    "hf_torch_eager": lambda spec: _torch_bench(spec, compiled=False),
    "hf_torch_compile": lambda spec: _torch_bench(spec, compiled=True),
    "hf_torch_sdpa_compile": lambda spec: _torch_bench(spec, compiled=True, attn="sdpa"),
    "legacy_hf_flax": legacy_hf_flax_bench,
    "jimm_lib": jimm_lib_bench,
}


# --- CLIP image-text workloads (spec["model"] == "clip") ------------------------------------------
# A CLIPModel checkpoint, NCHW images (`spec["images"]`) and as many texts (`spec["text"]`: an
# .npz of int64 `input_ids` and `attention_mask`); inference only. Each builder reuses the ViT
# benches' machinery with the model's inputs as one tuple and hands back `logits_per_image`.

CLIP_OUTPUT = "logits_per_image"


def _clip_inputs(spec, layout: str):
    """`(images, input_ids, attention_mask)` as numpy arrays, images in `layout`."""
    import numpy as np

    if spec["task"] != "infer":
        raise ValueError(f"CLIP workloads are inference only, not {spec['task']!r}")
    images = np.load(spec["images"])  # NCHW float32, as HF takes them
    if layout == "nhwc":
        images = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    text = np.load(spec["text"])
    return images, text["input_ids"], text["attention_mask"]


def _clip_output(bench: Bench) -> Bench:
    """The ViT benches record their output as `logits`; here it is `logits_per_image`."""
    check = bench.check
    bench.check = lambda: {CLIP_OUTPUT: check()["logits"]}
    return bench


def jimm_linen_clip_bench(spec) -> Bench:
    import jax.numpy as jnp

    import jimm_linen

    images, ids, mask = _clip_inputs(spec, "nhwc")
    dtype = _jax_dtype(spec)
    model, variables = jimm_linen.from_pretrained(spec["checkpoint"], attention_fn=_attention(spec), dtype=dtype,
                                                  scan=spec.get("scan", True))
    x = (jnp.asarray(images, dtype), jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))

    def fwd(p, x):
        return model.apply({"params": p}, *x).logits_per_image

    return _clip_output(_jax_apply_bench(spec, fwd, variables["params"], x, None,
                                         _versions("jax", "jaxlib", "flax", "optax")))


def jimm_nnx_clip_bench(spec) -> Bench:
    import jax.numpy as jnp

    import jimm_nnx

    images, ids, mask = _clip_inputs(spec, "nhwc")
    dtype = _jax_dtype(spec)
    model = jimm_nnx.CLIP.from_pretrained(spec["checkpoint"], sharding=jimm_nnx.NoSharding(),
                                          attention_fn=_attention(spec), dtype=dtype, scan=spec.get("scan", True))
    x = (jnp.asarray(images, dtype), jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))
    return _clip_output(_nnx_bench(spec, model, x, None, _versions("jax", "jaxlib", "flax", "optax"),
                                   call=lambda m, x: m(x[0], x[1], attention_mask=x[2]), graph=spec.get("graph", False)))


def jimm_lib_clip_bench(spec) -> Bench:
    """`jimm.CLIP` (side-installed PyPI jax-image-models) under a 1-device ("fsdp",) mesh, as
    `jimm_lib_bench`. Its `__call__(image, text)` returns logits_per_image; it takes no
    attention_mask (its text tower is causal and pools at the largest token id, the EOS).

    Like `model.eval()` in `jimm_lib_bench`, one setting is brought back to the checkpoint's:
    jimm 0.4.0 builds the text tower's per-layer LayerNorms with its `Transformer` default eps
    1e-6 (it passes 1e-5 only to the vision tower and `ln_final`), where the checkpoint says
    `text_config.layer_norm_eps` (1e-5). With random-init weights (activations ~0.02) that alone
    moves logits_per_image by ~5e-3 relative; with it set they agree to ~5e-7. A scalar
    constant: the compiled work is the same."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import jimm

    images, ids, _ = _clip_inputs(spec, "nhwc")
    dtype = _jax_dtype(spec)
    model, mesh = _jimm_lib_model(jimm.CLIP, spec, dtype)
    text_eps = json.loads((Path(spec["checkpoint"]) / "config.json").read_text())["text_config"].get(
        "layer_norm_eps", 1e-5)
    for _, m in nnx.iter_graph(model.text_model):
        if isinstance(m, nnx.LayerNorm):
            m.epsilon = text_eps
    # On the mesh explicitly: `jnp.asarray` of a float32 numpy array leaves it off the mesh (an
    # empty abstract mesh), and CLIP's patch embedding has no bias that would bring the mesh in,
    # so the class token's `reshard_like(cls, patches)` fails.
    on_mesh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    x = jax.device_put((jnp.asarray(images, dtype), jnp.asarray(ids, jnp.int32)), on_mesh)
    versions = {**_versions("jax", "jaxlib", "flax", "optax"), "jax-image-models": jimm.__version__}
    return _clip_output(_nnx_bench(spec, model, x, None, versions, call=lambda m, x: m(*x)))


def legacy_hf_flax_clip_bench(spec) -> Bench:
    """`transformers==4.57.6` FlaxCLIPModel (side-installed), `from_pt=True` from the same
    safetensors file; `jax.jit` of a function of its params."""
    import jax.numpy as jnp
    import transformers
    from transformers import FlaxCLIPModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    images, ids, mask = _clip_inputs(spec, "nchw")  # HF Flax CLIP takes NCHW and transposes inside
    dtype = _jax_dtype(spec)
    model = FlaxCLIPModel.from_pretrained(spec["checkpoint"], from_pt=True, dtype=dtype)
    x = (jnp.asarray(images, dtype), jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))

    def fwd(p, x):
        images, ids, mask = x
        return model(input_ids=ids, pixel_values=images, attention_mask=mask, params=p, train=False).logits_per_image

    return _clip_output(_jax_apply_bench(spec, fwd, model.params, x, None,
                                         {**_versions("jax", "jaxlib", "flax", "optax"),
                                          "transformers": transformers.__version__}))


def _torch_clip_bench(spec, compiled: bool, attn: str | None = None) -> Bench:
    import torch
    import transformers
    from transformers import CLIPModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    images, ids, mask = _clip_inputs(spec, "nchw")
    tdtype, device, kw, sync = _torch_setup(spec, attn)
    model = CLIPModel.from_pretrained(spec["checkpoint"], dtype=tdtype, **kw).to(device).eval()
    inputs = dict(pixel_values=torch.from_numpy(images).to(device, tdtype),
                  input_ids=torch.from_numpy(ids).to(device), attention_mask=torch.from_numpy(mask).to(device))
    fwd = torch.compile(model) if compiled else model

    def step():
        with torch.inference_mode():
            fwd(**inputs).logits_per_image
        sync()

    def check():
        with torch.inference_mode():
            return {CLIP_OUTPUT: fwd(**inputs).logits_per_image.float().cpu().numpy()}

    return Bench(_first_call_timer(step), step, check, _versions("torch", "transformers") | {"transformers": transformers.__version__})


CLIP_CONTENDERS = {
    "jimm_linen": jimm_linen_clip_bench,
    "jimm_nnx": jimm_nnx_clip_bench,
    "hf_torch_eager": lambda spec: _torch_clip_bench(spec, compiled=False),
    "hf_torch_compile": lambda spec: _torch_clip_bench(spec, compiled=True),
    "hf_torch_sdpa_compile": lambda spec: _torch_clip_bench(spec, compiled=True, attn="sdpa"),
    "legacy_hf_flax": legacy_hf_flax_clip_bench,
    "jimm_lib": jimm_lib_clip_bench,
}


def compile_only(spec) -> dict:
    """AOT compile time of jimm_linen's forward or training step from abstract parameters (no
    checkpoint: weights do not change what XLA compiles)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    import jimm_linen

    cfg = jimm_linen.ViTConfig.from_hf_config(dict(spec["hf_config"], num_hidden_layers=spec["depth"]))
    model = jimm_linen.ViT(cfg, attention_fn=_attention(spec), scan=spec["scan"])
    x = jax.ShapeDtypeStruct((spec["batch"], cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32)
    y = jax.ShapeDtypeStruct((spec["batch"],), jnp.int32)
    params = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros(x.shape)))["params"])
    if spec["compile_task"] == "infer":
        fn, args, donate = (lambda p, x: model.apply({"params": p}, x)), (params, x), ()
    else:
        tx = _adamw()

        def fn(p, o, x, y):
            loss, g = jax.value_and_grad(lambda p: _ce(model.apply({"params": p}, x), y))(p)
            u, o = tx.update(g, o, p)
            return optax.apply_updates(p, u), o, loss

        args, donate = (params, jax.eval_shape(tx.init, params), x, y), (0, 1)
    t0 = time.perf_counter()
    lowered = jax.jit(fn, donate_argnums=donate).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return dict(contender=spec["contender"], versions=_versions("jax", "jaxlib", "flax"), compile_s=t2 - t0,
                lower_s=t1 - t0, xla_compile_s=t2 - t1, xla_peak_bytes=_xla_peak(compiled),
                max_rss_bytes=max_rss_bytes(), pid=os.getpid())


def _timed(fn, n: int) -> list[float]:
    """Seconds of each of `n` calls of `fn`."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def run(spec: dict) -> dict:
    if spec.get("fail"):  # test hook: a contender whose process fails
        raise SystemExit("this contender fails on purpose (--fail)")
    if spec["task"] == "compile":
        return compile_only(spec)
    t0 = time.perf_counter()
    decoder = spec.get("model") not in (None, "vit", "clip")
    if decoder:
        from benchmarks import llm

        builders = llm.CONTENDERS
    else:
        builders = CLIP_CONTENDERS if spec.get("model") == "clip" else CONTENDERS
    bench = builders[spec["contender"]](spec)
    load_s = time.perf_counter() - t0
    compile_s = bench.compile()
    if hasattr(bench, "_holder"):
        _finish_jax(bench)
    for _ in range(spec["warmup"]):
        bench.step()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = _timed(bench.step, spec["steps"])
    minor_faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / spec["steps"]
    check = bench.check()
    first_token_times = []
    if bench.first_token is not None:  # after the check: it keeps the last full call's output
        bench.first_token()  # compiles the one-token program
        first_token_times = _timed(bench.first_token, spec["steps"])
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    import numpy as np

    if spec.get("corrupt"):  # test hook: a deliberately wrong output must be rejected
        check = {k: np.asarray(v) * 1.01 + 0.01 for k, v in check.items()}
    np.savez(out / "check.npz", **check)
    med = statistics.median(times)
    first_call_s = None
    if decoder:  # `compile` was the first call
        first_call_s, compile_s = compile_s, llm.first_call_compile(compile_s, med)
    device_kind = None
    if "jax" in sys.modules:
        device_kind = sys.modules["jax"].devices()[0].device_kind
    elif spec.get("device", "cpu").startswith("cuda"):
        device_kind = sys.modules["torch"].cuda.get_device_name()
    return dict(
        device_kind=device_kind, contender=spec["contender"], versions=bench.versions, load_s=load_s,
        compile_s=compile_s,
        median_s=med, min_s=min(times), max_s=max(times), times_s=times,
        throughput=spec["batch"] / med, xla_peak_bytes=bench.xla_peak_bytes,
        max_rss_bytes=max_rss_bytes(), xla_flops=bench.flops,
        minor_faults_per_step=minor_faults, pid=os.getpid(), first_call_s=first_call_s,
        first_token_times_s=first_token_times or None,
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    print("RESULT " + json.dumps(run(spec)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
