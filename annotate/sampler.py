"""Turn prompts into pairs of responses for annotators to judge.

Three producers, one rule: every generation row names the version, the sampling settings and
the seed that produced it, so any judgment can be replayed.

- ``sample_pairs``: two responses per prompt from one version (two seeds), or under active
  selection k candidates per prompt of which one pair is queued (annotate/selection.py says
  which, and every such pair records how it was chosen). Pairs whose responses are (nearly) the
  same teach nothing and waste an annotator's time, so they are never queued.
- ``sample_battle_pairs``: one response from each of two versions, for blind arena battles.
- ``QueueFiller``: a daemon thread keeping ``queue_target`` train pairs ready for the active
  version, so an annotator never waits; it follows promotions without a restart.
- ``stream_live_pair``: an annotator types a prompt and watches both responses appear.

Many prompts share one batched decode (engine/generation.py), which is where the speed comes from.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Callable, Iterator

from prefloop.annotate import selection as choosing
from prefloop.annotate.selection import NEAR_IDENTICAL_RATIO, near_identical  # noqa: F401 - their old home
from prefloop.db.store import Store
from prefloop.engine.engines import open_engine
from prefloop.engine.generation import (
    MAX_SEED,
    SamplingParams,
    derive_seed,
    sampling_dtype,
)
from prefloop.engine.history import fit_history
from prefloop.engine.models import default_device, load_version
from prefloop.errors import SamplerError

log = logging.getLogger("prefloop.sampler")

DEFAULT_BATCH_SIZE = 32  # rows decoded together (two per prompt, k under active selection); bench/sampling.py: 32 beat 16 by 1.3x, 64 no better
DEFAULT_N_PROMPTS = 8

Progress = Callable[[int, int], None]  # progress(done_prompts, total_prompts)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def conversation(prompt: dict) -> list[dict]:
    """Chat messages of a stored prompt (its messages, or its text as one user turn)."""
    return prompt.get("messages") or [{"role": "user", "content": prompt["text"]}]


def fitted(store: Store, engine, messages: list[dict]) -> tuple[list[dict], int]:
    """What the model reads of a conversation: cut from the left at ``history_token_budget``
    (engine/history.py; rounds cut their rows with the same function)."""
    return fit_history(engine.tokenizer, messages, int(store.get_setting("history_token_budget")))


def _params(store: Store, params):

    if params is None:
        return SamplingParams.from_dict(store.get_setting("sampling"))
    if isinstance(params, dict):
        return SamplingParams.from_dict(params)
    return params


def _pick_prompts(store: Store, prompt_ids, choose: Callable[[int], list[dict]], n_prompts) -> list[dict]:
    if prompt_ids is not None:
        prompts = []
        for prompt_id in prompt_ids:
            prompt = store.prompt(int(prompt_id))
            if prompt is None:
                raise SamplerError(f"no prompt with id {prompt_id}")
            prompts.append(prompt)
        return prompts
    n = DEFAULT_N_PROMPTS if n_prompts is None else int(n_prompts)
    if n < 1:
        raise SamplerError(f"number of prompts must be at least 1, not {n}")
    return choose(n)


def _generation_row(version_id: int, generated, params, engine, dropped: int = 0) -> dict:
    """A generations row. The params carry the engine and the dtype the model sampled in: in
    bfloat16 a row's text also depends on its batch mates, so (seed, params) alone replays it
    only in float32, and only on the same engine. ``history_dropped_turns``: how many earliest
    messages the model did not see (a long conversation cut at the token budget)."""
    cut = {"history_dropped_turns": dropped} if dropped else {}
    return {
        "version_id": version_id,
        "text": generated.text,
        "params": {**params.to_dict(), **engine.record, **cut},
        "seed": generated.seed,
        "prompt_tokens": generated.prompt_tokens,
        "completion_tokens": generated.completion_tokens,
        "finish_reason": generated.finish_reason,
        "latency_ms": generated.latency_ms,
    }


def load_for_sampling(store: Store, name: str):
    """(model, tokenizer) of a version as the sampler runs it: cached, in ``sampling_dtype()``
    (bfloat16 on CPUs that compute it natively: about 2x the tokens/s of float32 there)."""

    device = default_device()
    return load_version(store, name, device=device, dtype=sampling_dtype(device))


def _base_seed(seed: int | None) -> int:
    return random.SystemRandom().randrange(MAX_SEED) if seed is None else int(seed)


# --------------------------------------------------------------------------------------------
# pairs from one version
# --------------------------------------------------------------------------------------------
def sample_pairs(
    store: Store,
    version: str,
    *,
    prompt_ids: list[int] | None = None,
    n_prompts: int | None = None,
    split: str = "train",
    params=None,
    seed: int | None = None,
    purpose: str = "train",
    progress: Progress | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    single: bool = False,
    selection: str | None = None,
    candidates: int | None = None,
) -> list[int]:
    """Sample responses per prompt from ``version`` and queue one pair per prompt (one
    response, queued as a thumbs item, with ``single``).

    ``selection`` (default: the setting) "random": two responses, queued as sampled. "active"
    (train pairs on train prompts only; anything else stays random): ``candidates`` (default:
    the ``candidates_per_prompt`` setting) responses per prompt in the same decode batch, one
    pair chosen by annotate/selection.py; with ``active_prompt_share`` below 1, prompts the
    sampler picked itself (not ``prompt_ids``) may get no pair. Train pairs record how they
    were chosen (``pairs.selection``).

    Prompts are ``prompt_ids`` or the ``n_prompts`` of ``split`` with the fewest pairs from this
    version. Returns the ids of the pairs stored; near-identical pairs are never stored.
    Pairs are stored after each batch, so an annotator can start before a long run ends.
    """

    row = store.require_version(version)
    params = _params(store, params)
    method = selection or store.get_setting("selection")
    if method not in choosing.SELECTIONS:
        raise SamplerError(f"selection must be one of {', '.join(choosing.SELECTIONS)}, not {method!r}")
    if single or split != "train" or purpose != "train":
        method = "random"  # gate evidence, battles, live and thumbs items are never chosen
    k = int(candidates or store.get_setting("candidates_per_prompt")) if method == "active" else 2
    if not 2 <= k <= choosing.MAX_CANDIDATES:
        raise SamplerError(f"candidates per prompt must be from 2 to {choosing.MAX_CANDIDATES}, not {k}")
    random_share = float(store.get_setting("random_pair_share"))
    prompt_share = 1.0 if prompt_ids is not None else float(store.get_setting("active_prompt_share"))
    prompts = _pick_prompts(
        store, prompt_ids, lambda n: store.prompts_needing_pairs(row["id"], split, n), n_prompts
    )
    if not prompts:
        return []
    if progress:
        progress(0, len(prompts))  # the bar starts with the work (loading the model included)
    base = _base_seed(seed)
    engine = open_engine(store, row["name"])  # the `engine` setting: torch loop or a vLLM server
    # "a", "b" as before issue 15, so random selection samples exactly what it always did
    slots = ("a",) if single else ("a", "b", *(f"c{i}" for i in range(2, k)))
    per_batch = max(1, batch_size // len(slots))
    pair_ids: list[int] = []
    dropped = 0
    for start in range(0, len(prompts), per_batch):
        chunk = prompts[start : start + per_batch]
        histories = [fitted(store, engine, conversation(p)) for p in chunk]
        conversations = [messages for messages, _ in histories for _ in slots]
        seeds = [derive_seed(base, p["id"], slot) for p in chunk for slot in slots]
        # one decode batch: a prompt's k rows share one prefill (engine/generation.py, Decoding)
        outputs = engine.generate(conversations, params, seeds, batch_size=max(batch_size, len(slots)))
        if single:
            for i, prompt in enumerate(chunk):
                generation = _generation_row(row["id"], outputs[i], params, engine, histories[i][1])
                pair_ids.append(store.add_single(prompt["id"], generation, purpose=purpose))
        else:
            grouped = [outputs[i * len(slots) : (i + 1) * len(slots)] for i in range(len(chunk))]
            rngs = [random.Random(derive_seed(base, p["id"], "selection")) for p in chunk]
            randoms = choosing.draw_random(rngs, method=method, random_share=random_share, prompt_share=prompt_share)
            scores = None
            if method == "active" and not all(randoms):
                scores = choosing.score_candidates(store, engine, row, [m for m, _ in histories], grouped, randoms)
            chosen = choosing.choose(
                [[g.text for g in group] for group in grouped], rngs, method=method, scores=scores,
                randoms=randoms,
            )
            dropped += len(chunk) - len(chosen)
            for choice in chosen:
                prompt, cut = chunk[choice.prompt_index], histories[choice.prompt_index][1]
                first, second = (grouped[choice.prompt_index][i] for i in choice.pair)
                pair_ids.append(
                    store.add_pair(
                        prompt["id"],
                        _generation_row(row["id"], first, params, engine, cut),
                        _generation_row(row["id"], second, params, engine, cut),
                        purpose=purpose,
                        selection=choice.lineage if purpose == "train" and split == "train" else None,
                    )
                )
        if progress:
            progress(min(start + per_batch, len(prompts)), len(prompts))
    if dropped:
        log.info("%s: %d of %d prompt(s) not queued (near-identical answers, or not chosen)",
                 row["name"], dropped, len(prompts))
    return pair_ids


# --------------------------------------------------------------------------------------------
# battles between two versions
# --------------------------------------------------------------------------------------------
def sample_battle_pairs(
    store: Store,
    version_a: str,
    version_b: str,
    *,
    prompt_ids: list[int] | None = None,
    n_prompts: int | None = None,
    split: str = "heldout",
    params=None,
    seed: int | None = None,
    purpose: str = "arena",
    progress: Progress | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[int]:
    """One response from each version per prompt, stored as blind pairs.

    Which version is generation "a" is randomised per pair (seeded), so position never tells an
    annotator which model wrote what. Identical responses are kept: they are honest ties.
    """

    rows = [store.require_version(version_a), store.require_version(version_b)]
    if rows[0]["id"] == rows[1]["id"]:
        raise SamplerError("a battle needs two different versions")
    params = _params(store, params)
    prompts = _pick_prompts(
        store,
        prompt_ids,
        lambda n: store.prompts_for_battle(rows[0]["id"], rows[1]["id"], split, n),
        n_prompts,
    )
    if not prompts:
        return []
    if progress:
        progress(0, len(prompts))
    base = _base_seed(seed)
    outputs, engines = {}, {}
    for step, row in enumerate(rows):
        engine = engines[row["id"]] = open_engine(store, row["name"])
        seeds = [derive_seed(base, p["id"], row["name"]) for p in prompts]
        histories = [fitted(store, engine, conversation(p))[0] for p in prompts]
        outputs[row["id"]] = engine.generate(histories, params, seeds, batch_size=batch_size)
        if progress:
            progress(len(prompts) * (step + 1) // 2, len(prompts))
    coin = random.Random(base)
    pair_ids = []
    for i, prompt in enumerate(prompts):
        first, second = rows if coin.random() < 0.5 else rows[::-1]
        pair_ids.append(
            store.add_pair(
                prompt["id"],
                _generation_row(first["id"], outputs[first["id"]][i], params, engines[first["id"]]),
                _generation_row(second["id"], outputs[second["id"]][i], params, engines[second["id"]]),
                purpose=purpose,
            )
        )
    return pair_ids


# --------------------------------------------------------------------------------------------
# live prompts
# --------------------------------------------------------------------------------------------
def stream_live_pair(
    store: Store, annotator_id: int, prompt_text: str, params=None
) -> Iterator[tuple]:
    """Stream two responses to an annotator's own prompt, then store and assign the pair.

    Yields ``(text_a, text_b)`` as both grow (decoded together, one step each), then
    ``("__done__", pair_id)``. The prompt is stored with source "live", split "train"; nothing
    is stored if the generator is abandoned before the end.
    """

    text = (prompt_text or "").strip()
    if not text:
        raise SamplerError("type a prompt first")
    return stream_pair_for(store, annotator_id, {"text": text, "source": "live", "split": "train"}, params)


def stream_pair_for(store: Store, annotator_id: int, prompt: dict, params=None) -> Iterator[tuple]:
    """Stream two responses to ``prompt`` (a prompt dict not stored yet: a live prompt, or a
    conversation's next turn), then store the prompt and the pair and assign it to the annotator.

    A pair made here has purpose ``live`` and wants one judgment: it is the annotator's own.
    """
    if store.annotator(annotator_id) is None:
        raise SamplerError(f"no annotator with id {annotator_id}")
    active = store.active_version()
    if active is None:
        raise SamplerError("no active model version yet: run `prefloop init` first")
    params = _params(store, params)
    base = _base_seed(None)
    seeds = [derive_seed(base, "live", slot) for slot in ("a", "b")]
    engine = open_engine(store, active["name"])
    messages, cut = fitted(store, engine, conversation(prompt))
    decoding = engine.stream_batch([messages, messages], params, seeds)
    while True:
        try:
            texts = next(decoding)
        except StopIteration as finished:
            results = finished.value
            break
        yield texts[0], texts[1]
    prompt_id = store.prompt_id_for(prompt)
    pair_id = store.add_pair(
        prompt_id,
        _generation_row(active["id"], results[0], params, engine, cut),
        _generation_row(active["id"], results[1], params, engine, cut),
        purpose="live",
        judgments_wanted=1,
        created_by=annotator_id,
    )
    # The annotator watched generation a stream on the left, so it stays there: a and b are two
    # seeds of the same version, so this order carries no information about either response.
    store.assign_pair(annotator_id, pair_id, store.pair(pair_id)["generation_a_id"])
    yield "__done__", pair_id


# --------------------------------------------------------------------------------------------
# background queue
# --------------------------------------------------------------------------------------------
def gate_queue_plan(store: Store, version_id: int, target: int) -> tuple[str, int] | None:
    """(split, pairs to sample) to bring the queue to ``target``, of which ``gate_share`` held
    out (while held-out prompts exist); None when the queue is full."""
    queued = store.queued_pairs(version_id)
    gate_queued = store.queued_heldout_pairs(version_id)
    share = float(store.get_setting("gate_share") or 0)
    gate_target = round(target * share) if share and store.count_prompts("heldout") else 0
    if gate_queued < gate_target:
        return "heldout", gate_target - gate_queued
    train_queued = queued - gate_queued
    train_target = target - max(gate_target, gate_queued)  # the whole queue stays at target
    if train_queued < train_target:
        return "train", train_target - train_queued
    return None


def wants_singles(store: Store, version_id: int, target: int) -> bool:
    """Whether the next train batch should be single answers (thumbs items): while fewer than
    ``thumbs_share`` of the queue target are queued. Gate pairs are always pairs (the gate
    compares answers)."""
    share = float(store.get_setting("thumbs_share") or 0)
    return share > 0 and store.queued_singles(version_id) < max(1, round(target * share))


class QueueFiller:
    """Keeps ``queue_target`` open train pairs ready for whichever version is active.

    A share of them (setting ``gate_share``) are gate pairs: sampled from the active version on
    held-out prompts, judged like any other, never trained on. They are the fresh evidence the
    gate (prefloop.train.gate) judges this version's next candidate on.

    Each pass re-reads the active version and the target, so a promotion or a settings change
    takes effect on the next pass, without a restart. Errors are logged and retried with
    exponential back-off; the thread never dies of one.
    """

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        poll_s: float = 2.0,
        max_backoff_s: float = 60.0,
        params=None,
    ):
        self.store = store
        self.batch_size = batch_size
        self.poll_s = poll_s
        self.max_backoff_s = max_backoff_s
        self.params = params
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._status = {"version": None, "queued": 0, "target": 0, "state": "stopped", "pairs_made": 0}

    # -- control ---------------------------------------------------------------------------
    def start(self) -> "QueueFiller":
        if self._thread and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="prefloop-queue-filler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the thread to end after its current batch, and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        self._set(state="stopped")

    def wake(self) -> None:
        """Check the queue now (after a vote, a promotion, a settings change)."""
        self._wake.set()

    def status(self) -> dict:
        """version, queued, target, state ("filling" | "idle" | "error: ..." | "stopped"), pairs_made."""
        with self._lock:
            return dict(self._status)

    def is_alive(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    # -- work ------------------------------------------------------------------------------
    def run_once(self) -> int:
        """One pass: top the queue up by at most one batch. Returns the pairs made."""
        active = self.store.active_version()
        if active is None:
            self._set(version=None, queued=0, state="idle")
            return 0
        target = int(self.store.get_setting("queue_target"))
        queued = self.store.queued_pairs(active["id"])
        self._set(version=active["name"], queued=queued, target=target)
        plan = gate_queue_plan(self.store, active["id"], target)
        if plan is None:
            self._set(state="idle")
            return 0
        split, wanted = plan
        self._set(state="filling")
        wanted = min(wanted, max(1, self.batch_size // 2))
        single = split == "train" and wants_singles(self.store, active["id"], target)
        made = sample_pairs(
            self.store, active["name"], n_prompts=wanted, split=split, params=self.params,
            batch_size=self.batch_size, single=single,
        )
        current = self.store.active_version()
        if current is not None and current["id"] != active["id"]:
            # promoted mid-batch: what we just made belongs to a version that no longer serves
            self.store.retire_open_pairs(except_version_id=current["id"])
        with self._lock:
            self._status["pairs_made"] += len(made)
        self._set(queued=self.store.queued_pairs(active["id"]))
        return len(made)

    def _run(self) -> None:
        backoff = self.poll_s
        while not self._stop.is_set():
            try:
                made = self.run_once()
                backoff = self.poll_s
                delay = 0.0 if made else self.poll_s
                if not made and self.status()["state"] == "filling":
                    self._set(state="idle")  # nothing to sample (no prompts, or all near-identical)
            except Exception as error:  # noqa: BLE001 - the filler must outlive any one failure
                log.exception("queue filler pass failed")
                self._set(state=f"error: {error}")
                delay = backoff
                backoff = min(backoff * 2, self.max_backoff_s)
            if delay:
                self._wake.wait(delay)
            self._wake.clear()

    def _set(self, **fields) -> None:
        with self._lock:
            self._status.update(fields)
