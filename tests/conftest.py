"""Fixtures of every tier: the tiny random Llama (``tiny``), the bundled default model, a runs
folder, and the app/audit isolation every test gets. Builders live in ``helpers.py``; each tier
folder has its own ``conftest.py`` (its marker, its fixtures)."""

from __future__ import annotations

import os

import pytest
from helpers import make_tiny_model, make_tiny_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
TEST_OPERATOR_KEY = "test-operator-key-" + "0" * 32
# Set at import, not only per test: module- and session-scoped fixtures sign policies before any
# function fixture runs, and must never create the operator's real ~/.config key file.
os.environ["IC_POLICY_KEY"] = TEST_OPERATOR_KEY
os.environ.pop("IC_POLICY_KEY_FILE", None)


@pytest.fixture(scope="session")
def tiny():
    """A LoadedModel wrapping the tiny random Llama (shared; do not mutate)."""
    from ic_core.models import from_objects

    tokenizer = make_tiny_tokenizer()
    return from_objects(make_tiny_model(len(tokenizer)), tokenizer, name="tiny-llama")


@pytest.fixture(scope="session")
def default_model():
    """The bundled SmolLM2-135M-Instruct (converted once to the user's cache)."""
    from ic_core.models import get_model

    return get_model()


@pytest.fixture(autouse=True)
def _navigation_mode(request, monkeypatch):
    """Make AppTest run app.py (router + sidebar) on every run, as the server does.

    AppTest builds a fresh PagesManager per run and, because a ``pages/`` folder sits next to
    app.py, flags the app as an old-style multipage app; later runs then execute only the page
    file and skip app.py. The server clears that flag once st.navigation has run and keeps it
    cleared, so app-tier tests do the same after each construction. Tests named
    ``test_fresh_server*`` keep the first-visit behaviour they check.
    """
    if request.node.get_closest_marker("app") is None or request.node.name.startswith("test_fresh_server"):
        return
    from streamlit.runtime.pages_manager import PagesManager

    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """An empty runs folder that the app and ic_core.study use (IC_RUNS_DIR)."""
    root = tmp_path / "runs"
    root.mkdir()
    monkeypatch.setenv("IC_RUNS_DIR", str(root))
    return root


@pytest.fixture(autouse=True)
def _audit_log_in_tmp(tmp_path, monkeypatch):
    """No test writes to the repository's default audit log (tests that care set their own)."""
    monkeypatch.setenv("IC_AUDIT_LOG", str(tmp_path / "audit" / "gate_audit.jsonl"))


@pytest.fixture(autouse=True, scope="session")
def _no_real_key_file(tmp_path_factory):
    """The default key file points into a session temp folder for every fixture scope."""
    from ic_core.governance import keys

    original = keys.DEFAULT_KEY_FILE
    keys.DEFAULT_KEY_FILE = tmp_path_factory.mktemp("operator-home") / "operator.key"
    yield
    keys.DEFAULT_KEY_FILE = original


@pytest.fixture(autouse=True)
def _operator_key(tmp_path, monkeypatch):
    """Every test signs and verifies with one test key; the default key file lives in tmp_path.

    No test reads or creates the operator's real ``~/.config/ic-dashboard/operator.key``.
    """
    from ic_core.governance import keys

    monkeypatch.setenv(keys.ENV_KEY, TEST_OPERATOR_KEY)
    monkeypatch.delenv(keys.ENV_KEY_FILE, raising=False)
    monkeypatch.setattr(keys, "DEFAULT_KEY_FILE", tmp_path / "operator-home" / "operator.key")
