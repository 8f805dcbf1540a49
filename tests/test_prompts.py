"""Prompt import: every format, dedupe, the held-out split, and the bundled starter set."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from prefloop.annotate.prompts import (
    MAX_PROMPT_CHARS,
    STARTER_PROMPTS,
    hash_split,
    import_prompts,
    load_starter_prompts,
    prompt_key,
    read_prompts,
)
from prefloop.errors import PrefloopError, PromptImportError


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------------
def test_jsonl_import_dedupes_within_file_and_against_store(store, tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "What is a cloud?", "kind": "explanation", "id": 7},
            {"prompt": "  What   is a cloud?  "},  # same after whitespace normalising
            {"prompt": "Name three rivers.", "split": "heldout"},
        ],
    )
    report = import_prompts(store, path)
    assert (report.read, report.added, report.duplicates_in_file, report.already_present) == (3, 2, 1, 0)
    stored = {p["text"]: p for p in store.list_prompts()}
    assert stored["What is a cloud?"]["kind"] == "explanation"
    assert stored["What is a cloud?"]["source"] == "p.jsonl"
    assert stored["Name three rivers."]["split"] == "heldout"

    again = import_prompts(store, path, source="again")
    assert (again.added, again.already_present, again.duplicates_in_file) == (0, 2, 1)
    assert store.count_prompts() == 2


def test_chat_messages_last_user_turn_is_the_text(store, tmp_path):
    chat = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},  # an answer, as in preference data: dropped
    ]
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": chat}, {"messages": [{"role": "user", "content": "Plain one"}]}, {"prompt": "Plain one"}],
    )
    report = import_prompts(store, path)
    assert (report.added, report.duplicates_in_file) == (2, 1)  # a lone user turn == a plain prompt
    by_text = {p["text"]: p for p in store.list_prompts()}
    assert by_text["Name a colour."]["messages"] == chat[:4]
    assert by_text["Plain one"]["messages"] is None


def test_trl_conversational_prompt_column(tmp_path):
    path = write_jsonl(tmp_path / "trl.jsonl", [{"prompt": [{"role": "user", "content": "Why?"}]}])
    assert read_prompts(path)[0]["text"] == "Why?"


def test_csv_import_with_kind_split_and_messages_as_json(store, tmp_path):
    import csv

    path = tmp_path / "p.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prompt", "messages", "kind", "split"])
        writer.writerow([1, "Say hi, politely.", "", "rewriting", "test"])
        writer.writerow([2, "", json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]), "", ""])
        writer.writerow([3, "Say hi, politely.", "", "", ""])
    report = import_prompts(store, path)
    assert (report.added, report.duplicates_in_file) == (2, 1)
    rows = {p["text"]: p for p in store.list_prompts()}
    assert rows["Say hi, politely."]["split"] == "heldout"  # 'test' counts as held out
    assert rows["Say hi, politely."]["kind"] == "rewriting"
    assert rows["2+2?"]["messages"][0]["role"] == "system"


def test_parquet_import(store, tmp_path):
    import pandas as pd

    path = tmp_path / "p.parquet"
    pd.DataFrame(
        {"prompt": ["one?", "two?", "one?"], "kind": ["maths", None, "maths"], "split": ["train", "heldout", None]}
    ).to_parquet(path)
    report = import_prompts(store, path)
    assert (report.added, report.duplicates_in_file) == (2, 1)
    assert {p["text"]: p["split"] for p in store.list_prompts()} == {"one?": "train", "two?": "heldout"}


def test_hf_dataset_folders_plain_and_dict(store, tmp_path):
    import datasets

    plain = tmp_path / "plain"
    datasets.Dataset.from_dict({"prompt": ["a?", "b?"], "other": [1, 2]}).save_to_disk(str(plain))
    assert import_prompts(store, plain).added == 2

    split = tmp_path / "dict"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"messages": [[{"role": "user", "content": "c?"}]]}),
            "test": datasets.Dataset.from_dict({"messages": [[{"role": "user", "content": "d?"}]]}),
        }
    ).save_to_disk(str(split))
    report = import_prompts(store, split)
    assert report.added == 2
    splits = {p["text"]: p["split"] for p in store.list_prompts()}
    assert splits["c?"] == "train" and splits["d?"] == "heldout"


def test_json_list_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"prompt": "x?"}, {"prompt": "y?"}]), encoding="utf-8")
    assert [p["text"] for p in read_prompts(path)] == ["x?", "y?"]


# --------------------------------------------------------------------------------------------
# bad input: one message naming the problem, nothing written
# --------------------------------------------------------------------------------------------
BAD_JSONL = {
    "malformed": ('{"prompt": "ok"}\n{"prompt": "broken"\n', ["line 2", "not valid JSON"]),
    "empty": ("", ["empty"]),
    "blank lines only": ("\n\n  \n", ["empty"]),
    "missing field": ('{"prompt": "ok"}\n{"question": "where?", "id": 3}\n', ["line 2", "'prompt' or 'messages'", "'question'"]),
    "empty prompt": ('{"prompt": "ok"}\n{"prompt": "   "}\n', ["line 2", "empty"]),
    "null prompt": ('{"prompt": null}\n', ["line 1", "empty"]),
    "prompt not text": ('{"prompt": 42}\n', ["line 1", "must be text"]),
    "not an object": ('["prompt", "x"]\n', ["line 1", "JSON object"]),
    "bad role": ('{"messages": [{"role": "robot", "content": "hi"}]}\n', ["line 1", "'robot'"]),
    "messages not a list": ('{"messages": {"role": "user"}}\n', ["line 1", "list"]),
    "message without content": ('{"messages": [{"role": "user"}]}\n', ["line 1", "message 1", "'content'"]),
    "no user turn": ('{"messages": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]}\n', ["no user message"]),
    "empty content": ('{"messages": [{"role": "user", "content": ""}]}\n', ["message 1", "empty"]),
    "bad split": ('{"prompt": "x", "split": "later"}\n', ["unknown split", "'later'"]),
    "kind not text": ('{"prompt": "x", "kind": 3}\n', ["'kind'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_JSONL))
def test_bad_jsonl_changes_nothing(store, tmp_path, case):
    content, expected = BAD_JSONL[case]
    store.add_prompts([{"text": "already here", "source": "seed"}])
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PromptImportError) as caught:
        import_prompts(store, path)
    for fragment in expected:
        assert fragment in str(caught.value)
    assert isinstance(caught.value, PrefloopError)
    assert [p["text"] for p in store.list_prompts()] == ["already here"]


def test_over_long_prompt_names_the_line_and_the_limit(store, tmp_path):
    path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "ok"}, {"prompt": "fine"}, {"prompt": "x" * 200_000}])
    with pytest.raises(PromptImportError, match=r"line 3: .*200,000 characters.*limit is 20,000"):
        import_prompts(store, path)
    assert store.count_prompts() == 0
    exactly = write_jsonl(tmp_path / "max.jsonl", [{"prompt": "y" * MAX_PROMPT_CHARS}])
    assert import_prompts(store, exactly).added == 1


def test_over_long_csv_cell_names_the_row(store, tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("prompt\nshort\n" + "z" * 200_000 + "\n", encoding="utf-8")
    with pytest.raises(PromptImportError, match="row 2: .*200,000"):
        import_prompts(store, path)
    assert store.count_prompts() == 0


def test_non_utf8_is_named(store, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "ok"}\n{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(PromptImportError, match="not UTF-8.*line 2"):
        import_prompts(store, path)


def test_missing_csv_column_lists_found_columns(store, tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("question,answer\nwhy?,because\n", encoding="utf-8")
    with pytest.raises(PromptImportError, match=r"found columns: 'question', 'answer'"):
        import_prompts(store, path)


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("notes.txt", "hello", "unknown file type '.txt'"),
        ("broken.parquet", "not parquet", "not a readable Parquet file"),
        ("empty.csv", "", "empty"),
    ],
)
def test_other_bad_files(store, tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PromptImportError, match=expected):
        import_prompts(store, path)
    assert store.count_prompts() == 0


def test_missing_file_and_plain_folder(store, tmp_path):
    with pytest.raises(PromptImportError, match="no such file"):
        import_prompts(store, tmp_path / "nope.jsonl")
    with pytest.raises(PromptImportError, match="not a dataset saved"):
        import_prompts(store, tmp_path)


def test_bad_heldout_fraction(store, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])
    with pytest.raises(PromptImportError, match="held-out fraction"):
        import_prompts(store, path, heldout_fraction=1.5)


# --------------------------------------------------------------------------------------------
# held-out split
# --------------------------------------------------------------------------------------------
def test_hash_split_is_deterministic_and_near_the_fraction(tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", [{"prompt": f"question number {i}?"} for i in range(2000)])
    first = [p["split"] for p in read_prompts(path, heldout_fraction=0.1)]
    second = [p["split"] for p in read_prompts(path, heldout_fraction=0.1)]
    assert first == second
    assert 0.07 < first.count("heldout") / len(first) < 0.13
    larger = [p["split"] for p in read_prompts(path, heldout_fraction=0.3)]
    # a larger fraction only moves prompts into held-out, never out of it
    assert all(b == "heldout" for a, b in zip(first, larger) if a == "heldout")
    assert set(p["split"] for p in read_prompts(path, heldout_fraction=0.0)) == {"train"}
    assert set(p["split"] for p in read_prompts(path, split="heldout")) == {"heldout"}


def test_hash_split_uses_the_store_hash():
    prompt = {"text": "What is 2+2?", "messages": None}
    key = prompt_key(prompt)
    assert key == prompt_key({"text": "What   is 2+2? ", "messages": None})
    assert hash_split(key, 0.0) == "train" and hash_split(key, 0.999999) in ("heldout", "train")


# --------------------------------------------------------------------------------------------
# the starter set
# --------------------------------------------------------------------------------------------
def test_starter_set_shape():
    records = [json.loads(line) for line in STARTER_PROMPTS.read_text(encoding="utf-8").splitlines()]
    assert len(records) >= 200
    kinds = Counter(r["kind"] for r in records)
    assert len(kinds) >= 10
    heldout = [r for r in records if r["split"] == "heldout"]
    assert len(heldout) >= 40
    assert {r["kind"] for r in heldout} == set(kinds)  # held-out spread over every kind
    assert {r["split"] for r in records} == {"train", "heldout"}
    prompts = read_prompts(STARTER_PROMPTS)
    assert len({prompt_key(p) for p in prompts}) == len(records)  # no duplicates
    assert all(len(p["text"]) < 1500 for p in prompts)  # short-to-medium


def test_load_starter_prompts_is_idempotent(store):
    first = load_starter_prompts(store)
    assert first.added >= 200 and first.already_present == 0
    assert store.count_prompts("heldout") >= 40
    again = load_starter_prompts(store)
    assert again.added == 0 and again.already_present == first.added
    assert {p["source"] for p in store.list_prompts()} == {"starter"}
