"""`VisionTransformer`: `jimm_linen.ViT` with jimm's NNX surface."""

from __future__ import annotations

import jax

from jimm_nnx.models.base import PretrainedModel, RngsArg, _View


class VisionTransformer(PretrainedModel):
    """`jimm_linen.ViT` as an `nnx.Module`: `model(images)` on NHWC float images gives logits
    (or pooled features for a checkpoint without a classifier head).

    A batch that the mesh does not divide runs as it is: where the rules would split it over
    mesh axes that do not divide it, it stays whole on those axes (replicated), and the outputs
    keep the inputs' batch sharding."""

    def __call__(self, x: jax.Array, *, train: bool | None = None, interpolate_pos_encoding: bool = False,
                 return_hidden_states: bool = False, rngs: RngsArg = None):
        """Logits, or a `jimm_linen.TowerOutput` with `return_hidden_states=True`. Dropout (in
        train mode, or with `train=True`) draws from `rngs`, by default the model's own."""
        return self._run(x, train=train, rngs=rngs, interpolate_pos_encoding=interpolate_pos_encoding,
                         return_hidden_states=return_hidden_states)

    @property
    def encoder(self) -> _View:
        """jimm's `encoder` names: `position_embeddings`, `cls_token` (the same Variables)."""
        return _View(position_embeddings=self.pos_embedding, **({"cls_token": self.cls} if hasattr(self, "cls") else {}))

    @property
    def classifier(self) -> _View:
        """jimm's `classifier` (`kernel`, `bias`): this model's `head`."""
        if not hasattr(self, "head"):
            raise AttributeError("this model has no classifier head (a checkpoint without one, or num_labels=0)")
        return _View(**self.head)
