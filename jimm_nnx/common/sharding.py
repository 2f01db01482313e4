"""`jimm.common.sharding`: the sharding specs and helpers (defined in `jimm_nnx.sharding`)."""

from jimm_nnx.sharding import (  # noqa: F401
    NoSharding, Sharding, ShardingSpec, named_sharding_like, replicated_sharding, reshard_like, sharding_of,
)
