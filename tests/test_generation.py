"""engine/generation.py on the tiny random model: seeds, batching, counts, streaming."""

from __future__ import annotations

import pytest

from prefloop.engine import generation, models
from prefloop.engine.generation import (
    SamplingParams,
    encode_conversation,
    generate,
    stream,
)
from prefloop.errors import SamplingError


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    return model, tokenizer


def chats(n: int) -> list[list[dict]]:
    # different lengths on purpose: batching must left-pad them
    return [[{"role": "user", "content": f"Question {i}: " + "tell me more " * (i % 3 + 1)}] for i in range(n)]


def count_forward_calls(model):
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def test_same_seed_same_text_different_seed_different_text(tiny):
    model, tokenizer = tiny
    params = SamplingParams(max_new_tokens=10)
    convo = chats(1)
    first = generate(model, tokenizer, convo, params, seeds=[11])[0]
    again = generate(model, tokenizer, convo, params, seeds=[11])[0]
    others = [generate(model, tokenizer, convo, params, seeds=[s])[0].text for s in (12, 13, 14)]
    assert first.text and first.text == again.text
    assert first.token_ids == again.token_ids
    assert all(text != first.text for text in others)


def test_text_does_not_depend_on_batch_composition(tiny):
    model, tokenizer = tiny
    params = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=8)
    convos = chats(4)
    seeds = [100 + i for i in range(4)]
    together = generate(model, tokenizer, convos, params, seeds, batch_size=4)
    alone = [generate(model, tokenizer, [c], params, [s])[0] for c, s in zip(convos, seeds)]
    shuffled = generate(model, tokenizer, convos[::-1], params, seeds[::-1], batch_size=3)[::-1]
    assert [g.text for g in together] == [g.text for g in alone] == [g.text for g in shuffled]


