import os

# Eight fake CPU devices for the sharding tests; must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
