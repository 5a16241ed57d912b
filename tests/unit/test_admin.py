"""Administrator settings of the served app (issue 11 case 7): switching, allow-list, trust_remote_code."""

from __future__ import annotations

import pytest

from ic_core.admin import (
    DEFAULT_MODEL,
    MAX_CACHED_MODELS,
    AdminSettings,
    AllowedModel,
    admin_settings,
    check_app_model,
    parse_allowlist,
    parse_entry,
)
from ic_core.errors import DataError
from ic_core.models import ModelSpec

HUB = ModelSpec(source="hub", name="org/small-model")


def settings(env: dict[str, str] | None = None, toml: str | None = None, tmp_path=None) -> AdminSettings:
    paths = ()
    if toml is not None:
        path = tmp_path / "secrets.toml"
        path.write_text(toml, encoding="utf-8")
        paths = (path,)
    return admin_settings(env=env or {}, secrets_paths=paths)


class TestDefaults:
    def test_nothing_set_means_only_the_default_model_and_no_remote_code(self):
        s = settings()
        assert (s.allow_model_switch, s.allow_trust_remote_code, s.model_allowlist) == (False, False, ())
        assert s.allowed_models == (DEFAULT_MODEL,) and s.model_cache_entries == 1
        check_app_model(ModelSpec(), s)
        check_app_model(ModelSpec(dtype="bfloat16", device="auto"), s)  # dtype/device stay the user's choice

    def test_switching_off_refuses_any_other_model(self):
        with pytest.raises(DataError, match="model switching is turned off") as info:
            check_app_model(HUB, settings())
        assert "\n" not in str(info.value) and "IC_ALLOW_MODEL_SWITCH=1" in str(info.value)

    def test_trust_remote_code_refused_even_for_the_default_model(self):
        with pytest.raises(DataError, match="trust_remote_code is turned off"):
            check_app_model(ModelSpec(trust_remote_code=True), settings())

    def test_ic_model_is_the_starting_model_and_always_allowed(self):
        s = settings({"IC_MODEL": "org/small-model"})
        check_app_model(HUB, s)
        with pytest.raises(DataError, match="only hub:org/small-model may be loaded"):
            check_app_model(ModelSpec(), s)


class TestAllowList:
    def test_switching_on_allows_exactly_the_listed_models(self):
        s = settings({"IC_ALLOW_MODEL_SWITCH": "1", "IC_MODEL_ALLOWLIST": "default, hub:org/small-model"})
        check_app_model(HUB, s)
        check_app_model(ModelSpec(), s)
        with pytest.raises(DataError, match="hub:org/other is not on this app's model allow-list"):
            check_app_model(ModelSpec(source="hub", name="org/other"), s)
        assert s.model_cache_entries == 2

    def test_an_allow_list_without_the_switch_allows_nothing_more(self):
        s = settings({"IC_MODEL_ALLOWLIST": "hub:org/small-model"})
        with pytest.raises(DataError, match="model switching is turned off"):
            check_app_model(HUB, s)

    def test_local_entries_match_the_resolved_folder(self, tmp_path):
        folder = tmp_path / "m"
        folder.mkdir()
        s = settings({"IC_ALLOW_MODEL_SWITCH": "yes", "IC_MODEL_ALLOWLIST": f"local:{tmp_path}/./m"})
        check_app_model(ModelSpec.parse(str(folder)), s)
        with pytest.raises(DataError, match="not on this app's model allow-list"):
            check_app_model(ModelSpec.parse(str(tmp_path)), s)

    def test_remote_code_needs_its_own_setting(self):
        env = {"IC_ALLOW_MODEL_SWITCH": "1", "IC_MODEL_ALLOWLIST": "hub:org/small-model"}
        with pytest.raises(DataError, match="trust_remote_code is turned off"):
            check_app_model(ModelSpec(source="hub", name="org/small-model", trust_remote_code=True), settings(env))
        check_app_model(ModelSpec(source="hub", name="org/small-model", trust_remote_code=True),
                        settings({**env, "IC_ALLOW_TRUST_REMOTE_CODE": "1"}))

    def test_cache_entries_are_bounded(self):
        names = ",".join(f"hub:org/m{i}" for i in range(10))
        s = settings({"IC_ALLOW_MODEL_SWITCH": "1", "IC_MODEL_ALLOWLIST": names})
        assert len(s.allowed_models) == 11 and s.model_cache_entries == MAX_CACHED_MODELS

    @pytest.mark.parametrize("entry", ["org/name", "ftp:org/name", "hub:", ":x", "hub"])
    def test_bad_entries_are_one_line_errors(self, entry):
        with pytest.raises(DataError, match="is not 'default', 'hub:org/name'"):
            parse_entry(entry)

    def test_entries_parse_and_duplicates_drop(self):
        assert parse_allowlist("hub:a/b, HUB:a/b,default,smollm2-135m-instruct") == (
            AllowedModel("hub", "a/b"), DEFAULT_MODEL)
        assert parse_allowlist(["hub:a/b"]) == (AllowedModel("hub", "a/b"),)
        with pytest.raises(DataError, match="list of strings"):
            parse_allowlist([1, 2])


