"""Request bodies of the gated endpoint (OpenAI chat-completions shape), validated by pydantic.

Unknown OpenAI fields (``top_p``, ``n``, ``user``, ...) are accepted and ignored unless they
would change what is generated (``n`` other than 1 is refused). ``answer_prefix`` is our
extension, for policies fitted with a per-item forced answer prefix (send it with the
``openai`` client's ``extra_body``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ic_core.generate import MAX_SEED
from ic_core.prompts import MAX_PROMPT_CHARS

MAX_MESSAGES = 64
MAX_STOP = 4
"""OpenAI allows up to four stop sequences."""


class TextPart(BaseModel):
    """One ``{"type": "text", "text": ...}`` part of a message's content."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str, Field(max_length=MAX_PROMPT_CHARS)] | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=256)

    def text(self) -> str:
        """The message's text (text parts joined by newlines)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the token counts."""

    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class GateRequest(BaseModel):
    """``POST /v1/gate``: the conversation the agent is about to send to its model."""

    model_config = ConfigDict(extra="ignore")
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: str | None = Field(default=None, max_length=256)
    answer_prefix: str | None = Field(default=None, max_length=1000)


class ChatRequest(GateRequest):
    """``POST /v1/chat/completions``."""

    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)

    def stop_list(self) -> list[str]:
        """The stop sequences as a list (empty strings dropped)."""
        raw = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in raw if s]

    def requested_tokens(self) -> int | None:
        """``max_completion_tokens`` (the newer name) or ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


def error_body(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    """An OpenAI-style error body: ``{"error": {"type", "message", ...}}``."""
    return {"error": {"type": kind, "message": message, "code": extra.pop("code", None), **extra}}
