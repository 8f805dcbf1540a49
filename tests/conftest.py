"""Shared fixtures: every test gets its own PREFLOOP_HOME, and tiny random models to train."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TINY_CONFIG = dict(
    vocab_size=49152,  # the SmolLM2 tokenizer's, so chat templates and decoding are real
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """A fresh data folder for each test; nothing touches a real home."""
    folder = tmp_path / "home"
    monkeypatch.setenv("PREFLOOP_HOME", str(folder))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    from prefloop.annotate import auth
    from prefloop.engine import models

    models.clear_cache()
    auth.sign_in_limiter.reset()
    yield folder
    models.clear_cache()


@pytest.fixture
def store(home):
    from prefloop.db.store import Store

    s = Store()
    yield s
    s.close()


@pytest.fixture(scope="session")
def bundled_tokenizer_dir(tmp_path_factory) -> Path:
    """The bundled model's tokenizer, read once from its GGUF file."""
    from transformers import AutoTokenizer

    from prefloop.engine.models import bundled_gguf

    gguf = bundled_gguf()
    out = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_tokenizer_dir) -> Path:
    """A randomly initialised 2-layer Llama (about 3M parameters) with the real tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-model")
    model = LlamaForCausalLM(LlamaConfig(**TINY_CONFIG))
    model.save_pretrained(out, safe_serialization=True)
    for item in bundled_tokenizer_dir.iterdir():
        shutil.copy(item, out / item.name)
    return out


@pytest.fixture(scope="session")
def ending_model_dir(tmp_path_factory, bundled_tokenizer_dir) -> Path:
    """The tiny random model, changed so that its answers end on their own, after about 25 tokens
    of noise (a random model almost never draws the end-of-turn token, so its answers all run to
    the cap and have no length to learn). Every token's embedding gets the same first coordinate,
    which after the final norm adds one constant to every logit, except the end-of-turn token's,
    which gets more: a fixed chance to stop at each step."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("ending-model")
    model = LlamaForCausalLM(LlamaConfig(**TINY_CONFIG))
    with torch.no_grad():
        embeddings = model.model.embed_tokens.weight  # tied: the output layer too
        embeddings[:, 0] = 1.0
        embeddings[TINY_CONFIG["eos_token_id"], 0] = 1.8
    model.save_pretrained(out, safe_serialization=True)
    for item in bundled_tokenizer_dir.iterdir():
        shutil.copy(item, out / item.name)
    return out


@pytest.fixture
def tiny_v0(store, tiny_model_dir):
    """A store whose active version v0 is the tiny random model."""
    from prefloop.engine.models import create_base_version

    create_base_version(store, base_model=str(tiny_model_dir))
    return store


def force_setting(store, key: str, value) -> None:
    """Write a setting past the store's limits (tests only): e.g. a value an old version allowed,
    to see how today's code reads it."""
    import json

    with store.write() as db:
        db.execute("insert into settings (key, value) values (?, ?) "
                   "on conflict(key) do update set value = excluded.value", [key, json.dumps(value)])
