import os

# Eight fake CPU devices for the sharding tests; must be set before jax is imported. Most tests
# spend their time compiling tiny programs, and LLVM's optimisations are most of an XLA:CPU
# compile: level 0 halves a compile-bound test (46 -> 22 s) and leaves the big matmuls (library
# calls) as fast (ViT-B/16 parity 48 -> 46 s). Results stay IEEE (XLA:CPU uses no fast-math), so
# the same numbers come out; the benchmarks' workers run without these flags.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One XLA compilation cache for the whole run, shared by the xdist workers and every interpreter a
# test starts (notebooks, README blocks, CLIs inherit the environment): the tests build the same
# tiny models over and over, each time under a new closure that jax's in-memory caches do not
# recognise, while the persistent cache keys on the compiled program itself. The controller makes
# a fresh folder (workers inherit it), so a run never reads an earlier run's programs; every
# program is cached, however quick its compile. The benchmark harness turns the cache off in its
# workers (`benchmarks/side_envs.py`): it measures compile times.
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="jimm-tests-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_configure(config):
    """The legacy HF Flax side install (`tests/legacy_flax.py`) says what it does on the terminal,
    past the output capture (an xdist worker's stderr is the terminal's): it runs pip for a minute
    or two on first use, inside the first test that needs it."""
    import sys

    from tests import legacy_flax

    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:  # `-p no:capture`: stderr is the terminal already
        return

    def say(message: str) -> None:
        with capture.global_and_fixture_disabled():
            print(f"\n[jimm tests] {message}", file=sys.stderr, flush=True)

    legacy_flax.say = say


def pytest_collection_modifyitems(config, items):
    """The full-size (`slow`), legacy Flax and notebook tests first, in their collection order:
    they take tens of seconds each (the first legacy one also the side install), and an xdist
    worker that gets one last keeps the run going alone. Each is a function of `tmp_path` only,
    or its whole file moves with it, so no module-scoped fixture is set up twice."""
    first = ("slow", "legacy_flax", "notebooks")
    items.sort(key=lambda item: not any(item.get_closest_marker(m) for m in first))
