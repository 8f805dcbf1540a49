"""One training round: judgments -> LoRA adapter (DPO or ORPO) -> candidate version -> gate.

The life of a round, in the order the code below runs it:

1. ``start_round`` (app or CLI): check the config and the readiness gate (enough new preference
   rows), insert the round row (``pending``), spawn ``python -m prefloop.train --round ID`` in its own
   process group with output to ``rounds/<id>/log.txt``, and record its pid. The app never trains
   in its own process, so a crash or a kill in training cannot take the annotators down.
2. ``run_round`` (the child): snapshot the dataset (JSONL + sha256) into the round folder, load a
   fresh copy of the parent (never the shared cached one), wrap it in a LoRA adapter and train
   with TRL. With PEFT and ``ref_model=None`` DPO's reference is the adapter-disabled model, i.e.
   exactly the parent. Progress, per-step metrics and a heartbeat go to the database as they
   happen. The adapter is registered atomically as a ``candidate`` version whose card names its
   parent, method, config, data hash and size, judgment ids and metrics.
3. Gate (prefloop.train.gate): the candidate, merged exactly as the sampler will run it, is
   judged on fresh held-out judgments of its parent's own answers: enough of them, an agreement
   rate whose 95% lower bound clears 50%, and drift guards (length, chosen log-prob, KL). The
   verdict, with every number, goes on the round and the version card. "promote" promotes it
   when its parent is still active; "wait" (too few held-out judgments) leaves a candidate for
   a maintainer (``prefloop rounds promote ID``); "reject" marks it rejected.
4. Any exception marks the round ``failed`` with a readable reason; the active version is never
   touched before step 3 and no version is listed before its files are complete. A child that is
   killed outright (SIGKILL, OOM killer) cannot say so itself: ``reap_dead_rounds`` notices that
   its pid is gone or its heartbeat stopped, and marks the round failed.

Which judgments a round learns from: its window, the closed train pairs that no earlier round
took (prefloop.train.dataset), fixed when the round is created and recorded in ``round_pairs``;
every vote of a pair is learned together, once. ``all_judgments=True`` takes every closed pair.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from prefloop.db.store import Store, now, prefloop_home
from prefloop.engine import models
from prefloop.engine.generation import sampling_dtype
from prefloop.engine.models import cpu_has_native_bf16
from prefloop.errors import PrefloopError, RoundError
from prefloop.train import distributed, gate
from prefloop.train.config import RoundConfig
from prefloop.train.dataset import (
    build_preference_rows,
    gate_rows,
    judgment_range,
    save_snapshot,
    training_columns,
    window_pair_ids,
)

ACTIVE_STATUSES = ("pending", "running")
FINISHED_STATUSES = ("failed", "trained", "promoted", "rejected")
HEARTBEAT_S = 10  # the child writes a heartbeat this often, from a thread, even while loading
STALE_AFTER_S = 180  # no heartbeat for this long: the process is gone, frozen, or its pid reused
DIED_MESSAGE = "the training process died (killed or crashed)"
REPO_ROOT = Path(__file__).resolve().parents[1]

_children: dict[int, subprocess.Popen] = {}  # rounds this process spawned, to reap zombies


def round_dir(round_id: int) -> Path:
    return prefloop_home() / "rounds" / str(round_id)


# --------------------------------------------------------------------------------------------
# readiness and starting
# --------------------------------------------------------------------------------------------
def readiness(store: Store, config: RoundConfig | None = None) -> dict:
    """How many new preference rows there are for the active version, and how many are needed."""
    config = config or RoundConfig()
    active = store.active_version()
    if active is None:
        raise RoundError("no active model version: run `prefloop init` (or create v0) first")
    window = window_pair_ids(store, all_judgments=config.all_judgments)
    have = len(build_preference_rows(store, pair_ids=window)) if window else 0
    need = config.min_new_pairs if config.min_new_pairs is not None else int(store.get_setting("min_new_pairs"))
    return {"parent": active["name"], "pairs": len(window), "have": have, "need": need, "ready": have >= max(need, 1)}


def create_round(store: Store, config: RoundConfig) -> int:
    """Validate, apply the gate and insert a ``pending`` round; nothing else changes on refusal."""
    config.validate()
    reap_dead_rounds(store)
    busy = [r for r in store.list_rounds() if r["status"] in ACTIVE_STATUSES]
    if busy:
        raise RoundError(f"round {busy[0]['id']} is still {busy[0]['status']}; wait for it to finish")
    state = readiness(store, config)
    if state["have"] == 0:
        raise RoundError(
            f"no new preference rows to train {state['parent']} on: judge some pairs first "
            f"(ties and both-bad votes without a better answer do not count)"
        )
    if state["have"] < state["need"]:
        raise RoundError(
            f"need {state['need'] - state['have']} more pairs (have {state['have']} of {state['need']}); "
            f"lower the min_new_pairs setting to train sooner"
        )
    parent = store.require_version(state["parent"])
    round_id = store.create_round(config.method, parent["id"], config.to_dict())
    store.claim_round_pairs(round_id, window_pair_ids(store, all_judgments=config.all_judgments))
    store.update_round(round_id, metrics={"judgment_watermark": store.latest_judgment_id()})
    return round_id


def start_round(store: Store, config: RoundConfig) -> int:
    """Create a round and train it in a child process (``python -m prefloop.train --round ID``)."""
    round_id = create_round(store, config)
    folder = round_dir(round_id)
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFLOOP_HOME": str(prefloop_home()), "PYTHONUNBUFFERED": "1"}
    try:
        with (folder / "log.txt").open("ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "prefloop.train", "--round", str(round_id)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(REPO_ROOT),
                start_new_session=True,  # own process group: killpg stops it and only it
            )
    except OSError as error:
        store.update_round(round_id, status="failed", error=f"could not start the training process: {error}", finished_at=now())
        raise RoundError(f"could not start the training process: {error}") from error
    _children[child.pid] = child
    store.update_round(round_id, pid=child.pid)
    return round_id


# --------------------------------------------------------------------------------------------
# dead children
# --------------------------------------------------------------------------------------------
def reap_dead_rounds(store: Store) -> list[int]:
    """Mark pending/running rounds whose process is gone (or silent too long) as failed."""
    reaped = []
    for r in store.list_rounds():
        if not is_dead(r):
            continue
        store.update_round(r["id"], status="failed", error=DIED_MESSAGE, finished_at=now())
        _withdraw_versions_of(store, r["id"])
        reaped.append(r["id"])
    return reaped


def is_dead(r: dict) -> bool:
    """A pending/running round whose process is gone or has been silent too long (reads only)."""
    if r["status"] not in ACTIVE_STATUSES:
        return False
    last_sign = r.get("heartbeat_at") or r.get("started_at") or r["created_at"]
    stale = _age_s(last_sign) > STALE_AFTER_S
    if r["pid"] is None:
        return stale  # created but never spawned (the spawner itself died)
    return not _pid_alive(r["pid"]) or stale


def round_rows(store: Store) -> list[dict]:
    """One summary dict per round, for the CLI and the Train tab. Reads only: a round whose
    process died shows as failed here; the scheduler (or the next round) records that."""
    names = {v["id"]: v["name"] for v in store.list_versions()}
    out = []
    for r in store.list_rounds():
        metrics = r["metrics"] or {}
        config = r["config"] or {}
        dead = is_dead(r)
        out.append(
            {
                "id": r["id"],
                "method": r["method"],
                "parent": names.get(r["parent_version_id"], "-"),
                "version": names.get(r["new_version_id"], "-"),
                "status": "failed" if dead else r["status"],
                "progress": f"{100 * (r['progress'] or 0):.0f}%",
                "pairs": r["dataset_size"] if r["dataset_size"] is not None else "-",
                "lr": config.get("learning_rate"),
                "beta": config.get("beta"),
                "epochs": config.get("epochs"),
                "lora_rank": config.get("lora_rank"),
                "train_loss": _fmt(metrics.get("train_loss")),
                "heldout_acc": _fmt(metrics.get("heldout_accuracy")),
                "outcome": (DIED_MESSAGE if dead else r["error"])
                or (metrics.get("gate") or {}).get("verdict") or "",
                "created": (r["created_at"] or "")[:19].replace("T", " "),
            }
        )
    return out


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _withdraw_versions_of(store: Store, round_id: int) -> None:
    """A version registered by a round that then died is not trusted: mark it rejected."""

    active = store.active_version()
    for version in store.list_versions():
        if version["card"].get("round_id") == round_id and (not active or active["id"] != version["id"]):
            if version["status"] != "rejected":
                models.reject(store, version["name"])


def _pid_alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None  # also reaps the zombie
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def _age_s(stamp: str) -> float:
    try:
        moment = dt.datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return 0.0
    return (dt.datetime.now(dt.timezone.utc) - moment).total_seconds()


def wait_round(
    store: Store,
    round_id: int,
    timeout: float | None = None,
    poll_s: float = 1.0,
    on_progress: Callable[[dict], None] | None = None,
) -> dict:
    """Block until the round finishes (or its process dies); returns the final round row."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        reap_dead_rounds(store)
        current = store.round(round_id)
        if current is None:
            raise RoundError(f"no round {round_id}")
        if on_progress:
            on_progress(current)
        if current["status"] not in ACTIVE_STATUSES:
            return current
        if deadline is not None and time.monotonic() > deadline:
            raise RoundError(f"round {round_id} is still {current['status']} after {timeout:.0f} s")
        time.sleep(poll_s)


