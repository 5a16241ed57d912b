"""``--backend hf|nnsight``, ``--remote`` and ``--load-in-4bit`` for the ``analyze``, ``study`` and ``gate`` commands.

Everything here is checked before a model is loaded: an NDIF key, NDIF's reachability, a GPU,
bitsandbytes, so a command that cannot run says so in one line at once.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ic_core.backends import BACKENDS, BackendError, CaptureBackend, get_backend

if TYPE_CHECKING:
    from ic_core.models import LoadedModel, ModelSpec


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--backend``, ``--remote`` and ``--load-in-4bit``."""
    parser.add_argument("--backend", default="hf", choices=BACKENDS,
                        help="who runs the read-out: 'hf' (transformers, in process; default) or 'nnsight' "
                             "(an nnsight trace; with --remote on NDIF)")
    parser.add_argument("--remote", action="store_true",
                        help="with --backend nnsight: run the trace on NDIF (needs NDIF_API_KEY and network; "
                             "the model must be a hub id NDIF hosts)")
    parser.add_argument("--load-in-4bit", action="store_true",
                        help="load the blocks' linear layers in 4 bits (bitsandbytes NF4; CUDA GPU and --dtype bfloat16)")


def backend_from_args(args: argparse.Namespace, generates: bool = False) -> CaptureBackend | None:
    """The backend the options ask for (None = the default ``hf``), after the checks that need no model.

    Args:
        args: Parsed options (``backend``, ``remote``, ``load_in_4bit``, ``device``, ``dtype`` when present).
        generates: Whether the command will generate answers (a remote model cannot).

    Raises:
        BackendError: one line: see :func:`ic_core.backends.get_backend`,
            :func:`ic_core.backends.hardware.check_hardware`, or remote with generation / 4-bit.

    """
    from ic_core.backends.hardware import check_hardware

    name, remote = getattr(args, "backend", "hf"), bool(getattr(args, "remote", False))
    four_bit = bool(getattr(args, "load_in_4bit", False))
    if remote and generates:
        raise BackendError("--remote reads states on NDIF; generating needs the weights here: "
                           "drop --generate (analyze) or add --no-generate (study).")
    if remote and four_bit:
        raise BackendError("--load-in-4bit loads weights here; with --remote NDIF holds them: use one or the other.")
    check_hardware(str(getattr(args, "device", None) or "cpu"), str(getattr(args, "dtype", None) or "float32"), four_bit)
    backend = get_backend(name, remote)
    return None if name == "hf" else backend


def load_for_args(spec: ModelSpec, args: argparse.Namespace, backend: CaptureBackend | None) -> LoadedModel | None:
    """A model loaded the way only these options can (remote meta model, 4-bit), or None: load as usual."""
    from ic_core.backends.nnsight_backend import NnsightBackend

    if isinstance(backend, NnsightBackend) and backend.remote:
        return backend.load_remote(spec)
    if getattr(args, "load_in_4bit", False):
        from ic_core.backends.hardware import load_4bit

        return load_4bit(spec)
    return None


def model_for_args(args: argparse.Namespace, backend: CaptureBackend | None) -> LoadedModel:
    """The model ``--model``/``--dtype``/``--device`` name, loaded as ``--remote``/``--load-in-4bit`` ask."""
    from ic_core.cli.common import model_from_args
    from ic_core.models import ModelSpec

    spec = ModelSpec.parse(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    return load_for_args(spec, args, backend) or model_from_args(args)


__all__ = ["BackendError", "add_backend_options", "backend_from_args", "load_for_args", "model_for_args"]
