"""Which items a probe was trained on, and whether a run shares any of them (by ids and question hashes, never paths).

A folder path says nothing about content: a run copied to another folder holds the same items,
so a probe fitted on the original has seen every one of them. Overlap is therefore decided on
the items themselves. Both keys are recorded: the ``item_id`` and the SHA-256 of the normalised
question text (lower-cased, whitespace collapsed). An item is shared when its question hash
matches, whatever its id (the same question renamed is still the same item); an id alone does
not make two items one, because prompt sets reuse ids such as ``q0`` for different questions.
The refusal names how many shared questions also share their id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ic_core.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from ic_core.probes.saved import SavedProbe


def question_hash(text: Any) -> str:
    """SHA-256 (hex) of the question text, lower-cased with runs of whitespace made one space."""
    normal = " ".join(str(text).lower().split())
    return hashlib.sha256(normal.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ItemKeys:
    """The identity of a set of items: their ids and question hashes."""

    item_ids: frozenset[str]
    question_sha256: frozenset[str]

    @classmethod
    def of(cls, item_ids: Iterable[Any], questions: Iterable[Any]) -> ItemKeys:
        """Keys of items given by ids and question texts."""
        return cls(frozenset(str(i) for i in item_ids), frozenset(question_hash(q) for q in questions))

    @property
    def known(self) -> bool:
        """Whether any key is recorded (probes saved before this record was kept have none)."""
        return bool(self.item_ids or self.question_sha256)

    def shared_with(self, other: ItemKeys) -> tuple[int, int]:
        """``(shared ids among the shared questions, shared question hashes)``."""
        hashes = self.question_sha256 & other.question_sha256
        ids = self.item_ids & other.item_ids if hashes else frozenset()
        return min(len(ids), len(hashes)), len(hashes)


def table_keys(table: Any) -> ItemKeys:
    """Keys of the rows of a run table (pandas DataFrame with ``item_id`` and ``question``)."""
    return ItemKeys.of(table["item_id"].tolist(), table["question"].tolist())


def run_folder_keys(run_path: str | Path) -> ItemKeys:
    """Keys of every item recorded in a run folder's ``items.jsonl`` (states are not read)."""
    from ic_core.runs.store import read_rows

    rows, _ = read_rows(Path(run_path))
    return ItemKeys.of((r.item_id for r in rows.values()), (r.question for r in rows.values()))


def probe_keys(probe: SavedProbe) -> ItemKeys:
    """Keys of the items a saved probe was trained on (empty for probes saved without them)."""
    return ItemKeys(frozenset(probe.train_item_ids), frozenset(probe.train_question_sha256))


def overlap_message(shared: tuple[int, int], what: str) -> str | None:
    """The one-line refusal when ``shared`` (ids, hashes) is not (0, 0), else None."""
    ids, hashes = shared
    if not hashes:
        return None
    return (f"{what} share {hashes} question(s) ({ids} with the same item id), so a probe fitted on one has "
            "seen items of the other: use runs on disjoint items.")


def check_disjoint(train: ItemKeys, test: ItemKeys, what: str = "The training and test runs") -> None:
    """Raise when the two item sets share a question.

    Raises:
        DataError: any shared question hash.

    """
    message = overlap_message(train.shared_with(test), what)
    if message:
        raise DataError(message)