def test_one_forward_pass_per_token_serves_the_whole_batch(tiny):
    model, tokenizer = tiny
    calls, handle = count_forward_calls(model)
    try:
        outputs = generate(model, tokenizer, chats(8), SamplingParams(max_new_tokens=5), list(range(8)), batch_size=16)
    finally:
        handle.remove()
    assert len(outputs) == 8
    prefill_passes = -(-8 // generation.PREFILL_ROWS)  # the filler prefills a few prompts per pass
    assert 1 <= len(calls) <= prefill_passes + 4  # then one step per token, shared by all 8 rows


def test_counts_finish_reason_and_latency(tiny):
    model, tokenizer = tiny
    convo = chats(2)
    outputs = generate(model, tokenizer, convo, SamplingParams(max_new_tokens=7), [1, 2])
    for conversation, out in zip(convo, outputs):
        assert out.prompt_tokens == len(encode_conversation(tokenizer, conversation))
        assert out.completion_tokens == 7 and out.finish_reason == "length"
        assert out.latency_ms > 0


def test_stop_token_ends_a_row_with_finish_reason_stop(tiny, monkeypatch):
    model, tokenizer = tiny
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    first_token = generate(model, tokenizer, chats(1), greedy, [0])[0].token_ids[0]
    monkeypatch.setattr(generation, "stop_token_ids", lambda *_: {first_token})
    out = generate(model, tokenizer, chats(1), greedy, [0])[0]
    assert out.finish_reason == "stop" and out.completion_tokens == 0 and out.text == ""


def test_greedy_ignores_the_seed(tiny):
    model, tokenizer = tiny
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    a, b = generate(model, tokenizer, chats(1) * 2, greedy, [1, 2])
    assert a.token_ids == b.token_ids


def test_stream_yields_growing_text_ending_in_the_generated_text(tiny):
    model, tokenizer = tiny
    params = SamplingParams(max_new_tokens=8)
    convo = chats(1)[0]
    partials = list(stream(model, tokenizer, convo, params, seed=5))
    assert len(partials) == 8
    assert partials[-1] == generate(model, tokenizer, [convo], params, [5])[0].text


def test_abandoned_stream_leaves_grad_mode_alone(tiny):
    """A consumer that stops reading a stream early must not leave the thread in inference
    mode: a training round in the same thread would then fail (seen before this test)."""
    import torch

    model, tokenizer = tiny
    partial = stream(model, tokenizer, chats(1)[0], SamplingParams(max_new_tokens=8), seed=5)
    next(partial)
    next(partial)
    assert not torch.is_inference_mode_enabled()
    assert torch.is_grad_enabled()
    del partial


def test_sampling_params_validate_with_clear_messages():
    with pytest.raises(SamplingError, match="temperature must be a number from 0 to 5"):
        SamplingParams(temperature=-1)
    with pytest.raises(SamplingError, match="top_p must be above 0"):
        SamplingParams(top_p=0)
    with pytest.raises(SamplingError, match="max_new_tokens must be a whole number"):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(SamplingError, match="unknown sampling setting"):
        SamplingParams.from_dict({"temprature": 1})
    params = SamplingParams.from_dict({"temperature": 0.5}).replace(top_p=None, max_new_tokens=9)
    assert params.to_dict() == {"temperature": 0.5, "top_p": 0.95, "max_new_tokens": 9, "repetition_penalty": 1.0}


def test_bad_inputs_are_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(SamplingError, match="2 conversations but 1 seeds"):
        generate(model, tokenizer, chats(2), SamplingParams(), [1])
    with pytest.raises(SamplingError, match="non-empty list"):
        generate(model, tokenizer, [[]], SamplingParams(), [1])


def test_repetition_penalty_changes_greedy_output(tiny):
    model, tokenizer = tiny
    plain = generate(model, tokenizer, chats(1), SamplingParams(temperature=0, max_new_tokens=6), [0])[0]
    penalised = generate(
        model, tokenizer, chats(1), SamplingParams(temperature=0, max_new_tokens=6, repetition_penalty=3), [0]
    )[0]
    assert len(set(plain.token_ids)) == 1  # the random tiny model repeats one token greedily
    assert len(set(penalised.token_ids)) > 1


# -- sampling helper: speed work (top-p prefilter, shared prefill, live priority, dtype) --------
def full_sort_nucleus(scores, top_p):
    """The reference rule, written the slow obvious way: sort everything."""
    import torch

    kept = []
    for row in scores:
        sorted_scores, sorted_ids = torch.sort(row, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs
        kept.append(set(sorted_ids[before < top_p].tolist()))
    return kept


@pytest.mark.parametrize("prefilter", [2, 16, 256])
def test_top_p_prefilter_keeps_exactly_the_nucleus_of_a_full_sort(prefilter):
    import torch

    g = torch.Generator().manual_seed(0)
    peaked = torch.randn(3, 500, generator=g) * 8  # nucleus of a few tokens: fits the prefilter
    flat = torch.randn(3, 500, generator=g) * 0.1  # nucleus of hundreds: needs the full sort
    scores = torch.cat([peaked, flat])
    for top_p in (0.5, 0.9, 0.95):
        got = [set(ids.tolist()) for ids in generation.nucleus(scores, top_p, prefilter=prefilter)]
        assert got == full_sort_nucleus(scores, top_p)
    assert generation.nucleus(scores, 1.0) == [None] * 6


def test_rows_with_the_same_prompt_share_one_prefill_and_keep_their_own_text(tiny):
    model, tokenizer = tiny
    params = SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=6)
    convos = [c for c in chats(3) for _ in range(2)]  # a pair per prompt, as the sampler asks
    seeds = list(range(20, 26))
    prefill_rows = []
    handle = model.register_forward_pre_hook(
        lambda _m, _a, kwargs: prefill_rows.append(kwargs["input_ids"].shape) if not prefill_rows else None,
        with_kwargs=True,
    )
    try:
        together = generate(model, tokenizer, convos, params, seeds, batch_size=6)
    finally:
        handle.remove()
    assert prefill_rows[0][0] == 3  # three distinct prompts prefilled, six rows decoded
    alone = [generate(model, tokenizer, [c], params, [s])[0] for c, s in zip(convos, seeds)]
    assert [g.text for g in together] == [g.text for g in alone]
    assert together[0].text != together[1].text  # same prompt, own seed, own text


def test_live_priority_beats_expire_and_can_be_switched_off(monkeypatch):
    priority = generation.LivePriority()
    assert not priority.busy()
    priority.beat(1)
    assert priority.busy()
    priority.enabled = False
    assert not priority.busy() and priority.wait_turn() < 0.05
    priority.enabled = True
    monkeypatch.setattr(generation, "LIVE_STALE_S", 0.0)  # an abandoned stream stops counting
    assert not priority.busy()
    monkeypatch.setattr(generation, "LIVE_STALE_S", 60.0)
    priority.done(1)
    assert not priority.busy()


def test_batch_decoding_waits_while_a_live_stream_is_streaming(tiny):
    """The queue filler (generate) pauses between steps while a live stream (stream) is being
    read, and goes on as soon as the stream ends or is abandoned."""
    import threading

    model, tokenizer = tiny
    live = stream(model, tokenizer, chats(1)[0], SamplingParams(max_new_tokens=50), seed=1)
    next(live)  # an annotator is watching this one
    finished = threading.Event()
    worker = threading.Thread(
        target=lambda: (generate(model, tokenizer, chats(2), SamplingParams(max_new_tokens=3), [1, 2]), finished.set())
    )
    worker.start()
    try:
        assert not finished.wait(0.5)  # three tiny-model tokens take milliseconds when not paused
        live.close()  # the annotator left: the stream's heartbeat ends with it
        assert finished.wait(10)
    finally:
        live.close()
        worker.join(10)
    assert not generation.live_priority.busy()


def test_sampling_dtype_prefers_native_bf16_and_obeys_the_override(monkeypatch):
    import torch

    monkeypatch.delenv("PREFLOOP_SAMPLING_DTYPE", raising=False)
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    assert generation.sampling_dtype("cpu") == torch.bfloat16
    assert generation.sampling_dtype("cuda") is None  # load_version's GPU default
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert generation.sampling_dtype("cpu") == torch.float32
    monkeypatch.setenv("PREFLOOP_SAMPLING_DTYPE", "bfloat16")
    assert generation.sampling_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("PREFLOOP_SAMPLING_DTYPE", "int3")
    with pytest.raises(SamplingError, match="PREFLOOP_SAMPLING_DTYPE must be float32, bfloat16 or float16"):
        generation.sampling_dtype("cpu")


def test_bfloat16_sampling_is_still_seeded_and_repeatable(tiny_model_dir):
    """bf16 rounding can make a row's text depend on its batch mates (float32 keeps exact
    batch independence, tested above); what still holds: the same batch and seeds give the
    same texts, and different seeds different texts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    params = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=6)
    convos = [c for c in chats(3) for _ in range(2)]
    seeds = [7, 8, 9, 10, 11, 12]
    first = generate(model, tokenizer, convos, params, seeds, batch_size=6)
    again = generate(model, tokenizer, convos, params, seeds, batch_size=6)
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert all(g.completion_tokens == 6 for g in first)
    assert first[0].text != first[1].text  # the two sides of a pair differ


def test_prefill_in_chunks_gives_the_same_text_as_one_pass(tiny, monkeypatch):
    model, tokenizer = tiny
    params = SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=6)
    convos, seeds = chats(5), [31, 32, 33, 34, 35]
    monkeypatch.setattr(generation, "PREFILL_ROWS", 100)
    one_pass = generate(model, tokenizer, convos, params, seeds, batch_size=5)
    monkeypatch.setattr(generation, "PREFILL_ROWS", 2)
    calls, handle = count_forward_calls(model)
    try:
        chunked = generate(model, tokenizer, convos, params, seeds, batch_size=5)
    finally:
        handle.remove()
    assert [g.token_ids for g in chunked] == [g.token_ids for g in one_pass]
    assert len(calls) == 3 + 5  # three prefill passes of at most two prompts, then five steps