class TestSecretsFile:
    def test_secrets_admin_table_is_read(self, tmp_path):
        s = settings(toml='[admin]\nallow_model_switch = true\nmodel_allowlist = ["hub:org/small-model"]\n',
                     tmp_path=tmp_path)
        assert s.allow_model_switch and s.model_allowlist == (AllowedModel("hub", "org/small-model"),)
        check_app_model(HUB, s)

    def test_environment_wins_over_the_file(self, tmp_path):
        s = settings({"IC_ALLOW_MODEL_SWITCH": "0"}, toml="[admin]\nallow_model_switch = true\n", tmp_path=tmp_path)
        assert s.allow_model_switch is False

    def test_other_tables_are_ignored_and_a_missing_file_is_no_setting(self, tmp_path):
        s = settings(toml='[other]\nallow_model_switch = true\n', tmp_path=tmp_path)
        assert s.allow_model_switch is False
        assert admin_settings(env={}, secrets_paths=(tmp_path / "absent.toml",)) == AdminSettings()

    @pytest.mark.parametrize(("toml", "message"), [
        ("[admin\n", "Cannot read the administrator settings"),
        ("admin = 3\n", "must be a table"),
        ("[admin]\nallow_everything = true\n", "Unknown administrator setting"),
        ("[admin]\nallow_model_switch = \"maybe\"\n", "must be 1 or 0"),
    ])
    def test_bad_files_are_one_line_errors(self, tmp_path, toml, message):
        with pytest.raises(DataError, match=message) as info:
            settings(toml=toml, tmp_path=tmp_path)
        assert "\n" not in str(info.value)

    def test_bad_environment_value(self):
        with pytest.raises(DataError, match="IC_ALLOW_TRUST_REMOTE_CODE must be 1 or 0"):
            settings({"IC_ALLOW_TRUST_REMOTE_CODE": "sure"})


def test_the_app_and_the_server_listen_on_loopback_by_default():
    """Issue 11 case 7: nothing is served to the network unless HOST is set explicitly."""
    import re
    import tomllib
    from pathlib import Path

    from ic_core.cli import build_parser

    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    makefile = (root / "Makefile").read_text()
    assert re.search(r"^HOST \?= 127\.0\.0\.1$", makefile, re.M)
    assert "--server.address $(HOST)" in makefile and "--host $(HOST)" in makefile
    args = build_parser().parse_args(["serve", "--policy", "p.json"])
    assert args.host == "127.0.0.1"


def test_a_bundled_offline_model_can_be_allow_listed_by_its_key():
    """gemma3-270m (issue 13) is an allow-list entry like 'default'; both show their keys in pickers."""
    from ic_core.admin import parse_entry
    from ic_core.models import DEFAULT_NAME, ModelSpec

    gemma = parse_entry("gemma3-270m")
    assert (gemma.source, gemma.name, gemma.label) == ("default", "Gemma-3-270M", "gemma3-270m")
    assert gemma.spec() == ModelSpec.parse("gemma3-270m")
    assert parse_entry("default").label == "default" and parse_entry("default").name == DEFAULT_NAME
