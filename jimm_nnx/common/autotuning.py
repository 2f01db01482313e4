"""`jimm.common.autotuning` (defined in `jimm_nnx.autotuning`)."""

from jimm_nnx.autotuning import (  # noqa: F401
    AutotuningResult, autotune, autotuned_fn, cached_autotune, load_autotune_result,
)
