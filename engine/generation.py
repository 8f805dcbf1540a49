"""Sampling responses from a model version: batched, seeded, reproducible, streamable.

Why a small decode loop of our own instead of ``model.generate``: ``generate`` draws every row's
tokens from one global RNG, so a response depends on which other prompts shared its batch. Here
each row owns a ``torch.Generator`` seeded with that row's seed, so in float32 the same (model,
prompt, settings, seed) gives the same text whether it was sampled alone or in a batch of 32 (up
to float rounding of batched matmuls: tokens are drawn with the Gumbel-max trick, which such
rounding almost never flips). In bfloat16, which the sampler uses on CPUs that compute it
natively (``sampling_dtype``), rounding is coarse enough that a row's text can change with its
batch: the same batch with the same seeds still gives the same texts, and the distribution is
float32's within 0.002 nats/token. The loop keeps a KV cache, left-pads prompts, prefills the
two rows of a pair once, drops finished rows from the batch, finds the top-p nucleus without
sorting the vocabulary, and lets live streams go first (``LivePriority``).
bench/sampling.py, 1 thread, bundled model, 32 rows: batch 32 decodes 1.4x (float32) and 3.2x
(bfloat16) llama.cpp's single-stream tokens per CPU-second on the same GGUF.

    params = SamplingParams(temperature=0.7, max_new_tokens=64)
    outs = generate(model, tokenizer, [[{"role": "user", "content": "Hi"}]], params, seeds=[1])
    for partial in stream(model, tokenizer, [{"role": "user", "content": "Hi"}], params, seed=1):
        print(partial)
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from prefloop.engine import models
from prefloop.errors import SamplingError

MAX_SEED = 2**31 - 1  # fits SQLite integers and every torch generator


def derive_seed(base: int, *parts: object) -> int:
    """A per-row seed from a run seed and the row's identity (prompt id, slot, version).

    Derived rather than counted so a row's seed, hence its text, does not depend on which
    other prompts were sampled in the same run.
    """
    digest = hashlib.sha256(":".join(str(p) for p in (base, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % MAX_SEED


@dataclass(frozen=True)
class SamplingParams:
    """How responses are sampled. Stored as JSON on every generation row (``to_dict``)."""

    temperature: float = field(
        default=0.9, metadata={"help": "Softmax temperature; 0 means greedy (always the most likely token)."}
    )
    top_p: float = field(
        default=0.95, metadata={"help": "Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p."}
    )
    max_new_tokens: int = field(
        default=160, metadata={"help": "Hard cap on response length; hitting it gives finish_reason 'length'."}
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata={"help": "Divide the logits of already generated tokens by this (1.0 = off; 1.1 tames loops in tiny models)."},
    )

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= 5:
            problems.append(f"temperature must be a number from 0 to 5, not {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            problems.append(f"top_p must be above 0 and at most 1, not {self.top_p!r}")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 8192:
            problems.append(f"max_new_tokens must be a whole number from 1 to 8192, not {self.max_new_tokens!r}")
        if not isinstance(self.repetition_penalty, (int, float)) or not 1 <= self.repetition_penalty <= 3:
            problems.append(f"repetition_penalty must be from 1 to 3, not {self.repetition_penalty!r}")
        if problems:
            raise SamplingError("invalid sampling settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "SamplingParams":
        """Build from stored settings; unknown keys are an error so typos do not pass silently."""
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SamplingError(
                f"unknown sampling setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def replace(self, **changes: Any) -> "SamplingParams":
        """A copy with some fields changed; ``None`` values are ignored (handy for CLI options)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass
