"""One training round: judgments -> LoRA adapter (DPO, ORPO, KTO, SFT, or SFT then DPO) -> candidate
version -> gate.

The life of a round, in the order the code below runs it:

1. ``start_round`` (app or CLI): check the config and the readiness gate (enough new preference
   rows), insert the round row (``pending``), spawn ``python -m prefloop.train --round ID`` in its own
   process group with output to ``rounds/<id>/log.txt``, and record its pid. The app never trains
   in its own process, so a crash or a kill in training cannot take the annotators down.
2. ``run_round`` (the child): snapshot the dataset (JSONL + sha256) into the round folder, load a
   fresh copy of the parent (never the shared cached one), wrap it in a LoRA adapter and train
   with TRL. With PEFT and ``ref_model=None`` DPO's (and KTO's) reference is the adapter-disabled
   model, i.e. exactly the parent. sft-dpo trains the adapter with SFT, then continues it with
   DPO against a frozen copy of the SFT result (the DPO paper's reference, and TRL's for a
   trained adapter), all in this one round. Progress, per-step metrics and a heartbeat go to the
   database as they happen. The adapter is registered atomically as a ``candidate`` version
   whose card names its parent, method, config, data hash and size, judgment ids and metrics.
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

import datetime as dt
import json
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
from prefloop.errors import PrefloopError, RoundError
from prefloop.train import distributed, gate, recipe
from prefloop.train.config import PHASES, RoundConfig
from prefloop.train.dataset import (
    build_preference_rows,
    gate_rows,
    judgment_range,
    save_snapshot,
    training_columns,
    window_pair_ids,
)
from prefloop.train.examples import build_kto_rows, build_sft_rows, label_counts
from prefloop.train.recipe import COMPLETION_ONLY, trainer_settings, use_bf16, warmup_steps

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
def phase_rows(store: Store, config: RoundConfig, pair_ids: list[int]) -> dict[str, list[dict]]:
    """The rows each phase of the round's method learns from (its window's pairs), in phase order:
    preference rows for dpo/orpo, labelled answers for kto, demonstrations for sft."""
    out = {}
    for phase in PHASES[config.method]:
        if not pair_ids:
            out[phase] = []
        elif phase == "kto":
            out[phase] = build_kto_rows(store, pair_ids=pair_ids)
        elif phase == "sft":
            out[phase] = build_sft_rows(store, chosen_margin=config.sft_chosen_margin, pair_ids=pair_ids)
        else:
            out[phase] = build_preference_rows(store, pair_ids=pair_ids)
    return out


def no_rows_reason(phase: str, config: RoundConfig) -> str:
    """Why a phase has nothing to learn, and what would give it something."""
    if phase == "sft":
        margin = (f"no winning answer had a vote margin of {config.sft_chosen_margin}" if config.sft_chosen_margin
                  else "sft_chosen_margin is 0, so winning answers are not imitated")
        return f"no SFT rows: nobody wrote a better answer and {margin}; write better answers or set sft_chosen_margin"
    if phase == "kto":
        return "no KTO rows: only ties (and draws) were voted; KTO learns from a/b, both-bad, thumbs and better answers"
    return "no preference rows to train on"


def readiness(store: Store, config: RoundConfig | None = None) -> dict:
    """How many new rows there are for the active version, and how many are needed. ``have`` is
    the rows of the method's thinnest phase (preference rows for dpo and orpo, as always)."""
    config = config or RoundConfig()
    active = store.active_version()
    if active is None:
        raise RoundError("no active model version: run `prefloop init` (or create v0) first")
    window = window_pair_ids(store, all_judgments=config.all_judgments)
    counts = {phase: len(rows) for phase, rows in phase_rows(store, config, window).items()}
    have = min(counts.values())
    need = config.min_new_pairs if config.min_new_pairs is not None else int(store.get_setting("min_new_pairs"))
    return {"parent": active["name"], "pairs": len(window), "have": have, "need": need, "ready": have >= max(need, 1),
            "rows": counts}


