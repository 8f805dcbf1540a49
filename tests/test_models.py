"""Model versions end to end: LoRA chains load exactly as exported, the CLI, the real model."""

from __future__ import annotations

import copy

import pytest
import torch
from click.testing import CliRunner

from prefloop.cli import cli
from prefloop.engine import models


def add_random_adapter(store, parent: str, seed: int) -> dict:
    """Register a LoRA adapter on ``parent`` whose B matrices are random (so it changes outputs)."""
    from peft import LoraConfig, get_peft_model

    def write(folder):
        torch.manual_seed(seed)
        base, _ = models.load_version(store, parent)
        peft_model = get_peft_model(
            copy.deepcopy(base),  # never wrap the cached, shared model
            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
        )
        peft_model.save_pretrained(str(folder))

    return models.register_adapter_version(store, parent, write, card={"method": "test", "seed": seed})


def logits_of(model, tokenizer) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is a LoRA adapter?"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_adapter_chain_loads_exactly_like_its_merged_export(tiny_v0, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    store = tiny_v0
    v1 = add_random_adapter(store, "v0", seed=1)
    v2 = add_random_adapter(store, "v1", seed=2)
    assert (v1["name"], v2["name"]) == ("v1", "v2")
    assert [v["name"] for v in store.version_chain("v2")] == ["v0", "v1", "v2"]

    chained, tokenizer = models.load_version(store, "v2")
    chained_logits = logits_of(chained, tokenizer)
    base_logits = logits_of(*models.load_version(store, "v0"))

    out = models.export_merged(store, "v2", tmp_path / "export")
    exported = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    exported_logits = logits_of(exported, AutoTokenizer.from_pretrained(str(out)))

    assert torch.allclose(chained_logits, exported_logits, atol=1e-5)
    assert not torch.allclose(chained_logits, base_logits, atol=1e-3)
    v1_logits = logits_of(*models.load_version(store, "v1"))
    assert not torch.allclose(chained_logits, v1_logits, atol=1e-3)  # v2's own adapter counts too


def reference_merge(store, name: str) -> dict[str, torch.Tensor]:
    """The chain merged by hand from the files on disk, in float64: W + (alpha / r) * B @ A per
    adapter, base first. Shares no code with models.load_fresh or PEFT's merge."""
    import json

    from safetensors.torch import load_file

    chain = store.version_chain(name)
    weights = {k: v.double() for k, v in load_file(str(models.version_path(chain[0]) / "model.safetensors")).items()}
    for version in chain[1:]:
        folder = models.version_path(version)
        config = json.loads((folder / "adapter_config.json").read_text())
        scale = config["lora_alpha"] / config["r"]
        adapter = load_file(str(folder / "adapter_model.safetensors"))
        for key, a in adapter.items():
            if ".lora_A." not in key:
                continue
            b = adapter[key.replace(".lora_A.", ".lora_B.")]
            target = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            weights[target] = weights[target] + scale * (b.double() @ a.double())
    return weights


def test_adapter_chain_matches_an_independent_reference_merge(tiny_v0):
    store = tiny_v0
    add_random_adapter(store, "v0", seed=1)
    add_random_adapter(store, "v1", seed=2)
    expected = reference_merge(store, "v2")
    model, _ = models.load_fresh(store, "v2")
    state = model.state_dict()
    changed = 0
    for key, want in expected.items():
        got = state[key].double()
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-5), key
        changed += not torch.allclose(want, reference_merge(store, "v0")[key]) if "q_proj" in key else 0
    assert changed > 0  # the adapters really moved the weights the reference compares


