"""`jimm.common`'s module paths (`jimm_nnx.common.sharding`, `.tokamax_attention`,
`.autotuning`): the same objects as `jimm_nnx`'s own."""

from jimm_nnx.common import autotuning, sharding, tokamax_attention  # noqa: F401
