"""Integration tier: a model's identity is the SHA-256 of its weights (issue 11 case 6), and a
truncated or corrupt model file is one clear error (issue 11 case 8, ``struct.error`` before).

Case → test:

* 6, zero-filled file with a real file's name and size → ``TestConvertedCache.test_zero_filled_file_with_same_name_and_size_misses_the_cache``
* 6, digest computed once, recomputed on change → ``TestDigestStore``
* 6, ``check_model`` refuses other weights → ``TestCheckModel``
* 6, a policy fitted on a run pins the run's weights → ``TestFittedPolicy``
* 8, truncated ``.gguf`` → ``TestCorruptFiles``
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import numpy as np
import pytest
from helpers import make_tiny_model, make_tiny_tokenizer

from ic_core import weights
from ic_core.errors import DataError, ModelLoadError
from ic_core.governance.policy import ModelMismatchError, Policy, check_model
from ic_core.models import ModelFileError, ModelSpec, converted_cache_path, load_model


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_tiny_gguf(path, n_rows: int = 8):
    """A small, structurally valid GGUF file (two f32 tensors, no tokenizer): 384 bytes for 8 rows."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.ones((n_rows, 4), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _zero_fill_keeping_mtime(path):
    """Overwrite a file with zeros of the same size and put its mtime back (what `touch -r` would do)."""
    st = path.stat()
    time.sleep(0.05)  # past the file system's coarse clock tick, so the rewrite gets a new ctime
    path.write_bytes(b"\0" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


@pytest.fixture
def hash_calls(monkeypatch):
    """Counts the files :mod:`ic_core.weights` actually reads to hash."""
    calls = []
    real = weights._hash_file

    def counting(path):
        calls.append(path.name)
        return real(path)

    monkeypatch.setattr(weights, "_hash_file", counting)
    return calls


@pytest.fixture
def tiny_folder(tmp_path, tiny):
    """A private copy of the tiny model saved as a folder (tests may overwrite its weights)."""
    folder = tmp_path / "tiny-model"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


class TestDigestStore:
    def test_digest_is_the_files_sha256_and_computed_once(self, tmp_path, hash_calls):
        """The second look-up reads the stored digest instead of the file."""
        f = tmp_path / "w.bin"
        f.write_bytes(b"weights" * 1000)
        assert weights.file_sha256(f, tmp_path / "cache") == _sha(f)
        assert weights.file_sha256(f, tmp_path / "cache") == _sha(f)
        assert hash_calls == ["w.bin"]
        stored = json.loads((tmp_path / "cache" / weights.STORE_FILE).read_text())
        assert stored[str(f.resolve())]["sha256"] == _sha(f) and stored[str(f.resolve())]["size"] == 7000

    def test_changed_mtime_recomputes(self, tmp_path, hash_calls):
        """Touching the file (same bytes, new mtime) makes the store compute the digest again."""
        f = tmp_path / "w.bin"
        f.write_bytes(b"abc")
        weights.file_sha256(f, tmp_path)
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        assert weights.file_sha256(f, tmp_path) == _sha(f)
        assert hash_calls == ["w.bin", "w.bin"]

    def test_rewritten_file_with_restored_mtime_is_rehashed(self, tmp_path, hash_calls):
        """Same name, size and mtime but new bytes: ctime gives the rewrite away, the new digest is returned."""
        f = tmp_path / "w.bin"
        f.write_bytes(b"real weights")
        before = weights.file_sha256(f, tmp_path)
        _zero_fill_keeping_mtime(f)
        after = weights.file_sha256(f, tmp_path)
        assert after == hashlib.sha256(b"\0" * 12).hexdigest() != before
        assert len(hash_calls) == 2

    def test_damaged_store_is_recomputed_not_an_error(self, tmp_path, hash_calls):
        f = tmp_path / "w.bin"
        f.write_bytes(b"abc")
        (tmp_path / weights.STORE_FILE).write_text("{not json")
        assert weights.file_sha256(f, tmp_path) == _sha(f)
        forged = {str(f.resolve()): {**weights._stat_key(f), "sha256": "zz"}}
        (tmp_path / weights.STORE_FILE).write_text(json.dumps(forged))
        assert weights.file_sha256(f, tmp_path) == _sha(f)  # a malformed entry is ignored
        assert len(hash_calls) == 2

    def test_file_written_while_hashed_is_refused_not_stored(self, tmp_path, monkeypatch):
        """A digest of bytes that changed mid-read belongs to no version of the file: error, nothing stored."""
        f = tmp_path / "w.bin"
        f.write_bytes(b"abc")
        real = weights._hash_file

        def hash_then_append(path):
            digest = real(path)
            with path.open("ab") as fh:
                fh.write(b"more")
            return digest

        monkeypatch.setattr(weights, "_hash_file", hash_then_append)
        with pytest.raises(OSError, match="changed while its SHA-256 was computed"):
            weights.file_sha256(f, tmp_path)
        assert not (tmp_path / weights.STORE_FILE).exists()

    def test_shards_combine_like_sha256sum(self, tmp_path):
        """Several files: SHA-256 of `sha256sum` lines sorted by name; one file: its own SHA-256."""
        a, b = tmp_path / "model-00002.safetensors", tmp_path / "model-00001.safetensors"
        a.write_bytes(b"second")
        b.write_bytes(b"first")
        listing = f"{_sha(b)}  {b.name}\n{_sha(a)}  {a.name}\n"
        assert weights.combined_sha256([a, b], tmp_path) == hashlib.sha256(listing.encode()).hexdigest()
        assert weights.combined_sha256([a], tmp_path) == _sha(a)
        assert weights.folder_weights_sha256(tmp_path, tmp_path) == hashlib.sha256(listing.encode()).hexdigest()


class TestConvertedCache:
    def _seed_cache(self, gguf_file, cache, tiny):
        """Put the tiny model where the converted copy of ``gguf_file`` lives (as a finished conversion would)."""
        target = converted_cache_path(gguf_file, cache)
        tiny.model.save_pretrained(target)
        tiny.tokenizer.save_pretrained(target)
        return target

    def test_cache_hit_carries_the_gguf_digest_and_hashes_once(self, tmp_path, tiny, hash_calls):
        real = _write_tiny_gguf(tmp_path / "Model.Q4.gguf")
        cache = tmp_path / "cache"
        target = self._seed_cache(real, cache, tiny)
        assert target.name == f"Model.Q4-{_sha(real)[:16]}"
        spec = ModelSpec(source="gguf", name=str(real))
        first, second = load_model(spec, cache_dir=cache), load_model(spec, cache_dir=cache)
        assert first.loaded_from == str(target) and first.weights_sha256 == second.weights_sha256 == _sha(real)
        assert hash_calls == ["Model.Q4.gguf"]  # the second load read the stored digest

    def test_zero_filled_file_with_same_name_and_size_misses_the_cache(self, tmp_path, tiny):
        """The attack of case 6: the fake file no longer loads the real file's converted copy."""
        real = _write_tiny_gguf(tmp_path / "Model.Q4.gguf")
        cache = tmp_path / "cache"
        self._seed_cache(real, cache, tiny)
        _zero_fill_keeping_mtime(real)
        with pytest.raises(ModelFileError, match="not a GGUF file"):
            load_model(ModelSpec(source="gguf", name=str(real)), cache_dir=cache)
        assert converted_cache_path(real, cache).name == f"Model.Q4-{_sha(real)[:16]}"
        assert not converted_cache_path(real, cache).exists()

    def test_local_folder_digest_is_its_safetensors_sha256(self, tiny_folder, tmp_path):
        loaded = load_model(ModelSpec.parse(str(tiny_folder)), cache_dir=tmp_path / "cache")
        assert loaded.weights_sha256 == _sha(tiny_folder / "model.safetensors")

    def test_in_memory_model_has_no_digest(self, tiny):
        assert tiny.weights_sha256 is None

    def test_hub_model_digest_is_its_snapshots_safetensors(self, tmp_path, tiny, monkeypatch):
        """A hub id loaded from the Hugging Face cache (snapshot files linked to blobs, as the hub client lays them out)."""
        import huggingface_hub.constants

        saved = tmp_path / "saved"
        tiny.model.save_pretrained(saved)
        tiny.tokenizer.save_pretrained(saved)
        repo = tmp_path / "hub" / "models--tiny-org--tiny-llama"
        snapshot = repo / "snapshots" / ("0" * 40)
        (repo / "blobs").mkdir(parents=True)
        snapshot.mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0" * 40)
        for f in saved.iterdir():
            blob = repo / "blobs" / _sha(f)
            shutil.copy(f, blob)
            (snapshot / f.name).symlink_to(blob)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
        loaded = load_model(ModelSpec.parse("tiny-org/tiny-llama"), cache_dir=tmp_path / "cache")
        assert loaded.spec.source == "hub" and loaded.weights_sha256 == _sha(saved / "model.safetensors")


class TestCheckModel:
    def _policy(self, loaded, **model):
        return Policy(signal="h_int", model={**loaded.spec.to_dict(), **model}, t_entropy_bits=2.0,
                      model_n_layers=loaded.n_layers, model_d_model=loaded.d_model)

    def test_same_weights_pass_other_weights_are_refused(self, tiny_folder, tmp_path):
        """Same folder, same spec, new weights in the file: the pinned policy refuses it in one line."""
        cache = tmp_path / "cache"
        loaded = load_model(ModelSpec.parse(str(tiny_folder)), cache_dir=cache)
        policy = self._policy(loaded, weights_sha256=loaded.weights_sha256)
        check_model(policy, loaded)
        tokenizer = make_tiny_tokenizer()
        make_tiny_model(len(tokenizer), seed=7).save_pretrained(tiny_folder)  # other weights, same names
        other = load_model(ModelSpec.parse(str(tiny_folder)), cache_dir=cache)
        assert other.spec == loaded.spec and other.weights_sha256 != loaded.weights_sha256
        with pytest.raises(ModelMismatchError, match=f"weights {loaded.weights_sha256[:16]}") as err:
            check_model(policy, other)
        assert "\n" not in str(err.value) and isinstance(err.value, DataError)

    def test_pinned_policy_refuses_a_model_without_a_digest(self, tiny):
        policy = self._policy(tiny, weights_sha256="ab" * 32)
        with pytest.raises(ModelMismatchError, match="cannot be identified"):
            check_model(policy, tiny)

    def test_older_policy_without_a_pin_is_checked_by_name(self, tiny):
        policy = self._policy(tiny)
        check_model(policy, tiny)
        assert weights.pinned_weights_label(policy.model) == "weights not pinned"
        pinned = self._policy(tiny, weights_sha256="ab" * 32)
        assert weights.pinned_weights_label(pinned.model) == "weights sha256 abababababababab…"

    def test_pin_survives_signing_and_reloading(self, tiny):
        policy = self._policy(tiny, weights_sha256="cd" * 32).sign()
        again = Policy.from_json(policy.to_json())
        assert again.model["weights_sha256"] == "cd" * 32 and again.policy_id == policy.policy_id

    @pytest.mark.parametrize("bad", ["CD" * 32, "ab" * 31, 5, ["ab" * 32]])
    def test_malformed_pin_is_refused(self, tiny, bad):
        with pytest.raises(DataError, match="model.weights_sha256"):
            self._policy(tiny, weights_sha256=bad)


def _labelled_items(n=40):
    from ic_core.datasets import PromptItem

    return [PromptItem(id=f"t{i:03d}", question=f"what is {i % 13} plus {i % 7} ?", answer=str(i % 13 + i % 7),
                       kind="numeric", output=str(i % 13 + i % 7 + (i * 37) % 100 // 50)) for i in range(n)]


class TestFittedPolicy:
    @pytest.fixture
    def run_folder(self, tmp_path, tiny_folder):
        from ic_core.study.runner import run_study

        loaded = load_model(ModelSpec.parse(str(tiny_folder)), cache_dir=tmp_path / "cache")
        run = run_study(loaded, _labelled_items(), ["direct"], tmp_path / "runs" / "r", generate=False,
                        dataset_name="tinyset")
        return loaded, run.path

    def _set_manifest(self, folder, **updates):
        manifest_file = folder / "manifest.json"
        manifest = json.loads(manifest_file.read_text())
        manifest.update(updates)
        manifest_file.write_text(json.dumps(manifest))

    def test_policy_pins_the_runs_weights_digest(self, run_folder):
        from ic_core.governance.fit import WEIGHTS_KEY, fit_policy_on_run
        from ic_core.runs.store import load_run

        loaded, folder = run_folder
        # The runner records the digest of the model it ran; written here so this test holds either way.
        self._set_manifest(folder, **{WEIGHTS_KEY: loaded.weights_sha256})
        policy = fit_policy_on_run(load_run(folder), "entropy", 0.45, n_boot=50).policy
        assert policy.model["weights_sha256"] == loaded.weights_sha256
        check_model(policy, loaded)

    def test_run_without_a_digest_gives_an_unpinned_policy(self, run_folder):
        from ic_core.governance.fit import WEIGHTS_KEY, fit_policy_on_run
        from ic_core.runs.store import load_run

        loaded, folder = run_folder
        self._set_manifest(folder, **{WEIGHTS_KEY: None})
        policy = fit_policy_on_run(load_run(folder), "entropy", 0.45, n_boot=50).policy
        assert "weights_sha256" not in policy.model
        assert weights.pinned_weights_label(policy.model) == "weights not pinned"

    def test_malformed_manifest_digest_is_a_damaged_run(self, run_folder):
        from ic_core.runs.store import read_manifest

        _, folder = run_folder
        self._set_manifest(folder, model_weights_sha256="not-a-digest")
        with pytest.raises(DataError, match="model_weights_sha256"):
            read_manifest(folder)


class TestCorruptFiles:
    @pytest.mark.parametrize(("keep", "match"), [
        (10, "shorter than a GGUF header"),
        (100, "runs past the end of the file at 100 bytes"),
        (300, "tensors need 368 bytes but the file has 300"),
    ])
    def test_truncated_gguf_is_one_data_error(self, tmp_path, keep, match):
        """Cut in the header, the metadata, or the tensor data: a DataError, never struct.error."""
        whole = _write_tiny_gguf(tmp_path / "whole.gguf")
        cut = tmp_path / "cut.gguf"
        cut.write_bytes(whole.read_bytes()[:keep])
        with pytest.raises(DataError, match=match) as err:
            load_model(ModelSpec(source="gguf", name=str(cut)), cache_dir=tmp_path / "cache")
        assert isinstance(err.value, ModelLoadError) and "\n" not in str(err.value) and "cut.gguf" in str(err.value)

    def test_intact_gguf_passes_the_structure_check(self, tmp_path):
        from ic_core.gguf_files import check_gguf_file

        check_gguf_file(_write_tiny_gguf(tmp_path / "whole.gguf"))

    def test_zero_filled_safetensors_in_a_folder_is_one_error(self, tiny_folder, tmp_path):
        _zero_fill_keeping_mtime(tiny_folder / "model.safetensors")
        with pytest.raises(ModelFileError, match="truncated or corrupt"):
            load_model(ModelSpec.parse(str(tiny_folder)), cache_dir=tmp_path / "cache")

    def test_cli_truncated_gguf_exits_2_with_one_line(self, tmp_path):
        import subprocess
        import sys
        from pathlib import Path

        cut = tmp_path / "cut.gguf"
        cut.write_bytes(_write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()[:100])
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "IC_MODEL_CACHE": str(tmp_path / "cache")}
        proc = subprocess.run([sys.executable, "-m", "ic_core", "analyze", "--prompt", "hi", "--model", str(cut)],
                              cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
                              timeout=180)
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "cut.gguf" in errors[0] and "truncated or corrupt" in errors[0]


def test_copied_folder_keeps_its_identity(tiny_folder, tmp_path):
    """Identity is content: a copy elsewhere has the same weights digest."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_folder, copy)
    a = load_model(ModelSpec.parse(str(tiny_folder)), cache_dir=tmp_path / "cache")
    b = load_model(ModelSpec.parse(str(copy)), cache_dir=tmp_path / "cache")
    assert a.weights_sha256 == b.weights_sha256 == _sha(copy / "model.safetensors")
