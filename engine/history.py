"""Long conversations: cut from the left at a token budget, the same way wherever a model reads one.

A conversation that continues turn after turn outgrows what the model should read (and what a
round trains on: ``RoundConfig.max_prompt_length``). The rule, one function for the sampler,
the engines and the trainer's rows, so a model is trained on exactly the history it was sampled
with:

* a leading system message always stays;
* the earliest exchanges go first, whole: the kept history starts at a user turn, never with an
  assistant answer to a question that is no longer there;
* the last user turn always stays, even when it alone is over the budget (the sampler answers it;
  a round leaves such a row out and counts it, as before).

The number of turns dropped is returned, and the sampler records it on each generation
(``params["history_dropped_turns"]``): the Annotate page shows the marker from that record, so
an annotator sees what the model saw.

Example:
    messages, dropped = fit_history(tokenizer, conversation, budget=384)
"""

from __future__ import annotations

from prefloop.engine.generation import encode_conversation

HISTORY_MARKER = "⋯ {n} earlier message(s) cut: the model did not see them (history token budget)"


def fit_history(tokenizer, messages: list[dict], budget: int) -> tuple[list[dict], int]:
    """(the messages the model reads, how many were dropped from the left) for ``budget`` tokens."""
    if len(encode_conversation(tokenizer, messages)) <= budget:
        return messages, 0
    system = messages[:1] if messages and messages[0].get("role") == "system" else []
    rest = messages[len(system):]
    # candidate starts: user turns, earliest first; the last one is kept whatever its length
    starts = [i for i, m in enumerate(rest) if m.get("role") == "user"] or [len(rest) - 1]
    for start in starts[1:]:
        kept = system + rest[start:]
        if len(encode_conversation(tokenizer, kept)) <= budget:
            return kept, start
    return system + rest[starts[-1]:], starts[-1]


def history_marker(dropped: int) -> str:
    """The line shown where a conversation was cut (empty when nothing was)."""
    return HISTORY_MARKER.format(n=dropped) if dropped else ""
