"""Strict conversion between HF state dicts and Linen parameter trees, driven by one key table.

A family describes its checkpoint with `Rule`s: an HF key template, a Linen path template (in
the loop layout, `encoderblock_{i}`) and a `Transform` that knows both directions. The HF ->
Linen direction and the Linen -> HF direction are both derived from the same rules.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint does not match the model; the message names every offending key."""


class CheckpointFileError(CheckpointError):
    """A checkpoint file cannot be read: truncated, damaged, or not the format its name says.
    The message names the file and what is wrong with it; the reader's own error is chained."""


# --- transforms ---------------------------------------------------------------------------

Index = tuple[slice, ...]  # a box of a tensor: one `slice(start, stop)` per dim


@dataclasses.dataclass(frozen=True)
class Transform:
    """Identity: the HF tensor has the Linen shape."""

    def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def to_linen(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return x

    def to_hf(self, y: np.ndarray) -> np.ndarray:
        return y

    def perm(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """`perm` such that the Linen tensor is `hf.transpose(perm).reshape(shape)`, or None
        when it is not of that form."""
        # A subclass that converts with its own `to_linen` and says nothing here is not known
        # to be a transpose and reshape; its tensors are read whole.
        return tuple(range(len(shape))) if type(self).to_linen is Transform.to_linen else None

    def read_region(self, read: Callable[[Index], np.ndarray], shape: tuple[int, ...],
                    index: Index) -> np.ndarray:
        """The box `index` (concrete `slice(start, stop)`s) of the Linen tensor of `shape`,
        reading the HF tensor only through `read(hf_index)`: just the block that covers the
        box where the transform is a transpose and reshape, the whole tensor otherwise."""
        hf_shape = self.hf_shape(tuple(shape))
        perm = self.perm(tuple(shape))
        groups = None if perm is None else _split_dims(tuple(hf_shape[p] for p in perm), tuple(shape))
        if groups is None:
            whole = tuple(slice(0, d) for d in hf_shape)
            return np.ascontiguousarray(self.to_linen(read(whole), tuple(shape))[index])
        return _read_split(read, perm, groups, tuple(shape), index)


@dataclasses.dataclass(frozen=True)
class Flatten(Transform):
    """HF keeps a flat vector (e.g. a `(heads*kv,)` bias) that Linen splits."""

    def hf_shape(self, shape):
        return (math.prod(shape),)

    def to_linen(self, x, shape):
        return x.reshape(shape)

    def to_hf(self, y):
        return y.reshape(-1)

    def perm(self, shape):
        return (0,)


@dataclasses.dataclass(frozen=True)
class LinearKernel(Transform):
    """torch `Linear.weight` `(out, in)` <-> Linen kernel `in_dims + out_dims`, where the
    first `in_dims` Linen dims are the (possibly split) input features."""

    in_dims: int = 1

    def _split(self, shape):
        return math.prod(shape[: self.in_dims]), math.prod(shape[self.in_dims:])

    def hf_shape(self, shape):
        n_in, n_out = self._split(shape)
        return (n_out, n_in)

    def to_linen(self, x, shape):
        return np.ascontiguousarray(x.T).reshape(shape)

    def to_hf(self, y):
        n_in, n_out = self._split(y.shape)
        return np.ascontiguousarray(y.reshape(n_in, n_out).T)

    def perm(self, shape):
        return (1, 0)


@dataclasses.dataclass(frozen=True)
class ConvKernel(Transform):
    """torch `Conv2d.weight` `(out, in, kh, kw)` <-> Linen `(kh, kw, in, out)`."""

    def hf_shape(self, shape):
        kh, kw, cin, cout = shape
        return (cout, cin, kh, kw)

    def to_linen(self, x, shape):
        return np.ascontiguousarray(x.transpose(2, 3, 1, 0))

    def to_hf(self, y):
        return np.ascontiguousarray(y.transpose(3, 2, 0, 1))

    def perm(self, shape):
        return (2, 3, 1, 0)


@dataclasses.dataclass(frozen=True)
class DropLeading(Transform):
    """HF stores without the `n` leading singleton dims the Linen parameter has (e.g. CLIP's
    `(positions, embed)` position table vs Linen `(1, positions, embed)`)."""

    n: int = 1

    def hf_shape(self, shape):
        if any(d != 1 for d in shape[: self.n]):
            raise ValueError(f"DropLeading({self.n}): leading dims of {shape} are not 1")
        return tuple(shape[self.n:])

    def to_linen(self, x, shape):
        return x.reshape(shape)

    def to_hf(self, y):
        return y.reshape(y.shape[self.n:])

    def perm(self, shape):
        return tuple(range(len(shape) - self.n))


@dataclasses.dataclass(frozen=True)
class Fused(Transform):
    """One of `parts` equal slices, along dim 0, of an HF tensor that fuses several Linen
    parameters (torch `MultiheadAttention.in_proj_weight` is query, key and value stacked);
    `inner` converts the slice. Writing concatenates the parts in order (`linen_to_hf`)."""

    inner: Transform = Transform()
    part: int = 0
    parts: int = 1

    def hf_shape(self, shape):
        piece = self.inner.hf_shape(shape)
        return (piece[0] * self.parts, *piece[1:])

    def to_linen(self, x, shape):
        n = x.shape[0] // self.parts
        return self.inner.to_linen(x[self.part * n:(self.part + 1) * n], shape)

    def to_hf(self, y):
        return self.inner.to_hf(y)

    def read_region(self, read, shape, index):
        offset = self.part * self.inner.hf_shape(tuple(shape))[0]

        def read_part(hf_index):
            rows = hf_index[0]
            return read((slice(rows.start + offset, rows.stop + offset), *hf_index[1:]))

        return self.inner.read_region(read_part, shape, index)


def _split_dims(t_shape: tuple[int, ...], shape: tuple[int, ...]) -> list[list[int]] | None:
    """For a row-major reshape of `t_shape` into `shape`: the consecutive dims of `shape` each
    dim of `t_shape` splits into (a size-1 dim may get none; trailing size-1 dims of `shape`
    join the last group), or None if the reshape also merges dims."""
    groups, d = [], 0
    for size in t_shape:
        group, prod = [], 1
        while d < len(shape) and prod < size:
            prod *= shape[d]
            group.append(d)
            d += 1
        if prod != size:
            return None
        groups.append(group)
    rest = list(range(d, len(shape)))
    if any(shape[i] != 1 for i in rest) or (rest and not groups):
        return None
    if rest:
        groups[-1] += rest
    return groups


def _read_split(read, perm, groups, shape, index) -> np.ndarray:
    """`read_region` for `hf.transpose(perm).reshape(shape)`: for each HF dim, the rows its
    group's leading Linen dim covers (exact when only that dim is sliced, which is how the
    kernels shard: heads lead their `(heads, kv)` group), then the box within them."""
    hf_index: list[slice] = [slice(0, 1)] * len(perm)
    block_shape, local = [], []
    for j, group in enumerate(groups):
        if not group:
            continue  # a size-1 HF dim no Linen dim comes from
        # Size-1 dims in front (DropLeading's) do not lead: the first real dim does.
        k = next((i for i, d in enumerate(group) if shape[d] != 1), len(group) - 1)
        lead, rest = index[group[k]], [shape[d] for d in group[k + 1:]]
        inner = math.prod(rest)
        hf_index[perm[j]] = slice(lead.start * inner, lead.stop * inner)
        block_shape += [1] * k + [lead.stop - lead.start, *rest]
        local += [slice(0, 1)] * k + [slice(0, lead.stop - lead.start), *(index[d] for d in group[k + 1:])]
    block = read(tuple(hf_index)).transpose(perm).reshape(block_shape)
    return np.ascontiguousarray(block[tuple(local)])


IDENTITY = Transform()
FLATTEN = Flatten()


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str  # e.g. "vit.encoder.layer.{i}.attention.attention.query.weight"
    linen: str  # e.g. "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/query/kernel"
    transform: Transform = IDENTITY


# Rule builders shared by the families' key tables.

def linear(hf: str, linen: str, in_dims: int = 1, flat_bias: bool = False) -> list[Rule]:
    return [Rule(f"{hf}.weight", f"{linen}/kernel", LinearKernel(in_dims)),
            Rule(f"{hf}.bias", f"{linen}/bias", FLATTEN if flat_bias else IDENTITY)]


def norm(hf: str, linen: str) -> list[Rule]:
    return [Rule(f"{hf}.weight", f"{linen}/scale"), Rule(f"{hf}.bias", f"{linen}/bias")]


def encoder_rules(hf_layer: str, linen_block: str, hf_names: dict[str, str]) -> list[Rule]:
    """One `jimm_linen.layers.EncoderBlock`; `hf_names` gives the HF module names of its pieces:
    ln_0, q, k, v, o, ln_1, then the MLP's, fc1 and fc2 (`MlpBlock`), or gate, up and down
    (`GatedMlpBlock`), or gate_up (gate and up fused, in that order) and down; ls_0 and ls_1
    name the LayerScale parameters where the block has them."""
    attn = f"{linen_block}/MultiHeadDotProductAttention_0"
    mlp = f"{linen_block}/MlpBlock_0"
    rules = [
        *norm(f"{hf_layer}.{hf_names['ln_0']}", f"{linen_block}/LayerNorm_0"),
        *linear(f"{hf_layer}.{hf_names['q']}", f"{attn}/query", flat_bias=True),
        *linear(f"{hf_layer}.{hf_names['k']}", f"{attn}/key", flat_bias=True),
        *linear(f"{hf_layer}.{hf_names['v']}", f"{attn}/value", flat_bias=True),
        *linear(f"{hf_layer}.{hf_names['o']}", f"{attn}/out", in_dims=2),
        *norm(f"{hf_layer}.{hf_names['ln_1']}", f"{linen_block}/LayerNorm_1"),
    ]
    if "fc1" in hf_names:
        rules += [*linear(f"{hf_layer}.{hf_names['fc1']}", f"{mlp}/Dense_0"),
                  *linear(f"{hf_layer}.{hf_names['fc2']}", f"{mlp}/Dense_1")]
    elif "gate_up" in hf_names:
        fused = f"{hf_layer}.{hf_names['gate_up']}"
        for part, name in enumerate(("wi_0", "wi_1")):
            rules += [Rule(f"{fused}.weight", f"{mlp}/{name}/kernel", Fused(LinearKernel(), part, 2)),
                      Rule(f"{fused}.bias", f"{mlp}/{name}/bias", Fused(IDENTITY, part, 2))]
        rules += linear(f"{hf_layer}.{hf_names['down']}", f"{mlp}/wo")
    else:
        rules += [*linear(f"{hf_layer}.{hf_names['gate']}", f"{mlp}/wi_0"),
                  *linear(f"{hf_layer}.{hf_names['up']}", f"{mlp}/wi_1"),
                  *linear(f"{hf_layer}.{hf_names['down']}", f"{mlp}/wo")]
    for i in (0, 1):
        if f"ls_{i}" in hf_names:
            rules.append(Rule(f"{hf_layer}.{hf_names[f'ls_{i}']}", f"{linen_block}/LayerScale_{i}/scale"))
    return rules


def _template_regex(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$")


class KeyMap:
    """Both directions of a rule table. `aliases` are extra HF names accepted when reading
    (e.g. the module names of `transformers` 5's in-memory state dicts); writing uses `rules`.
    `ignore`: regexes over HF keys that are known not to be parameters (buffers older
    `transformers` versions saved, such as `position_ids`); reading skips them."""

    def __init__(self, rules: Iterable[Rule], aliases: Iterable[Rule] = (), ignore: Iterable[str] = ()):
        self.rules, self.aliases = tuple(rules), tuple(aliases)
        self._hf = [(_template_regex(r.hf), r) for r in (*self.rules, *self.aliases)]
        self._linen = [(_template_regex(r.linen), r) for r in self.rules]
        self._ignore = [re.compile(p) for p in ignore]

    def subtree(self, prefix: str) -> "KeyMap":
        """The table of the parameters under the Linen path `prefix` (e.g. `"img/"`), with
        `prefix` taken off their paths; the HF keys of every other parameter are ignored."""
        def strip(rules):
            return [dataclasses.replace(r, linen=r.linen[len(prefix):]) for r in rules if r.linen.startswith(prefix)]

        others = [_template_regex(r.hf).pattern for r in (*self.rules, *self.aliases)
                  if not r.linen.startswith(prefix)]
        return KeyMap(strip(self.rules), strip(self.aliases), [*(p.pattern for p in self._ignore), *others])

    def ignored(self, hf_key: str) -> bool:
        return any(p.fullmatch(hf_key) for p in self._ignore)

    def to_linen_paths(self, hf_key: str) -> list[tuple[str, Transform]]:
        """Every Linen parameter an HF key holds: one, or several for a `Fused` tensor."""
        out = []
        for pattern, rule in self._hf:
            m = pattern.match(hf_key)
            if m:
                out.append((rule.linen.format(**m.groupdict()), rule.transform))
        return out

    def to_hf_key(self, linen_path: str):
        for pattern, rule in self._linen:
            m = pattern.match(linen_path)
            if m:
                return rule.hf.format(**m.groupdict()), rule.transform
        return None


# --- trees -------------------------------------------------------------------------------

def flatten_tree(tree: Mapping, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_tree(v, path + "/"))
        else:
            out[path] = v
    return out


def unflatten_tree(flat: Mapping[str, object]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one Linen parameter comes from: an HF key and the transform to apply."""

    hf_key: str
    transform: Transform


def plan_load(
    shapes: Mapping[str, tuple[int, ...]],
    keymap: KeyMap,
    expected: Mapping[str, tuple[int, ...]],
    dont_load: Sequence[str] = (),
) -> dict[str, Source]:
    """Match a checkpoint's `key -> shape` against the model's flat Linen paths (loop layout),
    strictly, without reading any tensor.

    `dont_load`: regexes over Linen paths (e.g. `"head/.*"`) that may be absent from the
    checkpoint, mismatched, or present in the checkpoint but not in the model; those paths get
    no source and are left to the caller. A pattern that matches nothing is an error (a typo
    would otherwise change nothing).
    """
    skip = [re.compile(p) for p in dont_load]
    used: set[str] = set()

    def skipped(path: str) -> bool:
        hits = {p.pattern for p in skip if p.fullmatch(path)}
        used.update(hits)
        return bool(hits)

    plan: dict[str, Source] = {}
    unexpected, misshaped, duplicated = [], [], []
    seen: dict[str, str] = {}  # path -> the HF key that claimed it
    for hf_key, shape in shapes.items():
        if keymap.ignored(hf_key):
            continue
        targets = keymap.to_linen_paths(hf_key)
        if targets and all(skipped(path) for path, _ in targets):
            continue  # e.g. a classifier the new config drops or resizes
        targets = [(path, t) for path, t in targets if not skipped(path)]
        if not targets or any(path not in expected for path, _ in targets):
            unexpected.append(hf_key)
            continue
        for path, transform in targets:
            if path in seen:
                duplicated.append(f"{seen[path]} and {hf_key} (-> {path})")
                continue
            seen[path] = hf_key
            want = transform.hf_shape(tuple(expected[path]))
            if tuple(shape) != want:
                misshaped.append(f"{hf_key}: checkpoint {tuple(shape)}, model expects {want} (-> {path})")
                continue
            plan[path] = Source(hf_key, transform)
    missing = []
    for path in expected:
        if path not in seen and not skipped(path):
            hf = keymap.to_hf_key(path)
            missing.append(f"{hf[0] if hf else '<no HF key>'} (-> {path})")
    problems = []
    unused = [p.pattern for p in skip if p.pattern not in used]
    if unused:
        problems.append(f"dont_load pattern(s) {unused} match no model parameter and no checkpoint key")
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    if misshaped:
        problems.append(f"mis-shaped keys: {misshaped}")
    if duplicated:
        problems.append(f"keys naming the same parameter: {duplicated}")
    if problems:
        raise CheckpointError("checkpoint does not match the model; " + "; ".join(problems)
                              + ". Pass dont_load=[regex over model paths] to leave parts (e.g. the head) uninitialised from the checkpoint.")
    return plan


def linen_to_hf(flat: Mapping[str, np.ndarray], keymap: KeyMap) -> dict[str, np.ndarray]:
    out, unmapped = {}, []
    pieces: dict[str, dict[int, np.ndarray]] = {}  # fused HF key -> its parts so far
    for path, value in flat.items():
        target = keymap.to_hf_key(path)
        if target is None:
            unmapped.append(path)
            continue
        hf_key, transform = target
        if isinstance(transform, Fused):
            pieces.setdefault(hf_key, {})[transform.part] = transform.to_hf(np.asarray(value))
            if len(pieces[hf_key]) == transform.parts:
                out[hf_key] = np.concatenate([pieces[hf_key][i] for i in range(transform.parts)])
        else:
            out[hf_key] = transform.to_hf(np.asarray(value))
    incomplete = [k for k in pieces if k not in out]
    if unmapped:
        raise CheckpointError(f"parameters with no HF key in this family's table: {unmapped}")
    if incomplete:
        raise CheckpointError(f"fused HF tensors missing some of their parts: {incomplete}")
    return out
