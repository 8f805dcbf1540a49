"""Conversations that continue, thumbs on single answers, and histories cut at a token budget
(issue 16). Names hold `conversation`, `multi_turn` or `thumbs`, so each group runs on its own:
`pytest -k thumbs`, `pytest -k multi_turn`.

Real parts throughout: a real SQLite home, the tiny random model streaming through the real
engine, the real bundled tokenizer and chat template.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from prefloop import ui
from prefloop.annotate import auth, conversations
from prefloop.annotate.sampler import QueueFiller, sample_pairs
from prefloop.annotate.transfer import export_judgments, import_judgments
from prefloop.cli import cli
from prefloop.db.store import Store
from prefloop.engine.generation import encode_conversation
from prefloop.engine.history import fit_history
from prefloop.errors import PrefloopError
from prefloop.train import recipe
from prefloop.train.dataset import build_preference_rows
from prefloop.ui import annotate as annotate_ui

PASSWORD = "correct-horse-battery"
SHORT = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6}


def signed_in(store, name: str) -> tuple[str, int]:
    auth.create_user(store, name, PASSWORD, "annotator")
    token, _ = ui.annotate.sign_in(store, name, PASSWORD)
    assert token
    return token, store.annotator_by_name(name)["id"]


def served_screen(store, token):
    screen = annotate_ui.next_pair(store, token)
    assert screen.pair is not None, screen.message
    return screen


def _pair(store, prompt_id: int, version_id: int, a: str, b: str) -> int:
    return store.add_pair(prompt_id, {"version_id": version_id, "text": a, "seed": 1},
                          {"version_id": version_id, "text": b, "seed": 2})


def _single(store, prompt_id: int, version_id: int, text: str, **kw) -> int:
    return store.add_single(prompt_id, {"version_id": version_id, "text": text, "seed": 3}, **kw)


# -- thumbs ----------------------------------------------------------------------------------
def test_thumbs_single_answer_is_served_voted_and_keeps_lineage(tiny_v0):
    store = tiny_v0
    store.set_active_version("v0")
    token, me = signed_in(store, "alice")
    store.add_prompts([{"text": "Name a colour."}])
    [prompt] = store.list_prompts()
    version_id = store.active_version()["id"]
    item = _single(store, prompt["id"], version_id, "Blue.")

    screen = served_screen(store, token)
    assert screen.single and screen.pair["generation_b_id"] is None
    assert "Blue." in screen.left_html and "👍" in screen.right_html
    # a pair's choice on a single answer is refused and stores nothing
    with pytest.raises(PrefloopError, match="thumbs up or down"):
        store.record_judgment(me, item, "a")
    assert store.judgments() == []

    annotate_ui.vote(store, token, screen.pair, "up")
    [row] = store.judgments()
    assert (row["choice"], row["mode"], row["text_a"], row["text_b"]) == ("up", "single", "Blue.", None)
    assert row["version_a"] == "v0" and row["prompt"] == "Name a colour."
    # and the other way round: thumbs on a pair of answers are refused
    pair = _pair(store, prompt["id"], version_id, "Red.", "Green.")
    served_screen(store, token)
    with pytest.raises(PrefloopError, match="two answers"):
        store.record_judgment(me, pair, "up")


def test_thumbs_votes_survive_export_and_import(tiny_v0, tmp_path):
    store = tiny_v0
    token, _ = signed_in(store, "alice")
    store.add_prompts([{"text": "Name a fruit."}])
    [prompt] = store.list_prompts()
    _single(store, prompt["id"], store.active_version()["id"], "A pear.")
    annotate_ui.vote(store, token, served_screen(store, token).pair, "down")
    out = tmp_path / "votes.jsonl"
    export_judgments(store, out)
    record = json.loads(out.read_text().splitlines()[1])
    assert record["pair"]["mode"] == "single" and record["generation_b"] is None

    other = Store(tmp_path / "other.db")
    counts = import_judgments(other, out)
    assert counts["judgments"] == 1
    [row] = other.judgments()
    assert (row["choice"], row["mode"], row["text_a"], row["text_b"]) == ("down", "single", "A pear.", None)
    assert import_judgments(other, out)["judgments"] == 0  # same file twice adds nothing


def test_thumbs_share_fills_part_of_the_queue_with_single_answers(tiny_v0):
    store = tiny_v0
    store.set_setting("sampling", SHORT)
    store.set_setting("gate_share", 0.0)
    store.set_setting("queue_target", 4)
    store.set_setting("thumbs_share", 0.5)
    store.add_prompts([{"text": f"Question {i}?"} for i in range(12)])
    filler = QueueFiller(store, batch_size=4)
    for _ in range(6):
        filler.run_once()
    modes = [r["mode"] for r in store.rows("select mode from pairs where status = 'open'")]
    assert modes.count("single") == 2, modes  # half the target of 4
    assert modes.count("pair") >= 2


def test_thumbs_off_by_default_queues_only_pairs(tiny_v0):
    store = tiny_v0
    store.set_setting("sampling", SHORT)
    store.add_prompts([{"text": f"Question {i}?"} for i in range(4)])
    sample_pairs(store, "v0", n_prompts=4, seed=1)
    QueueFiller(store, batch_size=4).run_once()
    assert store.scalar("select count(*) from pairs where mode = 'single'") == 0


# -- conversations that continue -------------------------------------------------------------
CHAT = [
    {"role": "user", "content": "Plan a picnic for four."},
    {"role": "assistant", "content": "Sandwiches, fruit and water."},
    {"role": "user", "content": "Make it vegetarian."},
]


def test_multi_turn_continued_conversation_trains_with_two_turns_of_history(tiny_v0):
    """Vote, continue with a typed next turn (same annotator: the next pair streams to them),
    vote again: the round's row for the second pair has the first turn, the chosen answer as
    the assistant turn, then the new user turn."""
    store = tiny_v0
    store.set_setting("sampling", SHORT)
    token, me = signed_in(store, "alice")
    store.add_prompts([{"text": "Plan a picnic for four."}])
    [prompt] = store.list_prompts()
    first = _pair(store, prompt["id"], store.active_version()["id"], "Sandwiches.", "Soup.")
    screen = served_screen(store, token)
    left_text = "Sandwiches." if screen.pair["left_generation_id"] == store.pair(first)["generation_a_id"] else "Soup."
    after = annotate_ui.vote(store, token, screen.pair, "left")
    assert after.continuation and after.continuation["pair_id"] == first
    label, history_html, _ = annotate_ui.continuation_view(after.continuation)
    assert "1 turns" not in label and left_text in history_html

    screens = list(annotate_ui.continue_conversation(store, token, first, "Make it vegetarian."))
    final = screens[-1]
    assert final.pair is not None and final.continuation == {}
    assert "Make it vegetarian." in final.prompt_html and left_text in final.prompt_html
    new_prompt = store.prompt(store.pair(final.pair["pair_id"])["prompt_id"])
    assert new_prompt["parent_pair_id"] == first and new_prompt["source"] == "live"
    annotate_ui.vote(store, token, final.pair, "right")

    rows = build_preference_rows(store, pair_ids=[final.pair["pair_id"]])
    assert len(rows) == 1
    assert rows[0]["prompt"] == [
        {"role": "user", "content": "Plan a picnic for four."},
        {"role": "assistant", "content": left_text},
        {"role": "user", "content": "Make it vegetarian."},
    ]
    # continued once: the same conversation cannot be continued again
    with pytest.raises(PrefloopError, match="cannot be continued"):
        conversations.continued_prompt(store, me, first, "And dessert?")


def test_conversation_continues_only_from_a_chosen_answer(tiny_v0):
    store = tiny_v0
    token, me = signed_in(store, "alice")
    store.add_prompts([{"text": "Hi?"}, {"text": "Bye?"}])
    p1, p2 = store.list_prompts()
    version_id = store.active_version()["id"]
    _pair(store, p1["id"], version_id, "Hello.", "Hey.")
    after = annotate_ui.vote(store, token, served_screen(store, token).pair, "tie")
    assert after.continuation == {}  # a tie chose nothing: the panel hides
    before = store.table_dump()
    with pytest.raises(PrefloopError):
        conversations.continued_prompt(store, me, 1, "Go on.")
    assert store.table_dump() == before

    # a written better answer wins over both and becomes the assistant turn
    _pair(store, p2["id"], version_id, "Bye.", "Later.")
    after = annotate_ui.vote(store, token, served_screen(store, token).pair, "both_bad",
                             better_answer="Goodbye, take care!")
    assert after.continuation["history"][-1] == {"role": "assistant", "content": "Goodbye, take care!"}


def test_conversation_continuation_refuses_hostile_or_empty_turns_and_off_setting(tiny_v0):
    store = tiny_v0
    token, me = signed_in(store, "alice")
    store.add_prompts([{"text": "Hi?"}])
    [prompt] = store.list_prompts()
    pair_id = _pair(store, prompt["id"], store.active_version()["id"], "Hello.", "Hey.")
    annotate_ui.vote(store, token, served_screen(store, token).pair, "left")
    before = store.table_dump()
    for bad in ("", "   ", "evil\x1b[2Jturn", "x" * 20_001, ["a list"]):
        with pytest.raises(PrefloopError):
            conversations.continued_prompt(store, me, pair_id, bad)
    with pytest.raises(PrefloopError):
        list(annotate_ui.continue_conversation(store, token, "1", "Go on."))  # a pair id must be a number
    store.set_setting("continuation", "off")
    assert conversations.waiting_conversation(store, me) is None
    with pytest.raises(PrefloopError, match="cannot be continued"):
        conversations.continued_prompt(store, me, pair_id, "Go on.")
    after = store.table_dump()
    assert after.pop("settings") == [("continuation", '"off"')]
    before.pop("settings")
    assert after == before


def test_conversation_followups_from_the_prompt_set_and_anyone_continues(tiny_v0, tmp_path):
    """A chat imported with follow-ups: under `anyone`, another annotator picks one; the new
    prompt joins the queue (source conversation) and is sampled before untouched prompts."""
    store = tiny_v0
    store.set_setting("sampling", SHORT)
    store.set_setting("continuation", "anyone")
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": CHAT, "followups": ["Add a dessert.", "Under 20 euros?"]}) + "\n"
                     + json.dumps({"prompt": "Unrelated question?"}) + "\n")
    result = CliRunner().invoke(cli, ["prompts", "import", str(chats), "--split", "train"])
    assert result.exit_code == 0, result.output
    chat = next(p for p in store.list_prompts() if p["messages"])
    assert chat["followups"] == ["Add a dessert.", "Under 20 euros?"]
    alice, _ = signed_in(store, "alice")
    bob_token, bob = signed_in(store, "bob")
    pair_id = _pair(store, chat["id"], store.active_version()["id"], "Veggie wraps.", "Ham rolls.")
    annotate_ui.vote(store, alice, served_screen(store, alice).pair, "left")

    waiting = conversations.waiting_conversation(store, bob)  # anyone: bob sees alice's conversation
    assert waiting["pair_id"] == pair_id and waiting["followups"] == chat["followups"]
    assert len(waiting["history"]) == 4
    [screen] = list(annotate_ui.continue_conversation(store, bob_token, pair_id, "", "Add a dessert."))
    assert "queue" in screen.message
    continued = store.continued_prompt_of(pair_id)
    assert continued["source"] == "conversation" and continued["followups"] == ["Under 20 euros?"]
    assert [m["role"] for m in continued["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    [first_pick] = store.prompts_needing_pairs(store.active_version()["id"], "train", 1)
    assert first_pick["id"] == continued["id"]


# -- long histories: cut from the left, the same way in sampling and training ----------------
def test_multi_turn_history_is_cut_from_the_left_the_same_in_sampling_and_training(tiny_v0):
    store = tiny_v0
    store.set_setting("sampling", SHORT)
    store.set_setting("history_token_budget", 120)
    long_chat = [{"role": "system", "content": "You are brief."}]
    for i in range(6):
        long_chat += [{"role": "user", "content": f"Question {i}: " + "tell me more " * 8},
                      {"role": "assistant", "content": f"Answer {i}: " + "here is more " * 8}]
    long_chat.append({"role": "user", "content": "Last question?"})
    store.add_prompts([{"text": "Last question?", "messages": long_chat}])
    [prompt] = store.list_prompts()
    [pair_id] = sample_pairs(store, "v0", prompt_ids=[prompt["id"]], seed=1)
    pair = store.pair(pair_id)
    cut = json.loads(pair["params_a"])["history_dropped_turns"]
    tokenizer = recipe_tokenizer(store)
    kept, dropped = fit_history(tokenizer, long_chat, 120)
    assert dropped == cut > 0
    assert kept[0]["role"] == "system" and kept[1]["role"] == "user" and kept[-1]["content"] == "Last question?"
    assert len(encode_conversation(tokenizer, kept)) <= 120
    # the sampler read exactly the kept messages: the generation's prompt tokens say so
    assert store.generation(pair["generation_a_id"])["prompt_tokens"] == len(encode_conversation(tokenizer, kept))

    # a round's row for this pair is cut identically
    token, _ = signed_in(store, "alice")
    screen = served_screen(store, token)
    assert "not seen by the model" in screen.prompt_html and f"{cut} earlier message" in screen.prompt_html
    annotate_ui.vote(store, token, screen.pair, "left")
    rows, left_out = recipe.fit_prompt_length(build_preference_rows(store), tokenizer, 120)
    assert left_out == 0 and rows[0]["prompt"] == kept and rows[0]["history_dropped_turns"] == cut


def test_multi_turn_history_keeps_a_short_chat_whole_and_a_lone_long_turn(bundled_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_dir)
    assert fit_history(tokenizer, CHAT, 384) == (CHAT, 0)
    lone = [{"role": "user", "content": "word " * 300}]
    assert fit_history(tokenizer, lone, 64) == (lone, 0)  # the last user turn always stays
    rows, left_out = recipe.fit_prompt_length([{"prompt": lone, "chosen": [], "rejected": []}], tokenizer, 64)
    assert rows == [] and left_out == 1  # ... and a round leaves such a row out, counted


def recipe_tokenizer(store):
    from prefloop.engine import models

    return models.load_tokenizer(store, "v0")