# --------------------------------------------------------------------------------------------
# the body of a round
# --------------------------------------------------------------------------------------------
def is_main_process() -> bool:
    """Under ``accelerate launch`` every rank trains, but only rank 0 writes to the database."""
    return int(os.environ.get("RANK", "0")) == 0


def run_round(store: Store, round_id: int, *, settings: Callable[[RoundConfig, bool, Path], dict] | None = None) -> dict:
    """Train a pending round in this process; returns its summary. Raises RoundError on failure.

    ``settings`` replaces :func:`trainer_settings` (the DPOConfig/ORPOConfig fields); only
    bench/round_time.py passes it, to time the same round under TRL's defaults.
    """
    current = store.round(round_id)
    if current is None:
        raise RoundError(f"no round {round_id}")
    main = is_main_process()
    if main and current["status"] != "pending":
        raise RoundError(f"round {round_id} is {current['status']}, not pending; start a new round instead")
    config = RoundConfig.from_dict(current["config"]).validate()
    heartbeat = _Heartbeat(store, round_id) if main else None
    if main:
        store.update_round(round_id, status="running", started_at=now(), heartbeat_at=now(), pid=os.getpid(), progress=0.0)
        heartbeat.start()
    try:
        summary = _train(store, current, config, main, settings or trainer_settings)
    except BaseException as error:
        reason = failure_reason(error, round_id)
        traceback.print_exc()
        if main:
            if heartbeat:
                heartbeat.stop()
            store.update_round(round_id, status="failed", error=reason, finished_at=now())
            _withdraw_versions_of(store, round_id)
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        raise RoundError(f"round {round_id} failed: {reason}") from error
    finally:
        if heartbeat:
            heartbeat.stop()
    return summary


