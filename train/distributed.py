"""A round on GPUs: one device per rank, a 4-bit base when asked, and an adapter saved whole.

``accelerate launch --config_file train/accelerate/<ddp|zero2|zero3|fsdp>.yaml -m prefloop.train
--round ID`` starts one process per GPU; each runs the same round (train/rounds.py), rank 0 alone
writes to the database. Three things differ from a single process, and live here:

- ``use_local_device``: every rank loads the parent onto *its* GPU (LOCAL_RANK), not all onto
  GPU 0 (which is where ``"cuda"`` points until accelerate sets the device, after loading).
- ``gathered_adapter_state``: under DeepSpeed ZeRO-3 and FSDP each rank holds a shard of every
  parameter, the adapter's included. Saving on rank 0 alone writes empty or partial tensors: the
  trap of alignment-handbook #57 and OpenRLHF #436 (a 40-byte adapter_model.safetensors). Every
  rank takes part in gathering the adapter's parameters (only those: a gathered 70B base would
  not fit rank 0's memory), then rank 0 writes them.
- ``finish_sharded``: held-out scoring under ZeRO-3 runs on every rank together (no rank holds
  the whole model); under FSDP rank 0 rebuilds the parent with the gathered adapter
  (``unsharded_adapter_model``) and scores it alone.

A 4-bit base (``RoundConfig.quantize_base = "4bit"``, QLoRA through bitsandbytes) needs a CUDA
GPU: ``check_quantization`` refuses it anywhere else, with the reason.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from prefloop.db.store import Store
from prefloop.engine import models
from prefloop.errors import RoundError
from prefloop.train.config import QUANTIZE_CHOICES, RoundConfig


def shared_dataset(dataset, folder: Path):
    """The round's rows as a dataset every rank reads from one folder (one process: unchanged).

    An in-memory dataset keeps its cache files in a temporary folder of each process's own, and
    TRL's one reference pass writes the parent's log-probs there on rank 0 for every rank to read:
    rank 1 then fails with "Failed to open local file /tmp/hf_datasets-.../cache-....arrow" (found
    running `prefloop.train` on two CPU ranks). Rank 0 writes the rows to ``folder`` first.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return dataset
    import torch
    from accelerate import PartialState
    from datasets import load_from_disk

    state = PartialState(cpu=not torch.cuda.is_available())  # the trainer's own state, made early
    with state.main_process_first():
        if state.is_main_process:
            dataset.save_to_disk(str(folder))
        return load_from_disk(str(folder))