class Generated:
    """One sampled response and the numbers stored with it."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end-of-turn token) | "length" (hit max_new_tokens)
    latency_ms: float  # from the start of its batch to this row's last token
    seed: int = 0
    token_ids: list[int] = field(default_factory=list, repr=False)
    # summed log p(token_ids | prompt) under the sampling model's raw logits (before temperature,
    # top-p and repetition penalty): the model's own log-likelihood of its answer, computed on the
    # way (annotate/selection.py scores candidates with it). None where an engine does not report it.
    logprob: float | None = None


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def generate(
    model,
    tokenizer,
    conversations: list[list[dict]],
    params: SamplingParams | None = None,
    seeds: list[int] | None = None,
    batch_size: int = 16,
) -> list[Generated]:
    """Sample one response per conversation, ``batch_size`` rows per forward pass.

    Rows are sorted by prompt length before batching (less padding); results come back in the
    input order. Row i uses ``seeds[i]``; repeat a conversation with different seeds to get
    several responses to one prompt.
    """
    params = params or SamplingParams()
    seeds = list(seeds) if seeds is not None else list(range(len(conversations)))
    if len(seeds) != len(conversations):
        raise SamplingError(f"got {len(conversations)} conversations but {len(seeds)} seeds")
    if batch_size < 1:
        raise SamplingError(f"batch_size must be at least 1, not {batch_size}")
    prompts = [encode_conversation(tokenizer, c) for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generated | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        decoding = Decoding(model, tokenizer, [prompts[i] for i in chunk], params, [seeds[i] for i in chunk])
        for _ in decoding:
            pass
        for i, generated in zip(chunk, decoding.results()):
            results[i] = generated
    return results  # type: ignore[return-value]


def stream(model, tokenizer, messages: list[dict], params: SamplingParams | None = None, seed: int = 0) -> Iterator[str]:
    """Yield the response decoded so far after every new token (same text as ``generate``)."""
    for texts in stream_batch(model, tokenizer, [messages], params, [seed]):
        yield texts[0]


def stream_batch(
    model, tokenizer, conversations: list[list[dict]], params: SamplingParams | None, seeds: list[int]
) -> Iterator[list[str]]:
    """Several responses decoded together; yields every row's text so far after each step.

    The generator's return value (``StopIteration.value``, or ``yield from``) is the list of
    ``Generated`` results, so a caller can stream and still store token counts and latency.
    """
    prompts = [encode_conversation(tokenizer, c) for c in conversations]
    decoding = Decoding(model, tokenizer, prompts, params or SamplingParams(), list(seeds), interactive=True)
    for _ in decoding:
        yield decoding.texts()
    return decoding.results()


def sampling_dtype(device: str = "cpu"):
    """The dtype the sampler loads a version in: bfloat16 where the CPU computes it natively.

    Measured on the bundled model (bench/sampling.py, 1 thread, AVX512-BF16 CPU): bfloat16
    decodes a batch of 16 about 2.2x faster than float32 and halves the model's memory, while
    its next-token distribution stays within 0.002 nats/token of float32 (97.5% same greedy
    token). CPUs without AVX512-BF16 or AMX emulate bfloat16 and are slower, so they keep
    float32; a GPU gets load_version's default (None). ``PREFLOOP_SAMPLING_DTYPE=float32``
    (or bfloat16) overrides the choice.
    """
    import torch

    chosen = os.environ.get("PREFLOOP_SAMPLING_DTYPE", "").strip().lower()
    if chosen:
        if chosen not in ("float32", "bfloat16", "float16"):
            raise SamplingError(f"PREFLOOP_SAMPLING_DTYPE must be float32, bfloat16 or float16, not {chosen!r}")
        return getattr(torch, chosen)
    if not device.startswith("cpu"):
        return None

    return torch.bfloat16 if models.cpu_has_native_bf16() else torch.float32


def encode_conversation(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat with the assistant turn opened (the model's own chat template)."""
    if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise SamplingError("a conversation must be a non-empty list of {'role', 'content'} messages")
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(encoded, "keys") and "input_ids" in encoded:  # transformers 5 returns a BatchEncoding
        encoded = encoded["input_ids"]
    return list(encoded)


