"""The operator key: where it comes from, what is refused, and domain-separated tags."""

import pytest

from ic_core.errors import DataError
from ic_core.governance.keys import KeyMissingError, has_operator_key, operator_key, tag, tag_matches

KEY = "k" * 40


def test_key_from_the_environment_or_a_file(monkeypatch, tmp_path):
    monkeypatch.delenv("IC_POLICY_KEY", raising=False)
    monkeypatch.delenv("IC_POLICY_KEY_FILE", raising=False)
    assert not has_operator_key()
    with pytest.raises(KeyMissingError, match="IC_POLICY_KEY"):
        operator_key()
    monkeypatch.setenv("IC_POLICY_KEY", KEY)
    assert operator_key() == KEY.encode()
    monkeypatch.delenv("IC_POLICY_KEY")
    path = tmp_path / "key"
    path.write_text("f" * 64 + "\n")
    monkeypatch.setenv("IC_POLICY_KEY_FILE", str(path))
    assert operator_key() == b"f" * 64
    monkeypatch.setenv("IC_POLICY_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="Cannot read the operator key file"):
        operator_key()


def test_short_keys_are_refused(monkeypatch):
    monkeypatch.setenv("IC_POLICY_KEY", "short")
    with pytest.raises(DataError, match="at least 32"):
        operator_key()


def test_tags_are_keyed_and_domain_separated():
    key = KEY.encode()
    t = tag(key, b"message", "policy")
    assert len(t) == 64 and tag_matches(key, b"message", "policy", t)
    assert not tag_matches(key, b"message", "audit-checkpoint", t)  # another purpose
    assert not tag_matches(b"x" * 40, b"message", "policy", t)  # another key
    assert not tag_matches(key, b"messagE", "policy", t)