def failure_reason(error: BaseException, round_id: int) -> str:
    if isinstance(error, PrefloopError):
        return str(error)
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if "out of memory" in text.lower():
        return f"out of memory while training ({text}); lower batch_size or max_length"
    log = round_dir(round_id) / "log.txt"
    return f"training crashed: {type(error).__name__}: {text} (details in {log})"


class _Heartbeat:
    """A thread that stamps the round every HEARTBEAT_S seconds while this process lives."""

    def __init__(self, store: Store, round_id: int):
        self.store, self.round_id = store, round_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"round-{round_id}-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.store.update_round(self.round_id, heartbeat_at=now())
            except PrefloopError:
                pass  # a busy database delays one beat; the stale limit is far longer


def _train(store: Store, current: dict, config: RoundConfig, main: bool, settings) -> dict:
    import torch

    clock = _PhaseClock()
    round_id = current["id"]
    parent = store.require_version(current["parent_version_id"])
    started = time.monotonic()
    tokenizer = models.load_tokenizer(store, parent["name"])
    window = store.round_pair_ids(round_id)
    rows, too_long = _fit_prompt_length(build_preference_rows(store, pair_ids=window) if window else [], tokenizer, config)
    if not rows:
        raise RoundError(
            "no preference rows to train on"
            + (f" ({too_long} left out: prompts longer than max_prompt_length)" if too_long else "")
        )
    folder = round_dir(round_id)
    _, digest = save_snapshot(rows, folder) if main else (None, None)
    span = judgment_range(rows)
    if main:
        store.update_round(round_id, dataset_hash=digest, dataset_size=len(rows), progress=0.02)

    device = models.default_device()
    on_gpu = device.startswith("cuda")
    torch.manual_seed(config.seed)
    # A fresh copy: load_version's cached model is shared with the sampler and must not change.
    # On a GPU: bf16 weights (an 8B parent is 16 GB, not 32), SDPA or flash attention, or a 4-bit
    # parent (QLoRA); train/distributed.py.
    model = distributed.load_parent(store, parent["name"], device, config, use_bf16(config, on_gpu))
    clock.lap("load")
    # Building the trainer tokenises the rows and, for DPO, runs the reference (parent) over them once.
    fields = settings(config, on_gpu, folder)
    fields["warmup_steps"] = warmup_steps(config, len(rows))
    with _completion_tokens_only(bool(fields.pop(COMPLETION_ONLY, False))):
        trainer = _make_trainer(
            model, tokenizer, training_columns(rows, cut_off_flags=True), config, on_gpu, store, round_id, main, fields
        )
        clock.lap("prepare")
        output = trainer.train()
        clock.lap("train")
    peft_model = trainer.model
    # ZeRO-3/FSDP shard the adapter too: every rank takes part in gathering it (and, under ZeRO-3,
    # in scoring it on the held-out rows); rank 0 saves what was gathered (train/distributed.py).
    # The evidence gate scores the saved candidate below, as the sampler will run it, so nothing
    # is scored on the shards here.
    sharded = distributed.finish_sharded(
        trainer, lambda model, rows: None, [],
        lambda: distributed.load_parent(store, parent["name"], device, config, use_bf16(config, on_gpu), whole=True),
    )
    if not main:
        return {"round_id": round_id, "rank": int(os.environ.get("RANK", "0"))}

    store.update_round(round_id, progress=0.92)
    final = _last_values(store.round_metrics(round_id))
    metrics = {
        "train_loss": output.training_loss,
        "steps": output.global_step,
        "final": final,
        "left_out_long_prompts": too_long,
        "cut_off_answers": sum(bool(r.get("chosen_cut_off")) + bool(r.get("rejected_cut_off")) for r in rows),
        "judgment_id_range": span,
        "window_pairs": len(window),
        "judgment_watermark": current["metrics"].get("judgment_watermark"),
    }
    card = {
        "method": config.method,
        "round_id": round_id,
        "config": config.to_dict(),
        "dataset_hash": digest,
        "dataset_size": len(rows),
        "judgment_id_range": span,
        "metrics": {k: metrics[k] for k in ("train_loss", "steps", "final")},
    }
    save = sharded.save if sharded is not None else peft_model.save_pretrained
    version = models.register_adapter_version(store, parent["name"], save, card)
    clock.lap("save")
    store.update_round(round_id, new_version_id=version["id"], progress=0.94)
    del trainer, peft_model, model  # the gate loads the candidate as the sampler will run it

    verdict = run_gate(store, parent, version, config, seed=config.seed)
    clock.lap("gate")
    metrics.update(
        heldout_accuracy=verdict["accuracy"], heldout_rows=verdict["rows"], gate=verdict,
        cutoff_rate=(verdict["guards"]["length_ratio"].get("candidate_cutoff_rate")),
        train_runtime_s=round(time.monotonic() - started, 1), phase_s=clock.phases, peak_rss_mb=peak_rss_mb(),
    )
    card["metrics"].update(heldout_accuracy=verdict["accuracy"], heldout_rows=verdict["rows"], gate=verdict)
    full_card = {**version["card"], "metrics": card["metrics"]}
    store.update_version(version["id"], card=full_card)
    (models.version_path(version) / "prefloop_card.json").write_text(json.dumps(full_card, indent=2))

    active = store.active_version()
    still_parent = active is not None and active["id"] == parent["id"]
    if verdict["decision"] == "promote" and still_parent:
        models.promote(store, version["name"])
        status = "promoted"
    elif verdict["decision"] == "promote":
        status = "trained"
        verdict["reason"] += f"; but {parent['name']} is no longer active: promote by hand"
    elif verdict["decision"] == "reject":
        models.reject(store, version["name"])
        status = "rejected"
    else:
        status = "trained"
        verdict["reason"] += "; the candidate waits (prefloop rounds promote ID to override)"
    verdict["verdict"] = f"{verdict['decision']}: {verdict['reason']} ({gate.numbers_line(verdict)})"  # CLI, Train tab
    store.update_round(round_id, status=status, metrics=metrics, progress=1.0, finished_at=now())
    return {"round_id": round_id, "version": version["name"], "status": status, **metrics}