def stop_token_ids(model, tokenizer) -> set[int]:
    """Every id that ends a turn: the tokenizer's eos, the model's eos and <|im_end|>-like tokens."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id >= 0:
            ids.add(token_id)
    return ids


# --------------------------------------------------------------------------------------------
# live streams go first
# --------------------------------------------------------------------------------------------
LIVE_STALE_S = 2.0  # a live stream silent this long is abandoned: batch decoding stops waiting
MAX_PAUSE_S = 60.0  # a batch step never waits longer than this for live streams


class LivePriority:
    """Batch decoding (the queue filler) pauses between steps while a live stream decodes.

    The app runs the queue filler and annotators' live prompts in one process. On a small CPU
    the two share cores and the GIL, and the annotator watching tokens appear is the one who
    waits; the queue has ready pairs, so pausing the filler costs no one anything. A stream
    marks itself with a heartbeat after every step; one that stops beating (abandoned by its
    consumer) is ignored after ``LIVE_STALE_S``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._beats: dict[int, float] = {}
        self.enabled = True

    def beat(self, key: int) -> None:
        with self._lock:
            self._beats[key] = time.monotonic()

    def done(self, key: int) -> None:
        with self._lock:
            self._beats.pop(key, None)

    def busy(self) -> bool:
        now = time.monotonic()
        with self._lock:
            return self.enabled and any(now - beat < LIVE_STALE_S for beat in self._beats.values())

    def wait_turn(self, max_wait_s: float = MAX_PAUSE_S) -> float:
        """Sleep while a live stream is decoding; returns the seconds paused."""
        started = time.monotonic()
        while self.busy() and time.monotonic() - started < max_wait_s:
            time.sleep(0.005)
        return time.monotonic() - started


live_priority = LivePriority()


# --------------------------------------------------------------------------------------------
# the decode loop
# --------------------------------------------------------------------------------------------
TOP_P_PREFILTER = 256  # nucleus looked for among the top-k scores first; exact fallback if it is wider
PREFILL_ROWS = 4  # distinct prompts per prefill pass of a batch decode (live streams go between)


def torch_cat(tensors):
    import torch

    return torch.cat(tensors, dim=0)