def sharded_launch() -> bool:
    """Whether accelerate launched this rank under ZeRO-3 or FSDP (read from its environment)."""
    return (os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
            or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true")


def load_parent(store: Store, parent: str, device: str, config: RoundConfig, bf16: bool, *, whole: bool = False):
    """The round's parent, fresh (never the sampler's cached copy), as this device trains it.

    CPU: float32 weights (bf16 autocast where the CPU computes bf16; train/rounds.use_bf16).
    CUDA: bf16 weights when the round is bf16, since the base is frozen and LoRA keeps its own
    weights in float32; SDPA or flash attention; or the parent in 4-bit (QLoRA).
    """
    import torch

    on_gpu = device.startswith("cuda")
    check_quantization(config.quantize_base, on_gpu)
    if config.quantize_base == "4bit":
        return _load_parent_4bit(store, parent, device)
    dtype = torch.bfloat16 if on_gpu and bf16 else torch.float32
    # Under ZeRO-3/FSDP each rank loads the parent into host memory and DeepSpeed/FSDP move only
    # its shard to the GPU (a whole 70B would not fit one). Not yet zero.Init's shard-by-shard
    # loading: a host needs RAM for one bf16 copy per rank (README, "Scaling up").
    model, _ = models.load_fresh(store, parent, "cpu" if sharded_launch() and not whole else device, dtype)
    if on_gpu and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(attention_implementation())
    return model


def _load_parent_4bit(store: Store, parent: str, device: str):
    """The parent in NF4. A chain is merged once (float32, as every merge) into
    ``$PREFLOOP_HOME/merged/<parent>`` (a 4-bit layer cannot take a merge), then quantised as it
    loads."""
    import torch
    from transformers import AutoModelForCausalLM

    chain = store.version_chain(parent)
    source = models.version_path(chain[0])
    if len(chain) > 1:
        merged = models.models_dir().parent / "merged" / parent
        if not (merged / "config.json").exists():
            models.export_merged(store, parent, merged)
        source = merged
    index = torch.cuda.current_device() if device == "cuda" else int(device.split(":")[1])
    model = AutoModelForCausalLM.from_pretrained(
        str(source), quantization_config=quantization_config(), dtype=torch.bfloat16,
        device_map={"": index}, attn_implementation=attention_implementation(),
    )
    return model


def use_local_device() -> None:
    """Under a launcher, make this rank's GPU the current one before anything is loaded."""
    import torch

    local = os.environ.get("LOCAL_RANK")
    if local is not None and torch.cuda.is_available():
        torch.cuda.set_device(int(local))


def check_quantization(quantize_base: str, on_gpu: bool) -> None:
    """Refuse a 4-bit base where it cannot run, before any model is loaded."""
    if quantize_base == "none":
        return
    if quantize_base not in QUANTIZE_CHOICES:
        raise RoundError(f"quantize_base must be one of {', '.join(QUANTIZE_CHOICES)}, not {quantize_base!r}")
    if not on_gpu:
        raise RoundError(
            "quantize_base=4bit (QLoRA) needs a CUDA GPU: bitsandbytes' 4-bit kernels do not run on "
            "this machine's CPU. Train with quantize_base=none here, or run the round on a GPU host."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RoundError("quantize_base=4bit needs bitsandbytes: pip install 'bitsandbytes>=0.45'")


def quantization_config():
    """NF4 with double quantization and bf16 compute: the QLoRA paper's recipe."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16,
                              bnb_4bit_quant_storage=torch.bfloat16)  # bf16 storage: FSDP/ZeRO-3 can shard it


def attention_implementation() -> str:
    """flash_attention_2 where flash-attn is installed on a GPU, else PyTorch's SDPA (which picks
    its own flash or memory-efficient kernel on CUDA)."""
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _sharding(accelerator) -> str | None:
    """'zero3', 'fsdp' or None (DDP, ZeRO-2, one process: every rank has whole parameters)."""
    if accelerator is None:
        return None
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        return "zero3" if plugin is not None and int(plugin.zero_stage) == 3 else None
    if kind == DistributedType.FSDP:
        return "fsdp"
    return None


def gathered_adapter_state(trainer) -> dict[str, Any] | None:
    """The adapter's weights, whole, on rank 0 (None where no gathering is needed).

    Call it on EVERY rank: gathering is a collective, a rank that skips it hangs the others.
    """
    accelerator = getattr(trainer, "accelerator", None)
    sharding = _sharding(accelerator)
    if sharding is None:
        return None
    from peft import get_peft_model_state_dict

    model = accelerator.unwrap_model(trainer.model)
    if sharding == "zero3":
        import deepspeed

        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # the adapter only
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            full = {n: p.detach().to("cpu", copy=True) for n, p in named}
    else:
        full = accelerator.get_state_dict(trainer.model)  # FULL_STATE_DICT, gathered to rank 0
    if accelerator.is_main_process:
        state = get_peft_model_state_dict(model, state_dict=full)
        empty = [k for k, v in state.items() if v.numel() == 0]
        if not state or empty:
            raise RoundError(f"gathering the adapter under {sharding} gave empty tensors ({len(empty)} of "
                             f"{len(state)}): refusing to save an empty adapter")
        return state
    return {}


@dataclass
class Sharded:
    """What rank 0 keeps from a sharded round: the adapter's writer and its held-out accuracy."""

    save: Callable[[Path], None]
    accuracy: float | None


def finish_sharded(trainer, score: Callable[[Any, list], float], heldout_rows: list,
                   load_parent_model: Callable[[], Any]) -> Sharded | None:
    """The end of a round under ZeRO-3 or FSDP; None under DDP, ZeRO-2 or one process.

    Call it on EVERY rank; ``load_parent_model`` loads a whole parent on rank 0's GPU. ZeRO-3: every rank scores the held-out rows on its shards together
    (DeepSpeed gathers each layer as it runs, so no rank ever holds the whole model), then every
    rank gathers the adapter. FSDP: the adapter is gathered to rank 0, which scores it on a whole
    parent it loads itself (so under FSDP the parent must fit one GPU; use ZeRO-3 past that).
    """
    accelerator = getattr(trainer, "accelerator", None)
    sharding = _sharding(accelerator)
    if sharding is None:
        return None
    model = accelerator.unwrap_model(trainer.model)
    accuracy = score(model, heldout_rows) if sharding == "zero3" and heldout_rows else None
    state = gathered_adapter_state(trainer)
    if not accelerator.is_main_process:
        return Sharded(save=lambda folder: None, accuracy=None)
    if sharding == "fsdp" and heldout_rows:
        accuracy = score(unsharded_adapter_model(load_parent_model(), model, state), heldout_rows)
    return Sharded(save=lambda folder: write_adapter(model.peft_config["default"], state, folder), accuracy=accuracy)


def write_adapter(config, state: dict, folder: Path) -> None:
    """An adapter folder as PEFT's save_pretrained writes it, from gathered tensors."""
    from safetensors.torch import save_file

    config.save_pretrained(str(folder))
    save_file({k: v.contiguous() for k, v in state.items()}, str(Path(folder) / "adapter_model.safetensors"))


def unsharded_adapter_model(parent_model, sharded_peft_model, state: dict):
    """``parent_model`` (loaded whole on this rank) with the gathered adapter: a model rank 0 can
    score and save alone."""
    from peft import get_peft_model, set_peft_model_state_dict

    config = sharded_peft_model.peft_config["default"]
    model = get_peft_model(parent_model, config)
    result = set_peft_model_state_dict(model, state)
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise RoundError(f"the gathered adapter lacks {len(missing)} LoRA tensors (e.g. {missing[0]})")
    return model.eval()