def run_gate(store: Store, parent: dict, version: dict, config: RoundConfig, seed: int = 0) -> dict:
    """Score a registered candidate against its parent on the parent's held-out judgments.

    Both are loaded as the sampler runs them (float32 merge, cast once to the sampling dtype),
    then upcast to float32 to score; the length guard samples the candidate in the sampling dtype.
    """

    settings = gate.GateSettings.from_store(store)
    rows = gate_rows(store, parent)
    device = models.default_device()
    dtype = sampling_dtype(device)
    candidate, tokenizer = models.load_fresh(store, version["name"], device, dtype)
    lengths = None
    if len(rows) >= settings.min_rows:
        lengths = gate.sample_lengths(store, candidate, tokenizer, parent, rows, seed=seed)
    scored = []
    if rows:
        reference, _ = models.load_fresh(store, parent["name"], device, dtype)
        scored = gate.score_rows(candidate.float(), reference.float(), tokenizer, rows, max_length=config.max_length)
        del reference
    return gate.verdict(scored, settings, lengths)


def _fit_prompt_length(rows: list[dict], tokenizer, config: RoundConfig) -> tuple[list[dict], int]:
    """Leave out rows whose templated prompt exceeds max_prompt_length (TRL would cut the answer)."""
    kept = []
    for row in rows:
        text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= config.max_prompt_length:
            kept.append(row)
    return kept, len(rows) - len(kept)


