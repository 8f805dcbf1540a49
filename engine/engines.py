"""Decoding engines behind one interface: prefloop's torch loop, or a vLLM/SGLang server.

The sampler asks ``open_engine(store, version)`` for something that samples a version, and gets
an object with ``generate`` and ``stream_batch`` (the same contracts as
``prefloop.engine.generation``'s functions of those names) and ``record``, the engine and dtype
stored in every generation's params. Which engine is the ``engine`` setting's job:

    prefloop settings set engine '{"kind": "torch"}'                            # the default
    prefloop settings set engine '{"kind": "vllm", "url": "http://127.0.0.1:8000", "dtype": "bfloat16"}'

- ``torch``: prefloop's own batched decode loop (engine/generation.py). On a CPU it is the fastest
  thing measured (issue 17: 423 tok/s against vLLM CPU's 192 on the bundled model, batch 32), so
  it stays the default.
- ``vllm``: an OpenAI-compatible server (``vllm serve BASE --enable-lora``, or SGLang's) at a URL,
  on this host or a GPU box that sees the same ``$PREFLOOP_HOME/models`` paths. It serves the
  *base* once; every later version is a LoRA adapter loaded into it at run time
  (``/v1/load_lora_adapter``, which needs ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` on the server),
  so a promotion is one small HTTP call and the base never reloads.

Same settings, same seeds: every response is its own request with its own ``seed`` (vLLM draws a
seeded request from its own generator, so its text does not depend on the other requests), the
prompt is sent as the token ids the torch loop would decode from (the same chat template, applied
here), it stops on the same end-of-turn ids, and texts are stripped as the loop strips them.
``finish_reason`` is the server's: ``length`` means cut off at ``max_new_tokens``. vLLM applies
``repetition_penalty`` to prompt tokens as well as generated ones (the torch loop: generated
only), so rows carry their engine.

A chain of adapters (v0 -> v1 -> v2) becomes one adapter by concatenation
(``concatenate_adapters``): LoRA deltas add, so stacking the A matrices and the scaled B matrices
gives one adapter of summed rank whose delta is exactly the chain's sum (the merged model's
weights, up to float32 rounding; measured in tests/test_engines_vllm.py and the README). Merging
instead would need a full checkpoint per version and a base reload per promotion, which is the
thing a LoRA-serving engine is there to avoid. The price is rank: a chain of k rank-16 adapters is
rank 16k, and the server's ``--max-lora-rank`` must cover it (the error says so).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from prefloop.db.store import Store, prefloop_home
from prefloop.engine import generation, models
from prefloop.engine.generation import Generated, SamplingParams
from prefloop.errors import EngineError

ENGINE_KINDS = ("torch", "vllm")
DEFAULT_ENGINE = {"kind": "torch"}
ENGINE_FIELDS = {"kind", "url", "dtype", "api_key_env", "timeout_s", "max_concurrency"}
SERVER_TIMEOUT_S = 600.0  # one request; a 160-token answer from a loaded CPU server takes seconds
SERVER_CONCURRENCY = 64  # requests in flight per generate(); the server batches them itself
ADAPTERS_KEPT = 4  # adapters this process keeps loaded: the active version, a battle's two, one spare


# --------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------
def check_engine_settings(value: Any) -> dict:
    """The ``engine`` setting, checked: a clear EngineError naming the bad field."""
    if not isinstance(value, dict):
        raise EngineError('engine must be a JSON object, e.g. {"kind": "vllm", "url": "http://127.0.0.1:8000"}')
    unknown = sorted(set(value) - ENGINE_FIELDS)
    if unknown:
        raise EngineError(f"unknown engine field(s) {', '.join(unknown)}; known: {', '.join(sorted(ENGINE_FIELDS))}")
    kind = value.get("kind", "torch")
    if kind not in ENGINE_KINDS:
        raise EngineError(f"engine kind must be one of {', '.join(ENGINE_KINDS)}, not {kind!r}")
    if kind == "vllm":
        url = value.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise EngineError(f"the vllm engine needs the server's url (http://host:port), not {url!r}")
    for key in ("timeout_s", "max_concurrency"):
        if key in value and (isinstance(value[key], bool) or not isinstance(value[key], (int, float))
                             or value[key] <= 0):
            raise EngineError(f"engine {key} must be a positive number, not {value[key]!r}")
    return {**value, "kind": kind}


# --------------------------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------------------------
class Engine:
    """Samples one model version. ``record`` goes into every generation row's params."""

    record: dict

    def generate(self, conversations: list[list[dict]], params: SamplingParams, seeds: list[int],
                 batch_size: int = 16) -> list[Generated]:
        raise NotImplementedError

    def stream_batch(self, conversations: list[list[dict]], params: SamplingParams,
                     seeds: list[int]) -> Iterator[list[str]]:
        """Yields every row's text so far; returns (StopIteration.value) the Generated rows."""
        raise NotImplementedError


