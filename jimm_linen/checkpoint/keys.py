"""Strict conversion between HF state dicts and Linen parameter trees, driven by one key table.

A family describes its checkpoint with `Rule`s: an HF key template, a Linen path template (in
the loop layout, `encoderblock_{i}`) and a `Transform` that knows both directions. The HF ->
Linen direction and the Linen -> HF direction are both derived from the same rules.

Templates have named slots of digits. A slot in both templates names one parameter per value
(`{i}`: the layers of the loop layout); a slot only in the HF template stacks one HF tensor per
value on a leading axis of one Linen parameter (`{e}`: a MoE layer's experts), in the order
the HF template names them.
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
class Conv1DKernel(LinearKernel):
    """GPT-2's `Conv1D.weight` `(in, out)` (torch `Linear`'s transpose) <-> Linen kernel
    `in_dims + out_dims`: a reshape."""

    def hf_shape(self, shape):
        return self._split(shape)

    def to_linen(self, x, shape):
        return x.reshape(shape)

    def to_hf(self, y):
        return y.reshape(self._split(y.shape))

    def perm(self, shape):
        return (0, 1)


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
    """One of `parts` equal slices, along HF dim `axis`, of an HF tensor that fuses several Linen
    parameters (torch `MultiheadAttention.in_proj_weight` is query, key and value on dim 0;
    GPT-2's `c_attn.weight` on dim 1); `inner` converts the slice. Writing concatenates the
    parts in order on `axis` (`linen_to_hf`)."""

    inner: Transform = Transform()
    part: int = 0
    parts: int = 1
    axis: int = 0

    def hf_shape(self, shape):
        piece = list(self.inner.hf_shape(shape))
        piece[self.axis] *= self.parts
        return tuple(piece)

    def _offset(self, shape) -> int:
        return self.part * self.inner.hf_shape(tuple(shape))[self.axis]

    def to_linen(self, x, shape):
        start = self._offset(shape)
        rows = slice(start, start + self.inner.hf_shape(tuple(shape))[self.axis])
        return self.inner.to_linen(x[(slice(None),) * self.axis + (rows,)], shape)

    def to_hf(self, y):
        return self.inner.to_hf(y)

    def read_region(self, read, shape, index):
        offset, a = self._offset(shape), self.axis

        def read_part(hf_index):
            moved = slice(hf_index[a].start + offset, hf_index[a].stop + offset)
            return read((*hf_index[:a], moved, *hf_index[a + 1:]))

        return self.inner.read_region(read_part, shape, index)


@dataclasses.dataclass(frozen=True)
class Permute(Transform):
    """The Linen tensor is the HF tensor with its dims reordered, `hf.transpose(axes)`:
    transformers 5's stacked expert kernels `(experts, out, in)` are Linen's `(experts, in,
    out)` with `axes=(0, 2, 1)`."""

    axes: tuple[int, ...] = ()

    def hf_shape(self, shape):
        out = [0] * len(shape)
        for k, a in enumerate(self.axes):
            out[a] = shape[k]
        return tuple(out)

    def to_linen(self, x, shape):
        return np.ascontiguousarray(x.transpose(self.axes))

    def to_hf(self, y):
        return np.ascontiguousarray(y.transpose(np.argsort(self.axes)))

    def perm(self, shape):
        return tuple(self.axes)


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


_SLOT = re.compile(r"\{(\w+)\}")


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str  # e.g. "vit.encoder.layer.{i}.attention.attention.query.weight"
    linen: str  # e.g. "Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/query/kernel"
    transform: Transform = IDENTITY  # applies to each stacked HF tensor on its own

    @property
    def stacked(self) -> tuple[str, ...]:
        """The HF slots the Linen template lacks, each a leading axis of the Linen parameter
        (`"model.layers.{i}.mlp.experts.{e}.up_proj.weight"` -> `"decoder/layers_{i}/moe/wi_1/kernel"`
        stacks `("e",)`: Linen `(experts, *per_expert)`)."""
        own = set(_SLOT.findall(self.linen))
        return tuple(s for s in _SLOT.findall(self.hf) if s not in own)


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


def experts(hf: str, linen: str, names: Mapping[str, str]) -> tuple[list[Rule], list[Rule]]:
    """The expert kernels of one mixture-of-experts layer (`layers.moe.MoeBlock`'s `wi_0`, `wi_1`
    `[experts, embed, mlp]` and `wo` `[experts, mlp, embed]` under `linen`) as `(rules,
    aliases)`. Rules: the hub's torch `Linear` per expert, `{hf}.{e}.<names[w]>.weight` for `w`
    in `wi_0`, `wi_1`, `wo`, stacked on the `{e}` slot (what transformers' `save_pretrained`
    writes, and so what we write). Aliases, read only: transformers 5's in-memory 3-D tensors
    `{hf}.gate_up_proj` `(experts, 2 * mlp, embed)`, gate then up, and `{hf}.down_proj`
    `(experts, embed, mlp)`."""
    rules = [Rule(f"{hf}.{{e}}.{names[w]}.weight", f"{linen}/{w}", LinearKernel()) for w in ("wi_0", "wi_1", "wo")]
    per_expert = Permute((0, 2, 1))  # each expert's (out, in), as its Linear
    aliases = [Rule(f"{hf}.gate_up_proj", f"{linen}/wi_0", Fused(per_expert, 0, 2, axis=1)),
               Rule(f"{hf}.gate_up_proj", f"{linen}/wi_1", Fused(per_expert, 1, 2, axis=1)),
               Rule(f"{hf}.down_proj", f"{linen}/wo", per_expert)]
    return rules, aliases


def _template_regex(template: str) -> re.Pattern:
    pieces = _SLOT.split(template)  # literal, slot name, literal, ...
    return re.compile("^" + "".join(rf"(?P<{x}>\d+)" if k % 2 else re.escape(x) for k, x in enumerate(pieces)) + "$")


def _fill(template: str, values: Mapping[str, object]) -> str:
    """`template` with the slots `values` names filled in, the others left as they are."""
    return _SLOT.sub(lambda m: str(values[m[1]]) if m[1] in values else m[0], template)


class KeyMap:
    """Both directions of a rule table. `aliases` are extra HF names accepted when reading
    (e.g. the module names of `transformers` 5's in-memory state dicts); writing uses `rules`.
    `ignore`: regexes over HF keys that are known not to be parameters (buffers older
    `transformers` versions saved, such as `position_ids`); reading skips them.
    `tied`: HF key -> the HF key it repeats (a tied head, `{"lm_head.weight":
    "model.embed_tokens.weight"}`). It is no parameter of its own and is never written; a
    checkpoint may store it, but then with the other key's values (the load compares them)."""

    def __init__(self, rules: Iterable[Rule], aliases: Iterable[Rule] = (), ignore: Iterable[str] = (),
                 tied: Mapping[str, str] | None = None):
        self.rules, self.aliases = tuple(rules), tuple(aliases)
        self.tied = dict(tied or {})
        unwritable = [r for r in (*self.rules, *self.aliases)
                      if not set(_SLOT.findall(r.linen)) <= set(_SLOT.findall(r.hf))]
        if unwritable:
            raise ValueError(f"rules whose Linen template has slots their HF template lacks: {unwritable}")
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
        sub = KeyMap(strip(self.rules), strip(self.aliases))
        # A key tied to one of another subtree's keys is that subtree's to check.
        tied = {k: v for k, v in self.tied.items() if sub.matches(v)}
        untied = [re.escape(k) for k in self.tied if k not in tied]
        return KeyMap(sub.rules, sub.aliases, [*(p.pattern for p in self._ignore), *others, *untied], tied)

    def ignored(self, hf_key: str) -> bool:
        return any(p.fullmatch(hf_key) for p in self._ignore)

    def matches(self, hf_key: str) -> list[tuple[str, Transform, tuple[int, ...]]]:
        """Every Linen parameter an HF key holds (several for a `Fused` tensor), with the
        key's place on the parameter's stacked axes (`()` where it has none)."""
        out = []
        for pattern, rule in self._hf:
            m = pattern.match(hf_key)
            if m:
                out.append((_fill(rule.linen, m.groupdict()), rule.transform, tuple(int(m[s]) for s in rule.stacked)))
        return out

    def to_linen_paths(self, hf_key: str) -> list[tuple[str, Transform]]:
        """Every Linen parameter an HF key holds: one, or several for a `Fused` tensor."""
        return [(path, transform) for path, transform, _ in self.matches(hf_key)]

    def rule_for(self, linen_path: str) -> tuple[Rule, dict[str, str]] | None:
        """The rule that writes a Linen parameter, and the values of the slots its path fills."""
        for pattern, rule in self._linen:
            m = pattern.match(linen_path)
            if m:
                return rule, m.groupdict()
        return None

    def to_hf_key(self, linen_path: str) -> tuple[str, Transform] | None:
        """A Linen parameter's HF key (its stacked slots left unfilled: `...experts.{e}...`)."""
        found = self.rule_for(linen_path)
        return None if found is None else (_fill(found[0].hf, found[1]), found[0].transform)

    def hf_keys(self, linen_path: str, shape: Sequence[int]) -> dict[tuple[int, ...], str]:
        """Every HF key of a Linen parameter of `shape`, by its place on the stacked axes (one
        key at `()` for a parameter that stacks nothing); `{}` for a path no rule writes."""
        found = self.rule_for(linen_path)
        if found is None:
            return {}
        rule, values = found
        return {idx: _fill(rule.hf, {**values, **dict(zip(rule.stacked, idx))})
                for idx in np.ndindex(*shape[:len(rule.stacked)])}


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

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.hf_key,)

    def read_region(self, read: Callable[[str, Index], np.ndarray], shape: tuple[int, ...],
                    index: Index) -> np.ndarray:
        """The box `index` of the Linen tensor of `shape`, through `read(hf_key, hf_index)`."""
        return self.transform.read_region(lambda hf_index: read(self.hf_key, hf_index), tuple(shape), index)


@dataclasses.dataclass(frozen=True)
class StackedSource:
    """A Linen parameter whose leading axis stacks `parts`, one per index (a MoE layer's
    experts, each an HF key of its own)."""

    parts: tuple[Source | StackedSource, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for part in self.parts for k in part.keys)

    def read_region(self, read, shape, index):
        # Only the parts in the box: a device that holds some experts reads only theirs.
        rows = range(index[0].start, index[0].stop)
        if not rows:
            return np.zeros((0, *(s.stop - s.start for s in index[1:])))
        return np.stack([self.parts[j].read_region(read, shape[1:], index[1:]) for j in rows])


def _nest(parts: Mapping[tuple[int, ...], Source]) -> Source | StackedSource:
    if () in parts:
        return parts[()]
    heads: dict[int, dict[tuple[int, ...], Source]] = {}
    for idx, src in parts.items():
        heads.setdefault(idx[0], {})[idx[1:]] = src
    return StackedSource(tuple(_nest(heads[j]) for j in sorted(heads)))


class Plan(dict):
    """Linen path -> `Source` / `StackedSource` (what `plan_load` makes, and the engine reads);
    `tied`: the (HF key, the key whose values it must hold, their shape) the load compares."""

    tied: tuple[tuple[str, str, tuple[int, ...]], ...] = ()


def _at(path: str, idx: tuple[int, ...]) -> str:
    return f"{path}[{', '.join(map(str, idx))}]" if idx else path


def plan_load(
    shapes: Mapping[str, tuple[int, ...]],
    keymap: KeyMap,
    expected: Mapping[str, tuple[int, ...]],
    dont_load: Sequence[str] = (),
) -> Plan:
    """Match a checkpoint's `key -> shape` against the model's flat Linen paths (loop layout),
    strictly, without reading any tensor. A stacked parameter (`Rule.stacked`) needs exactly
    one HF key per index of its stacked axes.

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

    found: dict[str, dict[tuple[int, ...], Source]] = {}
    unexpected, misshaped, duplicated = [], [], []
    seen: dict[tuple[str, tuple[int, ...]], str] = {}  # (path, stacked index) -> the HF key that claimed it
    tied = [k for k in shapes if k in keymap.tied]
    for k in tied:
        other = keymap.tied[k]
        if other in shapes and tuple(shapes[k]) != tuple(shapes[other]):
            misshaped.append(f"{k}: checkpoint {tuple(shapes[k])}, tied to {other} of {tuple(shapes[other])}")
    for hf_key, shape in shapes.items():
        if hf_key in keymap.tied or keymap.ignored(hf_key):
            continue
        targets = keymap.matches(hf_key)
        if targets and all(skipped(path) for path, _, _ in targets):
            continue  # e.g. a classifier the new config drops or resizes
        targets = [t for t in targets if not skipped(t[0])]
        if not targets or any(path not in expected for path, _, _ in targets):
            unexpected.append(hf_key)
            continue
        for path, transform, idx in targets:
            have = tuple(expected[path])
            if len(have) < len(idx) or any(j >= n for j, n in zip(idx, have)):
                unexpected.append(f"{hf_key} (-> {_at(path, idx)}, beyond the model's {have[:len(idx)]})")
                continue
            if (path, idx) in seen:
                duplicated.append(f"{seen[path, idx]} and {hf_key} (-> {_at(path, idx)})")
                continue
            seen[path, idx] = hf_key
            want = transform.hf_shape(have[len(idx):])
            if tuple(shape) != want:
                misshaped.append(f"{hf_key}: checkpoint {tuple(shape)}, model expects {want} (-> {_at(path, idx)})")
                continue
            found.setdefault(path, {})[idx] = Source(hf_key, transform)
    # One parameter from a whole stacked tensor and from per-index keys (both expert layouts
    # for one layer) would read one and drop the other.
    for path, parts in found.items():
        if () in parts and len(parts) > 1:
            duplicated += [f"{parts[()].hf_key} and {src.hf_key} (-> {_at(path, idx)})"
                           for idx, src in parts.items() if idx]
    missing = []
    for path, shape in expected.items():
        if (path, ()) not in seen and not skipped(path):
            keys = keymap.hf_keys(path, shape) or {(): "<no HF key>"}
            missing += [f"{key} (-> {_at(path, idx)})" for idx, key in keys.items() if (path, idx) not in seen]
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
    plan = Plan({path: _nest(parts) for path, parts in found.items()})
    plan.tied = tuple((k, keymap.tied[k], tuple(shapes[k])) for k in tied if keymap.tied[k] in shapes)
    return plan


def linen_to_hf(flat: Mapping[str, np.ndarray], keymap: KeyMap) -> dict[str, np.ndarray]:
    """The HF state dict of flat loop-layout Linen parameters: a stacked parameter unstacked
    into one key per index, a `Fused` tensor concatenated from its parts."""
    out, unmapped = {}, []
    pieces: dict[str, dict[int, np.ndarray]] = {}  # fused HF key -> its parts so far
    for path, value in flat.items():
        value = np.asarray(value)
        keys = keymap.hf_keys(path, value.shape)
        if not keys:
            unmapped.append(path)
            continue
        transform = keymap.rule_for(path)[0].transform
        for idx, hf_key in keys.items():
            part = transform.to_hf(np.asarray(value[idx]))
            if isinstance(transform, Fused):
                pieces.setdefault(hf_key, {})[transform.part] = part
                if len(pieces[hf_key]) == transform.parts:
                    out[hf_key] = np.concatenate([pieces[hf_key][i] for i in range(transform.parts)], transform.axis)
            else:
                out[hf_key] = part
    incomplete = [k for k in pieces if k not in out]
    if unmapped:
        raise CheckpointError(f"parameters with no HF key in this family's table: {unmapped}")
    if incomplete:
        raise CheckpointError(f"fused HF tensors missing some of their parts: {incomplete}")
    return out
