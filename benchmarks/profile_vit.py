"""Where a ViT-B/16 block's time goes, in jimm_linen (XLA) and in PyTorch, op by op.

    python -m benchmarks.profile_vit                     # component table, batch 8, float32
    python -m benchmarks.profile_vit --hlo /tmp/hlo      # + the optimised HLO of the full forward / train step
    python -m benchmarks.profile_vit --trace /tmp/trace  # + a jax.profiler trace of 3 forward steps

Each component is jitted on its own at the block's real shapes (the same functions the model
uses), timed as the median of `--steps` runs after a warm-up, next to the PyTorch op HF's
`ViTLayer` uses. The sum of components is close to a block's time, so the table shows what
to fix first.
"""

from __future__ import annotations

import argparse
import statistics
import time


def _timeit(fn, steps):
    fn()
    fn()
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def components(batch=8, tokens=197, d=768, heads=12, mlp=3072, steps=20):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import torch.nn.functional as F

    from jimm_linen.activations import get_activation
    from jimm_linen.layers.attention_fns import dot_product_attention

    h = d // heads
    rng = np.random.RandomState(0)
    x = rng.randn(batch, tokens, d).astype(np.float32)
    w_dd = (rng.randn(d, d) * 0.02).astype(np.float32)
    w_dm = (rng.randn(d, mlp) * 0.02).astype(np.float32)
    w_md = (rng.randn(mlp, d) * 0.02).astype(np.float32)
    hid = rng.randn(batch, tokens, mlp).astype(np.float32)
    q = rng.randn(batch, tokens, heads, h).astype(np.float32)
    jx, jq, jh = jnp.asarray(x), jnp.asarray(q), jnp.asarray(hid)
    gelu = get_activation("gelu")

    def ln(x):
        m = x.mean(-1, keepdims=True)
        c = x - m
        return c * jax.lax.rsqrt((c * c).mean(-1, keepdims=True) + 1e-12)

    jax_ops = {
        "dense d->d (x4 per block)": (jax.jit(lambda x, w: x @ w), (jx, jnp.asarray(w_dd))),
        "dense d->mlp": (jax.jit(lambda x, w: x @ w), (jx, jnp.asarray(w_dm))),
        "dense mlp->d": (jax.jit(lambda x, w: x @ w), (jh, jnp.asarray(w_md))),
        "attention core (q,k,v -> o)": (jax.jit(lambda q: dot_product_attention(q, q * 0.5, q)), (jq,)),
        "exact GELU on [B,T,mlp]": (jax.jit(gelu), (jh,)),
        "LayerNorm (x2 per block)": (jax.jit(ln), (jx,)),
    }
    tx, tq, th = torch.from_numpy(x), torch.from_numpy(q), torch.from_numpy(hid)
    tqt = tq.transpose(1, 2)
    lin = {k: torch.from_numpy(np.ascontiguousarray(v.T)) for k, v in (("dd", w_dd), ("dm", w_dm), ("md", w_md))}
    torch_ops = {
        "dense d->d (x4 per block)": lambda: F.linear(tx, lin["dd"]),
        "dense d->mlp": lambda: F.linear(tx, lin["dm"]),
        "dense mlp->d": lambda: F.linear(th, lin["md"]),
        "attention core (q,k,v -> o)": lambda: F.scaled_dot_product_attention(tqt, tqt * 0.5, tqt),
        "exact GELU on [B,T,mlp]": lambda: F.gelu(th),
        "LayerNorm (x2 per block)": lambda: F.layer_norm(tx, (d,), eps=1e-12),
    }
    per_block = {"dense d->d (x4 per block)": 4, "LayerNorm (x2 per block)": 2}
    rows = []
    with torch.inference_mode():
        for name, (fn, args) in jax_ops.items():
            tj = _timeit(lambda: jax.block_until_ready(fn(*args)), steps)
            tt = _timeit(torch_ops[name], steps)
            rows.append((name, per_block.get(name, 1), tj, tt))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--hlo", help="dump the optimised HLO of the forward and train step here")
    p.add_argument("--trace", help="write a jax.profiler trace of 3 forward steps here")
    args = p.parse_args(argv)
    rows = components(args.batch, steps=args.steps)
    print("| component (ViT-B/16 block, batch %d) | per block | jimm (ms) | torch (ms) | jimm/torch |" % args.batch)
    print("|---|---|---|---|---|")
    tj = tt = 0.0
    for name, n, a, b in rows:
        tj, tt = tj + n * a, tt + n * b
        print(f"| {name} | x{n} | {a * 1e3:.2f} | {b * 1e3:.2f} | {a / b:.2f} |")
    print(f"| sum per block | | {tj * 1e3:.1f} | {tt * 1e3:.1f} | {tj / tt:.2f} |")
    if args.hlo or args.trace:
        _dump(args)


def _dump(args):
    from pathlib import Path

    import jax
    import jax.numpy as jnp
    import optax

    import jimm_linen
    from benchmarks.workloads import VIT_B16

    cfg = jimm_linen.ViTConfig.from_hf_config(dict(VIT_B16))
    model = jimm_linen.ViT(cfg)
    x = jnp.zeros((args.batch, 224, 224, 3))
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda a: getattr(a, "value", a), params, is_leaf=lambda a: hasattr(a, "value"))
    fwd = jax.jit(lambda p, x: model.apply({"params": p}, x))
    if args.hlo:
        out = Path(args.hlo)
        out.mkdir(parents=True, exist_ok=True)
        (out / "forward.hlo.txt").write_text(fwd.lower(params, x).compile().as_text())
        tx = optax.adamw(1e-3, weight_decay=0.01)

        def step(p, o, x, y):
            loss, g = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
                model.apply({"params": p}, x), y).mean())(p)
            u, o = tx.update(g, o, p)
            return optax.apply_updates(p, u), o, loss

        y = jnp.zeros((args.batch,), jnp.int32)
        (out / "train_step.hlo.txt").write_text(
            jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), x, y).compile().as_text())
        print(f"HLO written to {out}")
    if args.trace:
        jax.block_until_ready(fwd(params, x))
        with jax.profiler.trace(args.trace):
            for _ in range(3):
                jax.block_until_ready(fwd(params, x))
        print(f"trace written to {args.trace}")


if __name__ == "__main__":
    main()
