"""The gated endpoint's engine: check a conversation, log the decision, then (maybe) answer.

Everything that must hold whatever the HTTP layer does lives here, not in the routes:

- the conversation is read through :func:`ic_core.analysis.analyze`, i.e. the policy's own
  template and ``ic_core.prompts``' rendering, so message text is data and only the chat
  template emits control tokens;
- the decision is appended to the chained audit log (``source="api"``) before anything is
  generated, and a request whose record cannot be written is refused;
- the answer continues from the check's own prefill (:func:`ic_core.analysis.answer`); no
  second read of the prompt.

System/developer messages become the template's system text; earlier user/assistant/tool
turns are rendered before the last user message (the question) by ``ic_core.prompts``, each as
plain text, and the read-out is at the end of the conversation as for a single prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ic_core.analysis import Analysis, analysis_of, answer, check_choices, prepare_prompt
from ic_core.capture import IntentionState, Prefill, capture, capture_batch
from ic_core.errors import DataError, ICError, PromptError
from ic_core.generate import GenerationConfig
from ic_core.governance.audit import resolve_audit_path
from ic_core.governance.gate import (
    Decision,
    audit_decision,
    check_probe,
    decide_for_analysis,
    policy_template,
    resolve_answer_prefix,
)
from ic_core.governance.policy import Policy, check_model
from ic_core.models import LoadedModel
from ic_core.prompts import RenderedPrompt
from ic_core.serve.batch_read import read_with_prefills
from ic_core.serve.prefix_cache import PrefixCache
from ic_core.serve.schemas import Message

if TYPE_CHECKING:  # pragma: no cover
    from transformers import Cache

    from ic_core.probes.saved import SavedProbe

Action = Literal["checked", "answered", "blocked", "annotated"]
FinishReason = Literal["stop", "length"]


class AuditUnavailable(ICError):
    """The decision could not be appended to the audit log, so the request is refused (nothing generated)."""


@dataclass(frozen=True)
class Conversation:
    """The parts of a chat request the check reads."""

    question: str
    """The last user message: filled into the policy's template."""
    system: str | None
    """System/developer messages joined (None: the chat template's default system prompt)."""
    history: tuple[tuple[str, str], ...] = ()
    """Earlier user/assistant/tool turns, ``(role, text)``, in order (plain text, like the question)."""

    @property
    def audit_text(self) -> str:
        """The text the audit record hashes: system text, earlier turns (``role: text``) and the question.

        A single-turn conversation hashes what it always did: the question, after the system text.
        """
        parts = [self.system] if self.system is not None else []
        parts += [f"{role}: {text}" for role, text in self.history]
        return "\n\n".join([*parts, self.question])


def read_conversation(messages: Sequence[Message]) -> Conversation:
    """The system text, the earlier turns and the last user question of a chat request.

    Raises:
        PromptError: no user message last, or no user/assistant/tool turn at all.

    """
    system_parts = [m.text() for m in messages if m.role in ("system", "developer")]
    turns = [m for m in messages if m.role not in ("system", "developer")]
    if not turns or turns[-1].role != "user":
        raise PromptError("The conversation must end with a user message: that is what the gate checks.")
    system = "\n\n".join(p.strip() for p in system_parts if p.strip()) or None
    return Conversation(turns[-1].text(), system, tuple((m.role, m.text()) for m in turns[:-1]))


@dataclass(frozen=True)
class Checked:
    """One request's check: the analysis (holding its prefill), the decision and its audit record."""

    conversation: Conversation
    analysis: Analysis
    decision: Decision
    record: dict[str, Any]
    """The audit record as written (``seq``, ``record_sha256``)."""


@dataclass(frozen=True)
class Completion:
    """The answer generated after an approved (or annotated) check."""

    text: str
    """The assistant's answer: the forced prefix (if any) and the generated text, ended before a stop sequence."""
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


