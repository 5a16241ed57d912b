"""Learn: a guided tour for teaching, with one-click examples that open in Explore."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import streamlit as st

from ic_core.errors import DataError, ICError
from ui.common import EXPLORE_KEYS, KEEP_PREFIX, fill_explore, footer, get_loaded, md_text, require_router, show_error

EXAMPLES_PATH = Path(__file__).resolve().parent.parent / "sample_prompts" / "examples.jsonl"
COMPARE_PREFIX = KEEP_PREFIX + "compare."


def load_examples(path: Path = EXAMPLES_PATH) -> list[dict[str, Any]]:
    """The curated teaching examples (one JSON object per line)."""
    if not path.is_file():
        raise DataError(f"The examples file {path.name} is missing; reinstall the app or restore sample_prompts/.")
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path.name} line {n} is not valid JSON: {exc.msg}.") from exc
        if not isinstance(item, dict) or not item.get("question"):
            raise DataError(f"{path.name} line {n} has no question.")
        items.append(item)
    return items


def fill_compare(item: dict[str, Any]) -> None:
    """Put an example into the Compare-regimes inputs and clear its old result."""
    s = st.session_state
    s[COMPARE_PREFIX + "question"] = item["question"]
    s[COMPARE_PREFIX + "kind"] = item.get("kind") or "free_text"
    s[COMPARE_PREFIX + "expected"] = str(item.get("answer") or "")
    s[COMPARE_PREFIX + "aliases"] = ", ".join(item.get("aliases") or ())
    s[COMPARE_PREFIX + "choices"] = "\n".join(item.get("choices") or ())
    s[COMPARE_PREFIX + "answer_prefix"] = item.get("answer_prefix") or ""
    # Explore's current question counts as taken, so Compare keeps this example instead of taking it over
    s["compare.taken_from_explore"] = s.get(EXPLORE_KEYS["question"], "")
    s.pop("compare.result", None)


INTRO = """
A language model holds a rich internal state before it writes anything: thousands of numbers per
layer that encode many possible continuations at once. Writing the first token forces a choice, and
everything after follows from it. Vera (2026, *Intention Collapse: Intention-Level Metrics for
Reasoning in Language Models*, [arXiv 2601.01011](https://arxiv.org/abs/2601.01011)) calls this
**intention collapse**: the many possible answers the model holds collapse into one token sequence.

The useful part: the state **before** the collapse can be read for free, in the same forward pass
that reads the prompt. If it says "unsure", a system could ask a human *before* the model acts.
This dashboard lets you check how much that state really tells you — and where it does not.
"""

METRICS = """
| measure | what it is | where in the app |
|---|---|---|
| **H_int** (intention entropy) | Entropy, in bits, of the model's next-token distribution at the last prompt token. 0 bits = certain of one token; higher = spread over many. The paper's code also uses a top-100 variant (softmax over the 100 largest logits). | Explore → risk card |
| **dim_eff** (effective dimensionality) | Over a *set* of prompts: how many directions the states really spread along (participation ratio of the covariance eigenvalues, per layer). With N prompts it can be at most N − 1. | Study |
| **Recov** (recoverability) | Can a simple linear probe tell, from the state alone, whether the model's answer will be right? Reported as AUROC with a 95 % bootstrap interval and a shuffled-label control (0.5 = no better than chance). | Recoverability |
| **H_slot** (our addition) | The same entropy, read after a short *forced answer prefix* such as "The capital of France is" — still before the model writes any content token, but now at the point where the answer is decided. | Explore → "Forced answer prefix" |
"""

MEASURED = """
We measured this on the offline default model (SmolLM2-135M-Instruct), 150 bundled capitals
(it answered 48.7 % [40.8, 56.6] correctly). AUROC 0.5 is a coin flip, 1.0 a perfect ranking of
right above wrong answers; brackets are bootstrap 95 % confidence intervals.

- **Raw H_int at the last prompt token barely predicts correctness**: 0.54 [0.37, 0.67] on 60
  held-out items. That token is the newline after the chat template's assistant header, and most
  answers begin with the same boilerplate ("The capital of…"), so H_int measures how sure the model
  is about its *first word*, not about the answer.
- **H_slot does carry the signal**: read after "The capital of X is" it reaches 0.84 [0.77, 0.90].
  A linear **probe** on the state reaches 0.85 [0.78, 0.91] (label-shuffle control: 0.51), but
  here it adds nothing measurable beyond H_slot, and on our governance-operations set no signal
  beat chance.
- **Shortcuts are real**: prompt length alone scores 0.63 [0.54, 0.72] on capitals, while a probe
  on the question's words alone scores 0.52 [0.43, 0.61]. Always compare a signal with such
  baselines before trusting it (the Recoverability page shows them side by side).
"""

TOUR = """
1. Open an example below (it fills the Explore page) and press **Read the state**.
2. Look at the **risk card**: the entropy in bits, the top next tokens, and the entropy-by-layer curve
   (the logit lens: what each layer would predict if it were the last).
3. Open the **Prompt tokens** tab: the highlighted token is where the state is read. Is it a word, or
   just a newline?
4. Press **Generate** and compare the output, coloured token by token, with what the card suggested.
   Was a low entropy followed by a right answer?
5. Clear the forced answer prefix and read again: H_int instead of H_slot. Which one moved?
6. Try the same question on **Compare regimes**: does chain of thought lower the entropy here?
"""


require_router(__file__)
st.title("Learn: intention collapse in ten minutes")
loaded = get_loaded()
st.header("1 · The idea")
st.markdown(INTRO)
st.header("2 · The measures")
st.markdown(METRICS)
st.header("3 · What we found on the small default model")
st.markdown(MEASURED)
st.header("4 · A guided tour")
st.markdown(TOUR)
st.header("5 · Examples")
st.caption("Each button fills the page's inputs (question, task kind, forced answer prefix, expected answer) "
           "and opens it. Nothing runs until you press the page's button.")
try:
    examples = load_examples()
except ICError as exc:
    show_error(exc)
    examples = []
for n, item in enumerate(examples):
    with st.container(border=True):
        left, right = st.columns([4, 1], vertical_alignment="center")
        with left:
            st.markdown(f"**{md_text(item['question'])}**")
            if item.get("note"):
                st.markdown(item["note"])  # bundled teaching notes: Markdown written for this page
            details = [f"kind: {md_text(item.get('kind', 'free_text'))}", f"answer: {md_text(item.get('answer', '—'))}"]
            if item.get("answer_prefix"):
                details.append(f"prefix: “{md_text(item['answer_prefix'])}”")
            st.caption(" · ".join(details) + f" · source: {md_text(item.get('source', 'unknown'))}")
        with right:
            if st.button("Open in Explore", key=f"learn_explore_{n}", type="primary", width="stretch"):
                fill_explore(item)
                st.switch_page("pages/1_Explore.py")
            if st.button("Compare regimes", key=f"learn_compare_{n}", width="stretch"):
                fill_compare(item)
                st.switch_page("pages/2_Compare_regimes.py")
st.divider()
footer(loaded)
