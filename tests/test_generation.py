"""train/generation.py on the tiny random model: seeds, batching, counts, streaming."""

from __future__ import annotations

import pytest

from train import generation
from train.generation import SamplingError, SamplingParams, encode_conversation, generate, stream


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
    assert 1 <= len(calls) <= 5  # prefill + one step per token, shared by all 8 rows


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