def create_round(store: Store, config: RoundConfig) -> int:
    """Validate, apply the gate and insert a ``pending`` round; nothing else changes on refusal."""
    config.validate()
    reap_dead_rounds(store)
    busy = [r for r in store.list_rounds() if r["status"] in ACTIVE_STATUSES]
    if busy:
        raise RoundError(f"round {busy[0]['id']} is still {busy[0]['status']}; wait for it to finish")
    state = readiness(store, config)
    empty = [phase for phase, count in state["rows"].items() if count == 0]
    if empty and empty[0] in ("dpo", "orpo"):
        raise RoundError(
            f"no new preference rows to train {state['parent']} on: judge some pairs first "
            f"(ties and both-bad votes without a better answer do not count)"
        )
    if empty and not state["pairs"]:
        raise RoundError(f"no new judgments to train {state['parent']} on: judge some pairs first")
    if empty:
        raise RoundError(f"{no_rows_reason(empty[0], config)} (training {state['parent']})")
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
    import dataclasses

    import torch

    clock = recipe.PhaseClock()
    round_id = current["id"]
    parent = store.require_version(current["parent_version_id"])
    started = time.monotonic()
    tokenizer = models.load_tokenizer(store, parent["name"])
    window = store.round_pair_ids(round_id)
    phases: dict[str, list[dict]] = {}
    too_long = 0
    for phase, found in phase_rows(store, config, window).items():
        kept, dropped = recipe.fit_prompt_length(found, tokenizer, recipe.prompt_budget(store, config))
        too_long += dropped
        if not kept:
            raise RoundError(
                no_rows_reason(phase, config)
                + (f" ({dropped} left out: prompts longer than max_prompt_length)" if dropped else "")
            )
        phases[phase] = kept
    rows = [row for kept in phases.values() for row in kept]
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
    names = tuple(phases)
    phase_metrics: dict[str, dict] = {}
    extra: dict = {}
    steps = 0
    for index, (phase, learned_rows) in enumerate(phases.items()):
        # One trainer per phase; a later phase (sft-dpo's DPO) continues the adapter the earlier one trained.
        phase_config = dataclasses.replace(config, method=phase)
        fields = settings(phase_config, on_gpu, folder)
        fields["warmup_steps"] = warmup_steps(config, len(learned_rows))
        if phase == "kto":
            weights = recipe.kto_class_weights(*label_counts(learned_rows))
            fields.update(desirable_weight=weights["desirable_weight"], undesirable_weight=weights["undesirable_weight"])
            extra["kto_class_weights"] = weights
        # Building the trainer tokenises the rows and, for DPO and KTO, runs the reference over them once.
        with recipe.completion_tokens_only(bool(fields.pop(COMPLETION_ONLY, False))):
            trainer = recipe.make_trainer(
                model, tokenizer, training_columns(learned_rows, cut_off_flags=True), phase_config, on_gpu, store,
                round_id, main, fields, progress=recipe.Progress.of_phase(index, names, steps),
            )
            clock.lap("prepare" if len(names) == 1 else f"prepare_{phase}")
            output = trainer.train()
            clock.lap("train" if len(names) == 1 else f"train_{phase}")
        steps += output.global_step
        phase_metrics[phase] = {"rows": len(learned_rows), "train_loss": output.training_loss,
                                "steps": output.global_step}
        model = trainer.model
        if index < len(names) - 1:
            del trainer
    recipe.drop_reference_adapter(trainer.model)
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
    final = recipe.last_values(store.round_metrics(round_id))
    metrics = {
        "train_loss": output.training_loss,  # the last phase's
        "steps": steps,
        "final": final,
        "left_out_long_prompts": too_long,
        "cut_off_answers": sum(bool(r.get(k)) for r in rows for k in ("chosen_cut_off", "rejected_cut_off", "cut_off")),
        "judgment_id_range": span,
        "window_pairs": len(window),
        "judgment_watermark": current["metrics"].get("judgment_watermark"),
        **extra,
    }
    if len(names) > 1:
        metrics["phases"] = phase_metrics
    card = {
        "method": config.method,
        "round_id": round_id,
        "config": config.to_dict(),
        "dataset_hash": digest,
        "dataset_size": len(rows),
        "judgment_id_range": span,
        "metrics": {k: metrics[k] for k in ("train_loss", "steps", "final", "phases", "kto_class_weights")
                    if k in metrics},
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
        train_runtime_s=round(time.monotonic() - started, 1), phase_s=clock.phases, peak_rss_mb=recipe.peak_rss_mb(),
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