class GatedEngine:
    """The model, policy and probe of one server; every method runs on the model worker's thread."""

    def __init__(self, loaded: LoadedModel, policy: Policy, probe: SavedProbe | None = None,
                 audit_log: str | None = None, prefix_cache_mb: int = 0) -> None:
        """Refuse a model or probe other than the policy's before serving anything.

        Raises:
            ModelMismatchError: the loaded model is not the policy's.
            DataError: the policy reads a probe and a different (or no) probe was given; bad audit path.

        """
        check_model(policy, loaded)
        check_probe(policy, probe)
        self.loaded, self.policy, self.probe = loaded, policy, probe
        self.audit_path: Path = resolve_audit_path(audit_log)
        self.prefix_cache = PrefixCache(loaded, prefix_cache_mb * 2**20) if prefix_cache_mb > 0 else None

    def _prepare(self, messages: Sequence[Message], answer_prefix: str | None) -> tuple[Conversation, RenderedPrompt]:
        """The conversation and the prompt the policy reads it as (its template, system text, turns, prefix)."""
        conversation = read_conversation(messages)
        policy = self.policy
        check_choices(policy.kind, ())
        template = policy_template(policy)
        if conversation.system is not None:
            template = replace(template, system=conversation.system)
        rendered = prepare_prompt(
            self.loaded, conversation.question, policy.regime, policy.kind, template,
            resolve_answer_prefix(policy, answer_prefix), history=conversation.history,
        )
        return conversation, rendered

    def check(self, messages: Sequence[Message], answer_prefix: str | None, actor: str) -> Checked:
        """Read the conversation's state, decide, and append the decision to the audit log.

        Raises:
            PromptError: an unusable conversation or answer prefix, or one longer than the context.
            AuditUnavailable: the audit record cannot be written (nothing is generated then).

        """
        start = time.perf_counter()
        conversation, rendered = self._prepare(messages, answer_prefix)
        state, prefill = self._read(rendered, self._cached_prefix(rendered))
        analysis = analysis_of(self.loaded, rendered, state, time.perf_counter() - start, conversation.question,
                               self.policy.kind, prefill)
        return self._decide(conversation, analysis, actor, start)

    def check_batch(self, requests: Sequence[tuple[Sequence[Message], str | None, str]],
                    answers: Sequence[bool] | None = None) -> list[Checked | ICError]:
        """Check several conversations with one left-padded forward pass.

        Each request is ``(messages, answer_prefix, actor)``; its result is its :class:`Checked`
        (audited, in request order) or the error that request alone raised. The numbers equal
        :meth:`check`'s within float tolerance (:func:`ic_core.capture.capture_batch`).

        Args:
            requests: The conversations.
            answers: Per request, whether it may be answered (a chat completion): its check then
                keeps its own KV cache (:func:`ic_core.serve.batch_read.read_with_prefills`) so the
                answer continues from it, as after :meth:`check`. Default: none (gate checks).

        """
        start = time.perf_counter()
        wants = list(answers) if answers is not None else [False] * len(requests)
        if len(wants) != len(requests):
            raise ValueError(f"answers has {len(wants)} flags for {len(requests)} requests")
        results: list[Checked | ICError | None] = [None] * len(requests)
        ready: list[tuple[int, Conversation, RenderedPrompt]] = []
        for i, (messages, answer_prefix, _) in enumerate(requests):
            try:
                ready.append((i, *self._prepare(messages, answer_prefix)))
            except ICError as exc:
                results[i] = exc
        hits = {i: hit for i, _, r in ready if (hit := self._cached_prefix(r)) is not None or len(ready) == 1}
        batch = [(i, r) for i, _, r in ready if i not in hits]
        reads = self._read_together(batch, wants)
        for i, _, rendered in ready:
            if i in hits:  # a cached prefix (or a batch of one): read alone, only the new tokens
                reads[i] = self._read(rendered, hits[i])
        took = time.perf_counter() - start
        for i, conversation, rendered in ready:
            state, prefill = reads[i]
            analysis = analysis_of(self.loaded, rendered, state, took, conversation.question, self.policy.kind,
                                   prefill if wants[i] else None)
            try:
                results[i] = self._decide(conversation, analysis, requests[i][2], start)
            except ICError as exc:
                results[i] = exc
        return [r for r in results if r is not None]

    def _read_together(self, batch: Sequence[tuple[int, RenderedPrompt]],
                       wants: Sequence[bool]) -> dict[int, tuple[IntentionState, Prefill | None]]:
        """States of the batch's rows from shared forward passes; prefills only for rows to be answered."""
        if not batch:
            return {}
        rendered = [r for _, r in batch]
        keep = [wants[i] for i, _ in batch]
        if not any(keep):  # gate checks only: no cache is split out
            states = capture_batch(self.loaded, rendered, batch_size=len(batch))
            return {i: (state, None) for (i, _), state in zip(batch, states)}
        reads = read_with_prefills(self.loaded, rendered, keep, max_rows=len(batch))
        if self.prefix_cache is not None:
            for _, prefill in reads:
                if prefill is not None:
                    self.prefix_cache.store(self.loaded, prefill.ids, prefill.past_key_values)
        return {i: read for (i, _), read in zip(batch, reads)}

    def _cached_prefix(self, rendered: RenderedPrompt) -> tuple[int, Cache] | None:
        """A copy of the cached KV of the longest stored prefix of the read row (None: no hit or no cache)."""
        if self.prefix_cache is None:
            return None
        return self.prefix_cache.lookup(self.loaded, rendered.input_ids[: rendered.readout_index + 1])

    def _read(self, rendered: RenderedPrompt,
              prefix: tuple[int, Cache] | None) -> tuple[IntentionState, Prefill | None]:
        """One prompt's read (after ``prefix`` when given); its KV cache is kept for later prompts."""
        state, prefill = capture(self.loaded, rendered, prefix=prefix)
        if self.prefix_cache is not None and prefill is not None:
            self.prefix_cache.store(self.loaded, prefill.ids, prefill.past_key_values)
        return state, prefill

    def _decide(self, conversation: Conversation, analysis: Analysis, actor: str, start: float) -> Checked:
        decision = decide_for_analysis(self.policy, analysis, self.probe, elapsed_s=time.perf_counter() - start)
        decision = replace(decision, audit_log=str(self.audit_path), policy_signed=self.policy.is_signed,
                           model=self.loaded.spec.label)
        return Checked(conversation, analysis, decision, self._audit(conversation, decision, actor))

    def _audit(self, conversation: Conversation, decision: Decision, actor: str) -> dict[str, Any]:
        try:
            return audit_decision(
                self.policy, decision, conversation.audit_text, self.audit_path, actor=actor, source="api",
                probe_sha256=(self.policy.probe or {}).get("npz_sha256") if self.probe is not None else None,
                weights_sha256=getattr(self.loaded, "weights_sha256", None),
            )
        except DataError as exc:
            raise AuditUnavailable(f"The decision could not be written to the audit log, so nothing was generated: {exc}") from exc

    def complete(self, checked: Checked, config: GenerationConfig, stop: Sequence[str] = (),
                 on_delta: Callable[[str], None] | None = None) -> Completion:
        """Generate the answer from the check's prefill, stopping as soon as a stop sequence appears.

        Args:
            checked: The approved (or annotated) check.
            config: Decoding settings.
            stop: Stop sequences; the answer ends right before the earliest.
            on_delta: Called with each new piece of the answer while it is generated (streaming);
                the pieces join to exactly ``Completion.text``.

        Raises:
            PromptError: the prompt plus ``max_new_tokens`` exceed the model's context.

        """
        prefix = checked.analysis.rendered.answer_prefix or ""
        deltas = DeltaStream(prefix, stop, on_delta) if on_delta is not None else None
        done = answer(self.loaded, checked.analysis, config, deltas.feed if deltas else None, stop)
        gen = done.generation
        assert gen is not None  # answer() always generates
        if deltas is not None:
            deltas.finish(gen.answer_text)
        finish: FinishReason = "length" if gen.stop_reason == "max_new_tokens" else "stop"
        return Completion(gen.answer_text, finish, checked.analysis.rendered.n_tokens, len(gen.token_ids))


