"""Import nnsight without its process-wide side effect on every other library.

At import, nnsight 0.8 writes a ``save`` method into ``object``'s own type dict (its C extension
``py_mount``), so *every* object in the process gains ``.save``. That breaks unrelated code
that lists a class's public attributes: anyio's ``TypedAttributeSet`` (used by httpx, FastAPI and
the OpenAI clients) refuses to define its classes ("Attribute 'save' is missing its type
annotation"), so one nnsight read-out in a server or test process broke the HTTP stack after it.
Our trace code only uses the functional ``nnsight.save(value)``, so the mount is undone here,
and every import of nnsight in ic_core goes through :func:`import_nnsight`.
"""

from __future__ import annotations

from types import ModuleType


def _unmount_save() -> None:
    """Remove nnsight's ``object.save`` (a no-op when it is absent or the extension did not build)."""
    try:
        from nnsight._c import unmount
    except ImportError:  # pragma: no cover - an nnsight without the extension mounts nothing
        return
    if unmount is not None and "save" in vars(object):
        unmount("save")


def import_nnsight() -> ModuleType:
    """``import nnsight``, then undo its ``object.save`` mount (see the module docstring).

    Raises:
        ImportError: nnsight is not installed.

    """
    import nnsight

    _unmount_save()
    return nnsight