def warmup_steps(config: RoundConfig, n_rows: int) -> int:
    """Whole warmup steps: ``warmup_ratio`` of the round's optimizer steps, rounded *down*.

    Given a ratio, transformers rounds up, so a round of one step spent it at learning rate 0 and
    learned nothing (issue 14); rounding down leaves at least one step at full rate.
    """
    if config.max_steps > 0:
        total = config.max_steps
    else:
        batches = math.ceil(n_rows / config.batch_size)
        total = math.ceil(config.epochs * max(1, batches // config.gradient_accumulation))
    return int(config.warmup_ratio * total)


def recipe_settings(config: RoundConfig, folder: Path) -> dict:
    """What the round learns: the optimisation recipe from RoundConfig, and where the trainer writes.

    These are the same in prefloop's round and in the "TRL defaults" baseline of
    bench/round_time.py, so the two train the same thing and differ only in how fast.
    """
    settings = dict(
        output_dir=str(folder / "trainer"),
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        warmup_steps=config.warmup_ratio,  # a ratio; _train replaces it by whole steps (warmup_steps())
        beta=config.beta,
        seed=config.seed,
        save_strategy="no",  # the adapter is saved once, atomically, by register_adapter_version
        report_to="none",
        disable_tqdm=True,  # progress goes to the database; the log file stays readable
    )
    if config.method == "dpo" and config.nll_weight:
        settings.update(loss_type=["sigmoid", "sft"], loss_weights=[1.0, config.nll_weight])
    return settings


def trainer_settings(config: RoundConfig, on_gpu: bool, folder: Path) -> dict:
    """Every DPOConfig/ORPOConfig field a round sets: the recipe, plus what makes it fast.

    The speed settings were chosen from a profile of a round on the bundled model, each with its
    reason beside it (README, "Round time and round memory"; bench/round_time.py measures the
    round against the same round under TRL's defaults).
    """
    settings = recipe_settings(config, folder)
    settings.update(
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        max_length=config.max_length,  # TRL's default is 1024; the collator pads to the batch's longest anyway
        logging_steps=1,  # one row of metrics per step for the Train tab; costs nothing measurable
        # TRL turns checkpointing on by default: it re-runs every forward during backward (a third
        # more compute) to save activation memory a 135M model does not need.
        activation_checkpointing=config.gradient_checkpointing,  # transformers 5 name of gradient_checkpointing
        # bf16 autocast where the hardware does bf16 natively (weights and optimizer stay fp32).
        bf16=use_bf16(config, on_gpu),
        use_cpu=not on_gpu,
        dataloader_num_workers=0,  # tokenised rows are in memory: worker processes only add startup
        # TRL zeroes every dropout (LoRA's too) unless told not to: honour a nonzero lora_dropout
        disable_dropout=config.lora_dropout == 0,
    )
    if config.method == "dpo":
        # The reference is the parent and never changes during a round: run it once over the rows,
        # in big batches, instead of once per row per epoch inside every training step.
        settings.update(precompute_ref_log_probs=True, precompute_ref_batch_size=max(16, config.batch_size))
    # Not a TRL field (_train takes it out before building the trainer): see _completion_tokens_only.
    settings[COMPLETION_ONLY] = True
    return settings


COMPLETION_ONLY = "prefloop_lm_head_on_completions_only"


@contextlib.contextmanager
def _completion_tokens_only(enabled: bool):
    """Project only the answer tokens through the LM head, on CPU too.

    TRL 1.16's fused LM head scores only positions with a label on Triton devices (CUDA, XPU) and
    every position elsewhere, so that Neuron sees one tile shape. On CPU that runs the 49k-word
    head and its soft-max statistics over the prompt and the padding as well: the profile put it at
    about half of the reference pass. The switch is TRL's own (``compact``), read at each call.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if not enabled or original is None:
        yield
        return
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


def _make_trainer(model, tokenizer, rows, config: RoundConfig, on_gpu: bool, store, round_id, main, fields: dict):
    from datasets import Dataset
    from peft import LoraConfig

    peft_config = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",  # every attention and MLP projection (not the LM head)
        task_type="CAUSAL_LM",
    )
    # Shortest first: the one reference pass runs over the rows in order, so its batches hold rows of
    # similar length (little padding). Training draws random batches whatever the order.
    dataset = Dataset.from_list(sorted(rows, key=_row_length))
    dataset = distributed.shared_dataset(dataset, Path(fields["output_dir"]).parent / "train-rows")  # many ranks: one copy
    callbacks = [_progress_callback(store, round_id)] if main else []
    if config.method == "dpo":
        from trl import DPOConfig

        # ref_model=None with a peft_config: the reference is the adapter-disabled model, the parent.
        return _cut_off_aware(config.method)(
            model=model, ref_model=None, args=DPOConfig(**fields), train_dataset=dataset, processing_class=tokenizer,
            peft_config=peft_config, callbacks=callbacks,
        )
    from trl.experimental.orpo import ORPOConfig

    return _cut_off_aware(config.method)(
        model=model, args=ORPOConfig(**fields), train_dataset=dataset, processing_class=tokenizer,
        peft_config=peft_config, callbacks=callbacks,
    )


END_OF_TURN_WINDOW = 3  # the chat template's end of an answer: <|im_end|> "\n" (ORPO adds one more <|im_end|>)


def strip_end_of_turn(ids: list[int], eos_id: int) -> list[int]:
    """A cut-off answer's tokens without the end-of-turn the chat template (and TRL) appended:
    everything from the first end-of-sequence token among the last few."""
    tail = len(ids) - END_OF_TURN_WINDOW
    for i in range(max(0, tail), len(ids)):
        if ids[i] == eos_id:
            return ids[:i]
    return ids


def _cut_off_aware(method: str):
    """TRL's trainer, but answers flagged ``chosen_cut_off`` / ``rejected_cut_off`` train without
    the end-of-turn token: stripped after TRL tokenises and before DPO's reference pass runs."""
    if method == "dpo":
        from trl import DPOTrainer

        class CutOffAwareDPOTrainer(DPOTrainer):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
                if "chosen_cut_off" not in dataset.column_names:
                    return dataset
                eos = self._tokenizer.eos_token_id

                def strip(row):
                    for side in ("chosen", "rejected"):
                        if row[f"{side}_cut_off"]:
                            row[f"{side}_ids"] = strip_end_of_turn(row[f"{side}_ids"], eos)
                    return row

                return dataset.map(strip).remove_columns(["chosen_cut_off", "rejected_cut_off"])

        return CutOffAwareDPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    class CutOffAwareORPOTrainer(ORPOTrainer):
        def tokenize_row(self, feature, model=None):
            out = super().tokenize_row(feature, model)
            eos = self.processing_class.eos_token_id
            for side in ("chosen", "rejected"):
                if feature.get(f"{side}_cut_off"):
                    ids = strip_end_of_turn(out[f"{side}_input_ids"], eos)
                    for key in ("input_ids", "attention_mask", "labels"):
                        out[f"{side}_{key}"] = out[f"{side}_{key}"][: len(ids)]
            return out

    return CutOffAwareORPOTrainer


def _row_length(row: dict) -> int:
    """Characters of the prompt and the longer answer: a tokenizer-free proxy of the padded length."""
    prompt = sum(len(m["content"]) for m in row["prompt"])
    return prompt + max(len(row["chosen"][0]["content"]), len(row["rejected"][0]["content"]))


def use_bf16(config: RoundConfig, on_gpu: bool) -> bool:
    """Whether the round trains under bf16 autocast (see RoundConfig.precision)."""
    if config.precision != "auto":
        return config.precision == "bf16"

    return _gpu_bf16() if on_gpu else cpu_has_native_bf16()


def _gpu_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _progress_callback(store: Store, round_id: int):
    """A TrainerCallback writing progress (training is 0.05-0.9 of a round) and every logged metric."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero and state.max_steps:
                fraction = min(1.0, state.global_step / state.max_steps)
                store.update_round(round_id, progress=round(0.05 + 0.85 * fraction, 4), heartbeat_at=now())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            numeric = {
                k: float(v) for k, v in logs.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
            }
            if numeric:
                store.add_round_metrics(round_id, state.global_step, numeric)

    return ProgressCallback()


class _PhaseClock:
    """Wall seconds per phase of a round (load, prepare, train, heldout, save), for the round's metrics."""

    def __init__(self):
        self.phases: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, name: str) -> None:
        moment = time.monotonic()
        self.phases[name] = round(moment - self._last, 2)
        self._last = moment


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM) in MiB; None where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:
        import resource

        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    except (ImportError, OSError):
        return None


