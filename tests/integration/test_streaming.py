"""Stop sequences during generation, the on_token hook, and incremental streaming (issue 16, round 2).

| requirement | test |
|---|---|
| a stop string ends generation as soon as it appears (no tokens after it) | ``TestStopDuringGeneration`` |
| ``on_token`` sees every token and the text so far; default output unchanged | ``TestOnToken`` |
| the server sends deltas while it generates; they join to the non-streamed text | ``TestIncrementalStream`` |
| text a stop sequence could still claim is held back | ``TestDeltaStream`` |
"""

from __future__ import annotations

import json

from test_serve import AUTH, Q, _chat, _client

from ic_core.analysis import analyze, answer
from ic_core.generate import GenerationConfig, generate
from ic_core.serve.engine import DeltaStream

CFG = GenerationConfig(max_new_tokens=12, stop_at_answer_line=False)


def _full(tiny):
    rendered = analyze(tiny, Q, kind="short_answer").rendered
    return rendered, generate(tiny, rendered, CFG)


class TestStopDuringGeneration:
    def test_stops_at_the_first_token_that_completes_the_stop_string(self, tiny):
        rendered, full = _full(tiny)
        word = full.text.split()[2]
        cut = generate(tiny, rendered, CFG, stop=[word])
        assert cut.stop_reason == "stop" and cut.text == full.text[: full.text.index(word)]
        # generation stopped there: the ids are the full run's up to the token that completed the word
        n = len(cut.token_ids)
        assert n < len(full.token_ids) and cut.token_ids == full.token_ids[:n]
        assert word in tiny.tokenizer.decode(list(cut.token_ids)) and word not in tiny.tokenizer.decode(
            list(cut.token_ids[:-1]))
        assert cut.entropy_bits == full.entropy_bits[:n]
        # the trimmed tail is exactly the tokens that write the stop string: one fewer and the answer is cut short
        kept = n - cut.n_trimmed_tokens
        assert cut.n_trimmed_tokens >= 1 and cut.text.startswith(tiny.tokenizer.decode(list(cut.token_ids[:kept])))
        assert len(tiny.tokenizer.decode(list(cut.token_ids[: kept + 1]))) > len(cut.text)
        assert full.n_trimmed_tokens == 0

    def test_earliest_of_several_and_absent_stops(self, tiny):
        rendered, full = _full(tiny)
        words = full.text.split()
        both = generate(tiny, rendered, CFG, stop=[words[3], words[1]])
        assert both.text == full.text[: full.text.index(words[1])]
        none = generate(tiny, rendered, CFG, stop=["\x01never\x01"])
        assert none.text == full.text and none.stop_reason == full.stop_reason == "max_new_tokens"


class TestOnToken:
    def test_callback_sees_each_token_and_the_text_so_far(self, tiny):
        rendered, full = _full(tiny)
        seen: list[tuple[int, str]] = []
        again = generate(tiny, rendered, CFG, on_token=lambda t, text: seen.append((t, text)))
        assert [t for t, _ in seen] == list(full.token_ids) == list(again.token_ids)
        ids = list(full.token_ids)
        assert [text for _, text in seen] == [tiny.tokenizer.decode(ids[: k + 1], skip_special_tokens=True)
                                              for k in range(len(ids))]
        assert again.text == full.text and again.entropy_bits == full.entropy_bits

    def test_answer_passes_the_hook_and_stop_through(self, tiny):
        _, full = _full(tiny)
        word = full.text.split()[1]
        seen: list[str] = []
        done = answer(tiny, analyze(tiny, Q, kind="short_answer"), CFG, lambda _t, text: seen.append(text), [word])
        assert done.generation.text == full.text[: full.text.index(word)] and seen[-1] == done.generation.text


class TestDeltaStream:
    def test_holds_back_what_a_stop_could_claim(self):
        sent: list[str] = []
        stream = DeltaStream("A:", ["END"], sent.append)
        stream.feed(0, " hello")
        assert sent == ["A:", " hel"]  # a 3-character stop could start in the last 2 characters: held
        stream.feed(0, " hello E")
        stream.feed(0, " hello")  # cut at the stop: nothing new is safe until the end
        stream.finish("A: hello")
        assert "".join(sent) == "A: hello" and all(sent)

    def test_half_character_waits(self):
        sent: list[str] = []
        stream = DeltaStream("", [], sent.append)
        stream.feed(0, "caf\ufffd")
        stream.feed(0, "café")
        stream.finish("café")
        assert sent == ["caf", "é"]


class TestIncrementalStream:
    def test_deltas_are_sent_while_generating(self, tiny, tmp_path):
        """Each piece reaches the response queue before the next forward pass runs."""
        with _client(tiny, tmp_path) as c:
            engine = c.app.state.engine
            checked = engine.check([_msg()], None, "test")
            calls: list[int] = []
            handle = tiny.model.register_forward_pre_hook(lambda *_: calls.append(1))
            pieces: list[tuple[int, str]] = []
            try:
                done = engine.complete(checked, CFG, (), lambda piece: pieces.append((len(calls), piece)))
            finally:
                handle.remove()
        assert "".join(p for _, p in pieces) == done.text and len(pieces) >= 4
        assert pieces[0][0] < len(calls) and len({n for n, _ in pieces}) >= 4  # spread over the forward passes

    def test_streamed_text_with_a_stop_equals_the_non_streamed(self, tiny, tmp_path):
        with _client(tiny, tmp_path) as c:
            full = _chat(c, max_tokens=10).json()["choices"][0]["message"]["content"]
            stop = full.split()[2][:2]
            whole = _chat(c, max_tokens=10, stop=[stop]).json()["choices"][0]
            r = _chat(c, max_tokens=10, stop=[stop], stream=True)
        events = [json.loads(e[6:]) for e in r.text.split("\n\n") if e and e != "data: [DONE]"]
        text = "".join(ev["choices"][0]["delta"].get("content", "") for ev in events if ev["choices"])
        assert text == whole["message"]["content"] == full[: full.index(stop)]
        assert events[-1]["choices"][0]["finish_reason"] == whole["finish_reason"] == "stop"

    def test_a_failed_check_is_a_json_error_not_a_stream(self, tiny, tmp_path):
        with _client(tiny, tmp_path) as c:
            r = c.post("/v1/chat/completions", json={"messages": [{"role": "system", "content": "x"}],
                                                      "stream": True}, headers=AUTH)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def _msg():
    from ic_core.serve.schemas import Message

    return Message(role="user", content=Q)
