"""The operator key: where it comes from, what is refused, and domain-separated tags."""

import pytest

from ic_core.errors import DataError
from ic_core.governance import keys
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


class TestDefaultKeyFile:
    def test_first_signing_creates_a_private_key_file_once(self, monkeypatch):
        monkeypatch.delenv(keys.ENV_KEY)
        path = keys.key_file()
        assert not path.exists() and not keys.has_operator_key()
        with pytest.raises(keys.KeyMissingError, match="policy keygen"):
            keys.operator_key()
        first = keys.signing_key()
        assert path.exists() and (path.stat().st_mode & 0o777) == 0o600 and len(first) == 64
        assert keys.signing_key() == first == keys.operator_key() and keys.has_operator_key()

    def test_key_file_is_never_overwritten(self, monkeypatch):
        monkeypatch.delenv(keys.ENV_KEY)
        path = keys.create_key_file()
        before = path.read_bytes()
        with pytest.raises(DataError, match="never overwritten"):
            keys.create_key_file()
        assert path.read_bytes() == before

    def test_a_named_missing_key_file_is_not_created(self, tmp_path, monkeypatch):
        monkeypatch.delenv(keys.ENV_KEY)
        monkeypatch.setenv(keys.ENV_KEY_FILE, str(tmp_path / "typo.key"))
        with pytest.raises(DataError, match="Cannot read the operator key file"):
            keys.signing_key()
        assert not (tmp_path / "typo.key").exists()