def _last_values(metric_rows: list[dict]) -> dict[str, float]:
    last: dict[str, float] = {}
    for row in metric_rows:
        last[row["name"]] = row["value"]
    return last


# --------------------------------------------------------------------------------------------
# maintainer decisions on a finished round
# --------------------------------------------------------------------------------------------
def promote_round(store: Store, round_id: int) -> dict:
    """A maintainer makes the round's candidate the active version."""

    return _decide(store, round_id, models.promote, "promoted")


def reject_round(store: Store, round_id: int) -> dict:
    """A maintainer rejects the round's candidate: kept on disk, never promoted."""

    return _decide(store, round_id, models.reject, "rejected")


def _decide(store: Store, round_id: int, action, status: str) -> dict:
    current = _finished_with_version(store, round_id)
    action(store, store.require_version(current["new_version_id"])["name"])
    store.update_round(round_id, status=status)
    return store.round(round_id)


def _finished_with_version(store: Store, round_id: int) -> dict:
    current = store.round(round_id)
    if current is None:
        raise RoundError(f"no round {round_id}")
    if current["status"] in ACTIVE_STATUSES:
        raise RoundError(f"round {round_id} is still {current['status']}")
    if not current["new_version_id"]:
        raise RoundError(f"round {round_id} ({current['status']}) produced no version")
    return current
