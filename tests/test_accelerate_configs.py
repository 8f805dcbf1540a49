"""The shipped accelerate configs (train/accelerate/*.yaml), checked as far as a CPU allows.

No GPU here, so no rank really shards anything. What is checked: each file loads with accelerate's
own config class (which refuses unknown keys), passes `accelerate launch`'s own validation, and
turns into the launcher environment with the settings the round relies on (ZeRO-3 gathers 16-bit
weights for saving; FSDP keeps original parameters for LoRA and saves a full state dict); the
FSDP plugin builds from that environment. The rank-0 half of a sharded save (rebuild the parent,
load the gathered adapter) runs for real on the tiny model, and a 4-bit base is refused on CPU.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

CONFIGS = Path(__file__).resolve().parent.parent / "train" / "accelerate"
EXPECTED = {
    "ddp.yaml": ("MULTI_GPU", {}),
    "zero2.yaml": ("DEEPSPEED", {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}),
    "zero3.yaml": ("DEEPSPEED", {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
                                 "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true",
                                 "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true"}),
    "fsdp.yaml": ("FSDP", {"ACCELERATE_USE_FSDP": "true", "FSDP_USE_ORIG_PARAMS": "true",
                           "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT", "FSDP_SHARDING_STRATEGY": "FULL_SHARD"}),
}


def launch_env(path: Path) -> tuple[object, dict]:
    """What `accelerate launch --config_file PATH -m prefloop.train --round 1` would run with."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import launch as launching

    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "prefloop.train", "--round", "1"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config.keys())
        _, env = launching.prepare_deepspeed_cmd_env(args)
    else:
        env = launching.prepare_multi_gpu_env(args)
    return args, env


def test_every_shipped_config_is_checked():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_accepts_the_config(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    kind, wanted = EXPECTED[name]
    config = load_config_from_file(str(CONFIGS / name))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16"
    args, env = launch_env(CONFIGS / name)
    assert args.module and args.training_script == "prefloop.train"
    assert args.training_script_args == ["--round", "1"]
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for key, value in wanted.items():
        assert env.get(key) == value, (key, env.get(key))


def test_a_config_with_an_unknown_key_is_refused(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "ddp.yaml").read_text() + "num_gpus_typo: 8\n")
    with pytest.raises(ValueError, match="num_gpus_typo"):
        load_config_from_file(str(bad))


def test_the_fsdp_plugin_builds_from_the_launch_environment(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin

    _, env = launch_env(CONFIGS / "fsdp.yaml")
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    # what a CPU cannot take: rank 0 loading alone and broadcasting its weights (accelerate says so)
    with pytest.raises(RuntimeError, match="sync_module_states"):
        FullyShardedDataParallelPlugin()
    assert env["FSDP_SYNC_MODULE_STATES"] == env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    monkeypatch.setenv("FSDP_SYNC_MODULE_STATES", "false")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "false")
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.use_orig_params
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)
    assert "FULL_SHARD" in str(plugin.sharding_strategy)


def test_single_process_needs_no_gather_and_rank0_rebuild_is_exact(tiny_v0, tmp_path):
    """Outside ZeRO-3/FSDP nothing is gathered; the rank-0 rebuild (fresh parent + gathered
    adapter state) gives the trained adapter's logits exactly."""
    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    from prefloop.engine import models
    from prefloop.train import distributed

    torch.manual_seed(0)
    parent, tokenizer = models.load_fresh(tiny_v0, "v0", "cpu", torch.float32)
    trained = get_peft_model(parent, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                init_lora_weights=False, task_type="CAUSAL_LM"))
    one_process = SimpleNamespace(accelerator=Accelerator(cpu=True), model=trained)
    assert distributed.gathered_adapter_state(one_process) is None
    assert distributed.finish_sharded(one_process, lambda model, rows: 1.0, [], lambda: None) is None
    state = get_peft_model_state_dict(trained)
    fresh, _ = models.load_fresh(tiny_v0, "v0", "cpu", torch.float32)
    rebuilt = distributed.unsharded_adapter_model(fresh, trained, state)
    ids = torch.tensor([tokenizer("a short test sentence")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(rebuilt(ids).logits, trained.eval()(ids).logits)
    # what rank 0 writes from gathered tensors loads as the adapter PEFT itself would have saved
    from peft import PeftModel

    distributed.write_adapter(trained.peft_config["default"], state, tmp_path / "adapter")
    again, _ = models.load_fresh(tiny_v0, "v0", "cpu", torch.float32)
    loaded = PeftModel.from_pretrained(again, str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, trained(ids).logits)


def test_a_4bit_base_is_refused_on_cpu_with_the_reason(tiny_v0):
    from prefloop.errors import ConfigError, RoundError
    from prefloop.train import distributed
    from prefloop.train.config import RoundConfig

    config = RoundConfig(quantize_base="4bit").validate()
    with pytest.raises(RoundError, match="needs a CUDA GPU"):
        distributed.load_parent(tiny_v0, "v0", "cpu", config, bf16=False)
    with pytest.raises(ConfigError, match="quantize_base"):
        RoundConfig(quantize_base="8bit").validate()


def test_two_ranks_train_one_round_on_cpu(tiny_v0, tmp_path):
    """The multi-process round for real: two CPU ranks (gloo) under torchrun, the launcher that
    `accelerate launch --config_file ddp.yaml` runs on GPUs. Both train in step, rank 0 alone
    writes the version. (It failed before train/distributed.shared_dataset: rank 1 could not
    read the reference log-probs rank 0 cached in its own temporary folder.)"""
    import os
    import socket
    import subprocess
    import sys

    from conftest import force_setting
    from test_dataset import add_judged_pairs

    from prefloop.db.store import prefloop_home
    from prefloop.engine.models import version_path
    from prefloop.train.config import RoundConfig
    from prefloop.train.rounds import create_round

    store = tiny_v0
    force_setting(store, "min_new_pairs", 4)
    add_judged_pairs(store, 8)
    add_judged_pairs(store, 2, split="heldout", tag="h")
    round_id = create_round(store, RoundConfig(max_steps=2, batch_size=2, gradient_accumulation=1, max_length=96,
                                               max_prompt_length=64, lora_rank=4, lora_alpha=8, learning_rate=1e-3,
                                               min_new_pairs=1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port),
                           "-m", "prefloop.train", "--round", str(round_id)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    finished = store.round(round_id)
    assert finished["status"] in ("promoted", "trained") and finished["new_version_id"]
    assert (prefloop_home() / "rounds" / str(round_id) / "train-rows-dpo").is_dir()  # two ranks really ran
    adapter = version_path(store.require_version(finished["new_version_id"])) / "adapter_model.safetensors"
    assert adapter.stat().st_size > 10_000
    assert [v["name"] for v in store.list_versions()] == ["v0", "v1"]  # one version, from rank 0 only