class Decoding:
    """One batch being decoded. Iterate to advance one token per step for every live row.

    Where the time goes (py-spy, bundled model, batch 32, 1 thread; README has the table): the
    forward pass (MLP matmuls first, then attention, then the 49k-row lm_head), and, before
    the changes below, a full sort of 49k scores per row for top-p (a quarter of the loop).
    So: top-p looks at the top ``TOP_P_PREFILTER`` scores first (exact: rows whose nucleus is
    wider fall back to the full sort); rows with the same prompt (the two sides of a pair) share
    one prefill; ``interactive`` streams (live prompts) make batch decodes pause between steps.
    """

    def __init__(
        self,
        model,
        tokenizer,
        prompts: list[list[int]],
        params: SamplingParams,
        seeds: list[int],
        interactive: bool = False,
    ):
        import torch

        if not prompts:
            raise SamplingError("nothing to generate: no prompts given")
        self.model = model
        self.tokenizer = tokenizer
        self.params = params
        self.seeds = [int(s) for s in seeds]
        self.prompts = prompts
        self.interactive = interactive
        self.stops = stop_token_ids(model, tokenizer)
        self.device = next(model.parameters()).device
        self.generators = []
        for seed in self.seeds:
            g = torch.Generator(device="cpu")  # CPU draws: identical on every device
            g.manual_seed(seed)
            self.generators.append(g)
        n = len(prompts)
        self.tokens: list[list[int]] = [[] for _ in range(n)]
        self.finish: list[str | None] = [None] * n
        self.latency_ms: list[float] = [0.0] * n
        self.logps: list[float] = [0.0] * n  # log p of each row's kept tokens, summed
        self.paused_s = 0.0  # time this batch waited for live streams
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def texts(self) -> list[str]:
        return [self._decode(t) for t in self.tokens]

    def results(self) -> list[Generated]:
        return [
            Generated(
                text=self._decode(tokens),
                prompt_tokens=len(prompt),
                completion_tokens=len(tokens),
                finish_reason=finish or "length",
                latency_ms=round(latency, 1),
                seed=seed,
                token_ids=tokens,
                logprob=logp,
            )
            for tokens, prompt, finish, latency, seed, logp in zip(
                self.tokens, self.prompts, self.finish, self.latency_ms, self.seeds, self.logps
            )
        ]

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def __iter__(self) -> Iterator[None]:
        key = id(self)
        try:
            yield from self._steps(key)
        finally:
            if self.interactive:
                live_priority.done(key)

    def _steps(self, key: int) -> Iterator[None]:
        import torch

        started = time.perf_counter()
        if self.interactive:
            live_priority.beat(key)
        else:
            self.paused_s += live_priority.wait_turn()
        pad = self.tokenizer.pad_token_id
        pad = pad if pad is not None else next(iter(self.stops), 0)
        # Rows with the same prompt (both sides of a pair) share one prefill; the cache is
        # copied out to every row afterwards.
        unique: dict[tuple[int, ...], int] = {}
        row_source = [unique.setdefault(tuple(p), len(unique)) for p in self.prompts]
        distinct = list(unique)
        width = max(len(p) for p in distinct)
        input_ids = torch.full((len(distinct), width), pad, dtype=torch.long)
        mask = torch.zeros((len(distinct), width), dtype=torch.long)
        for i, prompt in enumerate(distinct):  # left padding: every row ends at the same column
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[i, width - len(prompt) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        input_ids, mask, positions = (t.to(self.device) for t in (input_ids, mask, positions))
        n = len(self.prompts)
        alive = list(range(n))  # batch row -> result index
        cache = None
        # Grad mode is thread state: never yield inside inference_mode, or a consumer that stops
        # iterating early leaves the whole thread in inference mode (and training then fails).
        for _step in range(self.params.max_new_tokens):
            with torch.inference_mode():
                if cache is None:
                    logits, cache = self._prefill(input_ids, mask, positions)
                    if len(distinct) < n:
                        select = torch.tensor(row_source, device=self.device)
                        cache.batch_select_indices(select)
                        mask, positions = mask[select], positions[select]
                        logits = logits[torch.tensor(row_source)]
                else:
                    out = self.model(
                        input_ids=input_ids,
                        attention_mask=mask,
                        position_ids=positions,
                        use_cache=True,
                        logits_to_keep=1,
                        **{self._cache_kwarg: cache},
                    )
                    logits = out.logits[:, -1, :].float().cpu()
            chosen = self._pick(logits, alive)
            # the model's log-prob of each drawn token (one logsumexp per row: ~1% of a step)
            drawn = logits[torch.arange(len(chosen)), torch.tensor(chosen)] - torch.logsumexp(logits, dim=-1)
            elapsed = (time.perf_counter() - started) * 1000
            keep = []
            for row, (index, token) in enumerate(zip(alive, chosen)):
                self.latency_ms[index] = elapsed
                if token in self.stops:
                    self.finish[index] = "stop"
                else:
                    self.tokens[index].append(token)
                    self.logps[index] += float(drawn[row])
                    keep.append(row)
            if self.interactive:
                live_priority.beat(key)
            yield None
            if not keep:
                break
            if not self.interactive:
                self.paused_s += live_priority.wait_turn()
            with torch.inference_mode():
                if len(keep) < len(alive):  # finished rows leave the batch and the cache
                    select = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(select)
                    mask = mask[select]
                    positions = positions[select]
                    alive = [alive[row] for row in keep]
                    chosen = [chosen[row] for row in keep]
                input_ids = torch.tensor(chosen, dtype=torch.long, device=self.device).unsqueeze(1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                positions = positions[:, -1:] + 1
        for index in alive:
            if self.finish[index] is None:
                self.finish[index] = "length"

    def _prefill(self, input_ids, mask, positions):
        """Last-position logits and the KV cache of the prompts.

        A batch decode (the queue filler) prefills ``PREFILL_ROWS`` prompts per forward pass
        and lets live streams go first between passes: one forward over a whole batch of
        prompts holds a core for a second or more, which a live prompt would wait behind.
        The chunks' caches are joined along the batch (every row is padded to one width).
        """
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        rows = input_ids.shape[0]
        step = rows if self.interactive else PREFILL_ROWS
        logits, caches = [], []
        for start in range(0, rows, step):
            if start:
                self.paused_s += live_priority.wait_turn()
            cache = DynamicCache(config=self.model.config)
            part = slice(start, start + step)
            out = self.model(
                input_ids=input_ids[part],
                attention_mask=mask[part],
                position_ids=positions[part],
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kwarg: cache},
            )
            logits.append(out.logits[:, -1, :].float().cpu())
            caches.append(cache)
            if start == 0 and not all(type(layer) is DynamicLayer for layer in cache.layers):
                step = rows  # a cache we do not know how to join: one pass for the rest
        if len(caches) > 1 and all(type(layer) is DynamicLayer for c in caches for layer in c.layers):
            joined = caches[0]
            for index, layer in enumerate(joined.layers):
                layer.keys = torch_cat([c.layers[index].keys for c in caches])
                layer.values = torch_cat([c.layers[index].values for c in caches])
            return torch_cat(logits), joined
        if len(caches) > 1:  # unknown cache type after a first chunk: redo in one pass
            cache = DynamicCache(config=self.model.config)
            out = self.model(
                input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                logits_to_keep=1, **{self._cache_kwarg: cache},
            )
            return out.logits[:, -1, :].float().cpu(), cache
        return logits[0], caches[0]

    def _pick(self, logits, alive: list[int]) -> list[int]:
        """Next token of every live row; each row draws with its own generator."""
        import torch

        params = self.params
        if params.repetition_penalty != 1.0:
            logits = logits.clone()
            for row, index in enumerate(alive):
                if self.tokens[index]:
                    seen = torch.tensor(sorted(set(self.tokens[index])), dtype=torch.long)
                    values = logits[row, seen]
                    logits[row, seen] = torch.where(
                        values > 0, values / params.repetition_penalty, values * params.repetition_penalty
                    )
        if params.temperature == 0:
            return [int(t) for t in torch.argmax(logits, dim=-1)]
        scores = logits / params.temperature
        candidates = nucleus(scores, params.top_p)
        # Gumbel-max: argmax(scores + Gumbel noise) is an exact draw from softmax(scores). Unlike
        # inverse-CDF sampling it is stable under float rounding (the top two noisy scores are
        # almost never within 1e-6), which is what makes a row's text independent of its batch.
        # Every row draws one uniform per vocabulary entry (so its random stream never depends
        # on how many tokens its nucleus held) and keeps only its candidates' draws.
        chosen = []
        for row, index in enumerate(alive):
            uniform = torch.rand(scores.shape[-1], generator=self.generators[index])
            ids = candidates[row]
            picked = uniform[ids] if ids is not None else uniform
            gumbel = -torch.log(-torch.log(picked.clamp(min=1e-20, max=1 - 1e-7)))
            if ids is None:
                chosen.append(int(torch.argmax(scores[row] + gumbel)))
            else:
                chosen.append(int(ids[torch.argmax(scores[row, ids] + gumbel)]))
        return chosen


def nucleus(scores, top_p: float, prefilter: int = TOP_P_PREFILTER) -> list:
    """Per row, the token ids top-p keeps (``None``: every token), as a full sort would.

    Nucleus rule: keep a token while the probability mass ranked before it is below ``top_p``.
    Sorting 49k scores per row per step was a quarter of decode time, so the mass is first
    summed over the top ``prefilter`` scores; a row whose nucleus does not fit in them (a very
    flat distribution) is sorted in full, so the answer is exact either way.
    """
    import torch

    rows, vocab = scores.shape
    if top_p >= 1:
        return [None] * rows
    k = min(prefilter, vocab)
    top_scores, top_ids = torch.topk(scores, k, dim=-1, sorted=True)
    log_total = torch.logsumexp(scores, dim=-1, keepdim=True)
    probs = torch.exp(top_scores - log_total)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    fits = (mass_before[:, -1] + probs[:, -1]) >= top_p
    keep = mass_before < top_p
    out = []
    for row in range(rows):
        if bool(fits[row]):
            out.append(top_ids[row][keep[row]])
            continue
        sorted_scores, sorted_ids = torch.sort(scores[row], descending=True)
        sorted_probs = torch.softmax(sorted_scores, dim=-1)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        out.append(sorted_ids[before < top_p])
    return out