def open_engine(store: Store, name: str) -> Engine:
    """The engine the ``engine`` setting names, ready to sample version ``name``."""
    settings = check_engine_settings(store.get_setting("engine"))
    if settings["kind"] == "torch":
        return TorchEngine.open(store, name)
    return ServerEngine.open(store, name, settings)


class TorchEngine(Engine):
    """prefloop's decode loop on a merged, cached model (the sampler's path before engines)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.record = {"engine": "torch", "dtype": str(model.dtype).removeprefix("torch.")}

    @classmethod
    def open(cls, store: Store, name: str) -> "TorchEngine":
        device = models.default_device()
        model, tokenizer = models.load_version(store, name, device=device, dtype=generation.sampling_dtype(device))
        return cls(model, tokenizer)

    def generate(self, conversations, params, seeds, batch_size=16):
        return generation.generate(self.model, self.tokenizer, conversations, params, seeds, batch_size=batch_size)

    def stream_batch(self, conversations, params, seeds):
        return (yield from generation.stream_batch(self.model, self.tokenizer, conversations, params, seeds))


# --------------------------------------------------------------------------------------------
# an OpenAI-compatible server (vLLM, SGLang)
# --------------------------------------------------------------------------------------------
class ServerClient:
    """One server: JSON over HTTP with the standard library, and which adapters we loaded."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = SERVER_TIMEOUT_S):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.lock = threading.Lock()
        self.loaded: "OrderedDict[str, str]" = OrderedDict()  # adapter name -> path, oldest first

    def _request(self, method: str, path: str, body: dict | None = None):
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        return urllib.request.Request(self.url + path, data=data, method=method, headers=headers)

    def call(self, method: str, path: str, body: dict | None = None) -> Any:
        try:
            with urllib.request.urlopen(self._request(method, path, body), timeout=self.timeout_s) as answer:
                raw = answer.read().decode()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            raise EngineError(f"{self.url}{path} answered {error.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            raise EngineError(f"cannot reach the engine server at {self.url}: {error}") from None
        try:
            return json.loads(raw) if raw.strip() else None
        except json.JSONDecodeError:
            return raw

    def stream(self, path: str, body: dict) -> Iterator[dict]:
        """Server-sent events of a streaming request, as dicts (``[DONE]`` ends it)."""
        try:
            answer = urllib.request.urlopen(self._request("POST", path, body), timeout=self.timeout_s)
        except urllib.error.HTTPError as error:
            raise EngineError(f"{self.url}{path} answered {error.code}: {error.read().decode()[:500]}") from None
        except (urllib.error.URLError, OSError) as error:
            raise EngineError(f"cannot reach the engine server at {self.url}: {error}") from None
        with answer:
            for line in answer:
                line = line.decode().strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                yield json.loads(payload)

    def served(self) -> list[dict]:
        return (self.call("GET", "/v1/models") or {}).get("data", [])

    def ensure_adapter(self, name: str, path: str, served: list[dict]) -> None:
        """Load an adapter unless the server lists it (``served``: its /v1/models, just read, so a
        restarted server gets it again); unload the oldest this client loaded past ADAPTERS_KEPT."""
        with self.lock:
            if name not in {m.get("id") for m in served}:
                try:
                    self.call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
                except EngineError as error:  # another thread loaded it since `served` was read
                    if "already" not in str(error):
                        raise
            self.loaded[name] = path
            self.loaded.move_to_end(name)
            while len(self.loaded) > ADAPTERS_KEPT:
                old, _ = self.loaded.popitem(last=False)
                try:
                    self.call("POST", "/v1/unload_lora_adapter", {"lora_name": old})
                except EngineError:  # already gone (a server restart): nothing to free
                    pass


_clients: dict[tuple, ServerClient] = {}
_clients_lock = threading.Lock()


def server_client(url: str, api_key: str | None = None, timeout_s: float = SERVER_TIMEOUT_S) -> ServerClient:
    """One client per (url, key): its record of loaded adapters is shared by every caller."""
    key = (url.rstrip("/"), api_key, timeout_s)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = ServerClient(*key)
        return _clients[key]


@dataclass
class _Row:
    text: str = ""
    finish_reason: str = "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    done_at: float = 0.0


class ServerEngine(Engine):
    """Samples a version from an OpenAI-compatible server: the base by its served name, any later
    version as one LoRA adapter (its chain concatenated) loaded into the server at run time."""

    def __init__(self, client: ServerClient, model_name: str, tokenizer, stop_ids: list[int],
                 dtype: str, max_concurrency: int = SERVER_CONCURRENCY):
        self.client, self.model_name, self.tokenizer = client, model_name, tokenizer
        self.stop_ids = stop_ids
        self.max_concurrency = max_concurrency
        self.record = {"engine": "vllm", "dtype": dtype, "engine_model": model_name}

    @classmethod
    def open(cls, store: Store, name: str, settings: dict) -> "ServerEngine":
        api_key = os.environ.get(settings["api_key_env"]) if settings.get("api_key_env") else None
        client = server_client(settings["url"], api_key, float(settings.get("timeout_s", SERVER_TIMEOUT_S)))
        chain = store.version_chain(name)
        imported = [v["name"] for v in chain if v["kind"] == "imported"]
        if imported:
            raise EngineError(f"version {imported[0]!r} is lineage only (imported): no weights to serve")
        served = client.served()
        model_name = served_base(client, str(models.version_path(chain[0])), served)
        if len(chain) > 1:
            adapter = chain_adapter(store, name)
            model_name = f"prefloop-{name}-{hashlib.sha256(str(adapter).encode()).hexdigest()[:8]}"
            client.ensure_adapter(model_name, str(adapter), served)
        tokenizer, stop_ids = _tokenizer(store, name, str(models.version_path(chain[0])))
        dtype = str(settings.get("dtype", "auto"))
        return cls(client, model_name, tokenizer, stop_ids, dtype,
                   int(settings.get("max_concurrency", SERVER_CONCURRENCY)))

    # -- requests --------------------------------------------------------------------------
    def _body(self, conversation: list[dict], params: SamplingParams, seed: int) -> dict:
        return {
            "model": self.model_name,
            "prompt": generation.encode_conversation(self.tokenizer, conversation),
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": int(seed),
            "repetition_penalty": params.repetition_penalty,  # vLLM and SGLang extension
            "stop_token_ids": self.stop_ids,
            "skip_special_tokens": True,
        }

    def _one(self, body: dict, started: float) -> _Row:
        answer = self.client.call("POST", "/v1/completions", body)
        try:
            choice, usage = answer["choices"][0], answer.get("usage") or {}
        except (TypeError, KeyError, IndexError):
            raise EngineError(f"the engine server gave no completion: {str(answer)[:300]}") from None
        return _Row(choice.get("text") or "", _finish(choice.get("finish_reason")),
                    int(usage.get("prompt_tokens", len(body["prompt"]))),
                    int(usage.get("completion_tokens", 0)), time.perf_counter() - started)

    def generate(self, conversations, params, seeds, batch_size=16):
        if len(seeds) != len(conversations):
            raise EngineError(f"got {len(conversations)} conversations but {len(seeds)} seeds")
        bodies = [self._body(c, params, s) for c, s in zip(conversations, seeds)]
        started = time.perf_counter()
        # the server batches concurrent requests itself; batch_size is the torch loop's knob
        workers = max(1, min(len(bodies), self.max_concurrency))
        with ThreadPoolExecutor(workers, thread_name_prefix="prefloop-engine") as pool:
            rows = list(pool.map(lambda b: self._one(b, started), bodies))
        return [_generated(r, s) for r, s in zip(rows, seeds)]

    def stream_batch(self, conversations, params, seeds):
        """Each row streams over its own request; yields all rows' texts after every piece."""
        if len(seeds) != len(conversations):
            raise EngineError(f"got {len(conversations)} conversations but {len(seeds)} seeds")
        rows = [_Row() for _ in conversations]
        events: queue.Queue = queue.Queue()
        started = time.perf_counter()

        def pump(i: int, body: dict) -> None:
            try:
                for event in self.client.stream("/v1/completions", {
                    **body, "stream": True, "stream_options": {"include_usage": True}
                }):
                    events.put((i, event))
            except Exception as error:  # noqa: BLE001 - handed to the consumer, raised there
                events.put((i, error))
            events.put((i, None))

        for i, (c, s) in enumerate(zip(conversations, seeds)):
            threading.Thread(target=pump, args=(i, self._body(c, params, s)), daemon=True).start()
        open_rows = len(rows)
        while open_rows:
            i, event = events.get()
            if event is None:
                open_rows -= 1
                rows[i].done_at = time.perf_counter() - started
                continue
            if isinstance(event, Exception):
                raise event if isinstance(event, EngineError) else EngineError(f"stream failed: {event}")
            for choice in event.get("choices") or []:
                rows[i].text += choice.get("text") or ""
                if choice.get("finish_reason"):
                    rows[i].finish_reason = _finish(choice["finish_reason"])
            usage = event.get("usage")
            if usage:
                rows[i].prompt_tokens = int(usage.get("prompt_tokens", 0))
                rows[i].completion_tokens = int(usage.get("completion_tokens", 0))
            yield [r.text.strip() for r in rows]  # as the torch loop shows text: stripped
        return [_generated(r, s) for r, s in zip(rows, seeds)]


class _NoGenerationConfig:
    """stop_token_ids reads the model's generation_config; the tokenizer's ids suffice here."""

    generation_config = None


def _finish(reason: str | None) -> str:
    if reason in ("stop", "length"):
        return reason
    if reason is None:
        return "length"
    raise EngineError(f"the engine server ended a response with finish_reason {reason!r}")


def _generated(row: _Row, seed: int) -> Generated:
    return Generated(text=row.text.strip(), prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
                     finish_reason=row.finish_reason, latency_ms=row.done_at * 1000, seed=int(seed))


_tokenizers: dict[str, tuple] = {}
_tokenizers_lock = threading.Lock()


def _tokenizer(store: Store, name: str, base: str) -> tuple:
    """(tokenizer, stop ids) of a base, loaded once per process: the queue filler opens the
    engine on every pass."""
    with _tokenizers_lock:
        if base not in _tokenizers:
            tokenizer = models.load_tokenizer(store, name)
            _tokenizers[base] = (tokenizer, sorted(generation.stop_token_ids(_NoGenerationConfig, tokenizer)))
        return _tokenizers[base]


def served_base(client: ServerClient, base_path: str, served: list[dict]) -> str:
    """The served name of the base, checked to be this home's v0 (a server on another model
    would sample pairs under the wrong version's name)."""
    bases = [m for m in served if not m.get("parent")]
    if not bases:
        raise EngineError(f"the engine server at {client.url} lists no base model")
    wanted = {base_path, str(Path(base_path).expanduser().resolve()) if "/" in base_path else base_path}
    for model in bases:
        if model.get("root") in wanted or model.get("id") in wanted:
            return model["id"]
    said = ", ".join(f"{m.get('id')} ({m.get('root')})" for m in bases)
    raise EngineError(
        f"the engine server at {client.url} serves {said}, not this home's base {base_path}: "
        f"start it with `vllm serve {base_path} --enable-lora`"
    )


# --------------------------------------------------------------------------------------------
# a chain of adapters as one adapter
# --------------------------------------------------------------------------------------------
def chain_adapter(store: Store, name: str) -> Path:
    """One adapter folder equal to every adapter of ``name``'s chain applied to the base: the
    version's own folder when it is the only one, else their concatenation (cached on disk)."""
    adapters = [Path(models.version_path(v)) for v in store.version_chain(name)[1:]]
    if not adapters:
        raise EngineError(f"version {name!r} is a base, not an adapter")
    if len(adapters) == 1:
        return adapters[0]
    digest = hashlib.sha256("\n".join(str(a) for a in adapters).encode()).hexdigest()[:12]
    target = prefloop_home() / "engine" / "adapters" / f"{name}-{digest}"
    if not (target / "adapter_config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".tmp-{target.name}-{uuid.uuid4().hex[:8]}")
        try:
            concatenate_adapters(adapters, tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _scale(config: dict, rank: int) -> float:
    alpha = float(config.get("lora_alpha", rank))
    return alpha / (rank ** 0.5) if config.get("use_rslora") else alpha / rank


def concatenate_adapters(folders: list[Path], out: Path) -> dict:
    """Write one LoRA adapter whose delta is the sum of ``folders``' deltas, exactly.

    For each adapted module, A = [A_1; A_2; ...] (ranks stacked) and B = [s_1 B_1, s_2 B_2, ...]
    with s_i each adapter's own alpha/r, so B A = sum_i s_i B_i A_i; the result has lora_alpha =
    r (scale 1). A module some adapters leave out gets zero blocks there (still exact). Written
    in float32. Returns the written adapter_config.
    """
    import torch
    from safetensors.torch import load_file, save_file

    configs, tensors = [], []
    for folder in folders:
        folder = Path(folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        if config.get("use_dora") or config.get("modules_to_save") or config.get("bias", "none") != "none":
            raise EngineError(f"{folder}: DoRA, modules_to_save or trained biases cannot be concatenated")
        if config.get("rank_pattern") or config.get("alpha_pattern"):
            raise EngineError(f"{folder}: per-module ranks (rank_pattern) are not supported here")
        configs.append(config)
        tensors.append(load_file(str(folder / "adapter_model.safetensors")))
    modules = sorted({k.removesuffix(".lora_A.weight") for t in tensors for k in t if k.endswith(".lora_A.weight")})
    ranks = [int(c["r"]) for c in configs]
    total = sum(ranks)
    merged: dict[str, torch.Tensor] = {}
    for module in modules:
        a_key, b_key = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        shapes = [(t[a_key].shape[1], t[b_key].shape[0]) for t in tensors if a_key in t]
        fan_in, fan_out = shapes[0]
        a_blocks, b_blocks = [], []
        for config, rank, t in zip(configs, ranks, tensors):
            if a_key in t:
                a_blocks.append(t[a_key].float())
                b_blocks.append(t[b_key].float() * _scale(config, rank))
            else:
                a_blocks.append(torch.zeros(rank, fan_in))
                b_blocks.append(torch.zeros(fan_out, rank))
        merged[a_key] = torch.cat(a_blocks, 0).contiguous()
        merged[b_key] = torch.cat(b_blocks, 1).contiguous()
    targets = sorted({m.rsplit(".", 1)[-1] for m in modules})
    config = {**configs[-1], "r": total, "lora_alpha": total, "use_rslora": False, "target_modules": targets,
              "lora_dropout": 0.0}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(merged, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    (out / "prefloop_chain.json").write_text(json.dumps({"concatenated": [str(f) for f in folders]}, indent=2))
    return config
