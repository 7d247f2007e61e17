"""Shared test helpers. DeepMind's reference outputs are read through
`fixture_path` / `deepmind_fixture` only: first from the repository's copy
(`tests/fixtures/deepmind/`: the tiny NFNet and AGC fixtures), then from
`../shared/fixtures/deepmind/` (or `$KERAS_NFNETS_SHARED`), which holds the
large NF-ResNet/NF-RegNet checkpoints.

A test whose fixture is in neither place skips, and the run ends with one
line naming every missing file; with `CI=true` it fails instead."""

import http.server
import threading
import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
REPO_FIXTURES = REPO / "tests" / "fixtures" / "deepmind"
SHARED = pathlib.Path(os.environ.get("KERAS_NFNETS_SHARED",
                                     REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "deepmind"
DATASETS = SHARED / "datasets"

_MISSING = {}  # fixture name -> number of tests that needed it


def in_ci():
    """True under CI (`CI=true`): a missing fixture is then a failure."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def fixture_path(name):
    """Path of a DeepMind fixture: the repository's copy, else ../shared's.

    When neither exists the test skips (fails with CI=true); the skipped
    tests share one reason, and the run's summary names the missing files.
    """
    for folder in (REPO_FIXTURES, FIXTURES):
        path = folder / name
        if path.exists():
            return path
    _MISSING[name] = _MISSING.get(name, 0) + 1
    if in_ci():
        pytest.fail(f"DeepMind fixture {name} is missing: not in "
                    f"{REPO_FIXTURES} nor {FIXTURES} (CI=true: a missing "
                    "fixture is a failure)", pytrace=False)
    pytest.skip("DeepMind fixture not available (the summary line "
                "'missing DeepMind fixtures' names the files)")


#: Unit-test modules that train an NFNet-F0-sized model: under pytest-xdist
#: they share one worker, so that two such steps never run at once.
NFNET_TRAINING_MODULES = ("test_preprocessing", "test_features",
                          "test_hub_dense_tasks",
                          "test_hub_nfnet_image_classifier")


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs tests/unit on 2 workers with
    `--dist loadgroup`): each test module stays whole on one worker (its
    module-level state and fixtures, its order), and the modules of
    NFNET_TRAINING_MODULES share one worker."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1][:-3]
        group = ("nfnet_training" if module in NFNET_TRAINING_MODULES
                 else module)
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_sessionfinish(session):
    # An xdist worker hands its missing fixtures to the controller.
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["keras_nfnets_missing"] = dict(_MISSING)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):  # pylint: disable=unused-argument
    """pytest-xdist's controller: a worker's missing fixtures."""
    output = getattr(node, "workeroutput", None) or {}
    for name, count in output.get("keras_nfnets_missing", {}).items():
        _MISSING[name] = _MISSING.get(name, 0) + count


def pytest_terminal_summary(terminalreporter):
    if _MISSING:
        names = ", ".join(f"{n} ({k} test{'s' * (k > 1)})"
                          for n, k in sorted(_MISSING.items()))
        terminalreporter.write_line(
            f"missing DeepMind fixtures (looked in {REPO_FIXTURES} and "
            f"{FIXTURES}; set KERAS_NFNETS_SHARED): {names}")


def deepmind_fixture(name):
    """Loads a DeepMind reference `.npz` (a real npz) as a dict of arrays."""
    with np.load(fixture_path(name)) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture
def tiny_config_path():
    return fixture_path("nfnet_tiny_config.json")


def relative_error(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    return float(np.max(np.abs(actual - expected)) /
                 max(np.max(np.abs(expected)), 1e-12))


# The tensors of agc_reference.npz, in DeepMind's path vocabulary.
AGC_NAMES = ["conv/w", "conv/gain", "conv/bias", "block/skip_gain", "se/w",
             "zero_init/w", "linear/w", "linear/b"]


def agc_fixture_variables(ref):
    """Keras variables holding `param:*` of agc_reference.npz, with paths
    equal to the fixture's names (`conv/w` ...)."""
    import keras  # pylint: disable=import-outside-toplevel
    variables = []
    for name in AGC_NAMES:
        scope, leaf = name.split("/")
        with keras.name_scope(scope):
            variables.append(keras.Variable(ref["param:" + name], name=leaf))
    assert [v.path for v in variables] == AGC_NAMES
    return variables


class LoopbackServer:
    """A real HTTP server on 127.0.0.1 serving one folder, in a thread
    (`requests`: the paths asked for)."""

    def __init__(self, folder):
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(folder), **kwargs)

            def log_message(self, *args):  # keep test output quiet
                server.requests.append(self.path)

        self.serve(Handler)

    def serve(self, handler):
        """Starts serving with `handler` (a request-handler class) on a
        free loopback port; `url` is its address."""
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