def test_bf16_weights_are_the_float32_merge_cast_once(tiny_v0):
    """Sampler, battles and gate run load_fresh's weights: the fp32 merge cast once, not a bf16 merge."""
    store = tiny_v0
    add_random_adapter(store, "v0", seed=1)
    add_random_adapter(store, "v1", seed=2)
    fp32, _ = models.load_fresh(store, "v2", dtype=torch.float32)
    bf16, _ = models.load_fresh(store, "v2", dtype=torch.bfloat16)
    cached, _ = models.load_version(store, "v2", dtype=torch.bfloat16)
    want = {k: v.to(torch.bfloat16) for k, v in fp32.state_dict().items()}
    for got in (bf16.state_dict(), cached.state_dict()):
        assert all(torch.equal(got[k], want[k]) for k in want)
    # what the old code did (each adapter merged into bf16 weights) is measurably different
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    chain = store.version_chain("v2")
    old = AutoModelForCausalLM.from_pretrained(str(models.version_path(chain[0])), dtype=torch.bfloat16)
    for version in chain[1:]:
        old = PeftModel.from_pretrained(old, str(models.version_path(version)), autocast_adapter_dtype=False).merge_and_unload()
    old_state = old.state_dict()
    assert any(not torch.equal(old_state[k].to(torch.bfloat16), want[k]) for k in want)
    with pytest.raises(models.ModelError, match="float32 only"):
        models.merge_adapter(old, models.version_path(chain[1]))


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_models_list_marks_the_active_version(tiny_v0):
    add_random_adapter(tiny_v0, "v0", seed=1)
    result = run("models", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["name", "kind", "parent", "status", "created"]
    assert lines[1].split()[:5] == ["*", "v0", "base", "-", "ready"]
    assert lines[2].split()[:4] == ["v1", "adapter", "v0", "candidate"]


def test_promote_rollback_and_reject_from_the_cli(tiny_v0):
    store = tiny_v0
    add_random_adapter(store, "v0", seed=1)
    result = run("models", "promote", "v1")
    assert result.exit_code == 0 and "active version is now v1" in result.output
    assert store.active_version()["name"] == "v1"

    result = run("models", "rollback")
    assert result.exit_code == 0 and "active version is now v0" in result.output
    assert store.version("v1")["status"] == "retired"

    result = run("models", "reject", "v1")
    assert result.exit_code == 0 and store.version("v1")["status"] == "rejected"
    result = run("models", "promote", "v1")
    assert result.exit_code == 1 and "was rejected" in result.output
    assert store.active_version()["name"] == "v0"

    result = run("models", "rollback")
    assert result.exit_code == 1 and "base version" in result.output


def test_promote_is_one_transaction(tiny_v0):
    """Pointer and retired pairs move together: if retiring fails, v0 stays active, pairs stay open."""
    store = tiny_v0
    add_random_adapter(store, "v0", seed=3)
    store.add_pair(store.add_prompts([{"text": "hi"}]) and 1, {"version_id": 1, "text": "a", "seed": 1},
                   {"version_id": 1, "text": "b", "seed": 2})
    before = store.table_dump()

    def boom(**_):
        store.db.execute("update pairs set status = 'retired'")  # part of the work, then a failure
        raise RuntimeError("disk full")

    store.retire_open_pairs = boom
    with pytest.raises(RuntimeError):
        models.promote(store, "v1")
    assert store.table_dump() == before and store.active_version()["name"] == "v0"


def test_unknown_version_is_one_clear_line_and_changes_nothing(tiny_v0):
    store = tiny_v0
    before = (store.list_versions(), store.all_settings())
    for args in (("models", "promote", "v9"), ("models", "rollback", "--to", "v9"),
                 ("models", "reject", "v9"), ("models", "export", "v9", "out"), ("sample", "--version", "v9")):
        result = run(*args)
        assert result.exit_code == 1, args
        assert result.output.strip() == "Error: no model version 'v9' (known: v0)", args
    assert (store.list_versions(), store.all_settings()) == before


def test_export_from_the_cli_refuses_a_non_empty_folder(tiny_v0, tmp_path):
    result = run("models", "export", "v0", str(tmp_path / "out"))
    assert result.exit_code == 0 and (tmp_path / "out" / "config.json").exists()
    result = run("models", "export", "v0", str(tmp_path / "out"))
    assert result.exit_code == 1 and "not empty" in result.output


def test_sample_command_queues_pairs(tiny_v0):
    store = tiny_v0
    store.add_prompts([{"text": f"prompt {i}", "source": "test"} for i in range(3)])
    result = run("sample", "--prompts", "3", "--max-new-tokens", "4", "--temperature", "1.0", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert "queued 3 pair(s) from v0" in result.output
    assert store.queued_pairs(store.version("v0")["id"]) == 3


def test_sample_command_rejects_bad_settings_without_writing(tiny_v0):
    store = tiny_v0
    store.add_prompts([{"text": "prompt", "source": "test"}])
    result = run("sample", "--temperature", "9")
    assert result.exit_code == 1
    assert "temperature must be a number from 0 to 5" in result.output
    assert store.stats()["generations"] == 0


def test_bad_base_model_path_is_a_clear_error(store, tmp_path):
    with pytest.raises(models.ModelError, match="base model path does not exist: ./nowhere/model"):
        models.create_base_version(store, base_model="./nowhere/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelError, match="has no config.json"):
        models.create_base_version(store, base_model=str(tmp_path / "empty"))
    result = run("init", "--base-model", "/nowhere/model", "--no-starter")
    assert result.exit_code == 1
    assert result.output.strip().endswith("base model path does not exist: /nowhere/model")
    assert store.list_versions() == [] and store.list_annotators() == []


def test_a_failed_conversion_in_the_child_is_one_clear_error(tmp_path):
    """The bundled GGUF converts in a child process (its memory goes back to the OS); a failure
    there must still reach the user as a ModelError naming the file, not a child's traceback."""
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    with pytest.raises(models.ModelError, match=r"^converting broken.gguf failed: \S"):
        models._convert_gguf_in_child(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bundled_model_knows_the_capital_of_france(store):
    from prefloop.engine.generation import SamplingParams, generate

    version = models.create_base_version(store)  # converts the bundled GGUF
    assert store.active_version()["name"] == version["name"] == "v0"
    model, tokenizer = models.load_version(store, "v0")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    out = generate(model, tokenizer, [question], SamplingParams(temperature=0, max_new_tokens=24), [0])[0]
    assert "Paris" in out.text, out.text
    assert out.finish_reason == "stop"  # greedy path ends at <|im_end|>, not the token cap
    assert out.text.isascii()