class DeltaStream:
    """The growing answer as pieces safe to send: text a stop sequence could still claim is held back.

    A stop sequence of n characters can only be partly written in the last n − 1 characters, so
    those wait until the next token (or the end); a trailing U+FFFD (half a multi-byte character)
    waits too. The forced answer prefix goes out first.
    """

    def __init__(self, prefix: str, stop: Sequence[str], emit: Callable[[str], None]) -> None:
        """Send pieces of the answer (``prefix`` + generated text) to ``emit``."""
        self.prefix, self.emit, self.sent = prefix, emit, ""
        self.hold = max((len(s) for s in stop), default=1) - 1
        self._push(prefix)

    def feed(self, _token: int, generated: str) -> None:
        """A token was generated; ``generated`` is the text so far (cut at a stop sequence when one appeared)."""
        text = self.prefix + generated.rstrip("\ufffd")
        self._push(text[: max(len(self.prefix), len(text) - self.hold)])

    def finish(self, final: str) -> None:
        """Send what is left of the final answer."""
        self._push(final)

    def _push(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self.emit(text[len(self.sent):])
            self.sent = text


def intention(checked: Checked, policy: Policy, mode: str, action: Action) -> dict[str, Any]:
    """The ``intention`` object every response carries: what the gate decided, why, and where it is logged.

    ``guarantee`` says which guarantee applies to this prompt (the gate's, e.g. "out of
    distribution"), else the policy's; a policy without a certified one says so.
    """
    d, record = checked.decision, checked.record
    return {
        "decision": d.decision,
        "reason": d.reason,
        "signals": d.signals,
        "policy_id": d.policy_id,
        "policy_signed": d.policy_signed,
        "guarantee": d.guarantee or policy.guarantee,
        "mode": mode,
        "action": action,
        "model": d.model,
        "elapsed_s": d.elapsed_s,
        "audit": {"seq": record.get("seq"), "record_sha256": record.get("record_sha256")},
    }
