"""The whole loop, unattended: a simulated annotator votes, rounds train, battles measure.

    prefloop simulate --judge prefloop.evaluate.judges:concise --rounds 3 --pairs-per-round 96 --json

Each round, as production runs it: sample ``pairs_per_round`` train pairs and ``heldout_pairs``
gate pairs (held-out prompts) from the active version, let the judge vote on all of them as a
real annotator account ("sim-<judge>", served and recorded through the store, so lineage is the
same as for people), train a round (any RoundConfig method: dpo, orpo, kto, sft, sft-dpo; a
simulated judge writes no better answers, so sft learns the winners with a vote margin of
``sft_chosen_margin``) in this process with ``prefloop train``'s
defaults, and let the round's evidence gate decide: a promoted candidate becomes the active
version; a rejected or waiting one leaves its parent active, and the next round trains the
parent on new judgments (its held-out judgments accumulate). ``force_promote`` promotes every
candidate whatever the gate says (the old behaviour). Then the round's candidate battles v0
blind on held-out prompts, judged by the same judge. ``noise`` only touches the votes people
would cast (train and gate pairs); battles are judged noise-free, so the win rate measures how
far the model moved towards the judge's taste rather than how noisy the evaluation was.

Settings are production's: RoundConfig's defaults and the home's ``sampling`` setting, unless an
option overrides one. ``--seeds N`` runs the loop N times, each in a fresh home folder from the
same v0 and prompts, and reports the mean and spread over seeds.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from prefloop.annotate.sampler import sample_battle_pairs, sample_pairs
from prefloop.db.settings import DEFAULT_SETTINGS
from prefloop.db.store import SELECTIONS, Store
from prefloop.engine import models
from prefloop.engine.generation import SamplingParams
from prefloop.errors import PrefloopError
from prefloop.evaluate import arena, autostats, checkpoint
from prefloop.evaluate.judges import (
    Judge,
    checked_choice,
    judge_name,
    load_judge,
    noisy,
)
from prefloop.train import rounds
from prefloop.train.config import METHODS, PHASES, RoundConfig

SIM_PASSWORD_HASH = "!simulated"  # not an argon2 hash: nobody can sign in as a simulated judge


@dataclass
class SimulationConfig:
    judge: str = field(
        default="prefloop.evaluate.judges:concise", metadata={"help": "module:function of the simulated judge"}
    )
    rounds: int = field(default=3, metadata={"help": "training rounds to run"})
    pairs_per_round: int = field(default=96, metadata={"help": "train prompts sampled (one pair each) per round"})
    heldout_pairs: int | None = field(
        default=None,
        metadata={"help": "gate pairs (held-out prompts, from the active version) judged per round on top of "
                  "pairs_per_round; default: what the gate minimum needs (gate_min_rows plus a quarter for ties)"},
    )
    force_promote: bool = field(default=False, metadata={"help": "promote every candidate, whatever the gate says"})
    seeds: int = field(default=1, metadata={"help": "run the loop this many times (seed, seed+1, ...); report mean and spread"})
    method: str = field(default="dpo", metadata={"help": "round method: " + ", ".join(METHODS)})
    sft_chosen_margin: int = field(
        default=1,  # a simulated judge writes no better answers: sft learns the winners of its votes
        metadata={"help": "sft and sft-dpo: imitate a winner whose votes outnumber the other side's by this many"},
    )
    selection: str | None = field(
        default=None,  # None: the home's `selection` setting, as production
        metadata={"help": "which pair of a prompt's answers is judged: random (two answers) or active "
                  "(k candidates, pair chosen by annotate/selection.py)"},
    )
    candidates: int | None = field(default=None, metadata={"help": "active: candidates per prompt (default: the setting)"})
    all_judgments: bool = field(
        default=False,  # production's window: the pairs no earlier round took
        metadata={"help": "train each round on every closed train pair, earlier rounds' too, with the parent as "
                  "reference (issue 15's 'use every vote', to be measured against the default)"},
    )
    noise: float = field(default=0.0, metadata={"help": "share of votes replaced by a random choice"})
    seed: int = field(default=0, metadata={"help": "seeds sampling, noise and training"})
    eval_prompts: int = field(
        default=48, metadata={"help": "held-out prompts battled against v0 after each round"}
    )
    # round settings: None keeps production's (RoundConfig's defaults)
    learning_rate: float | None = field(default=None, metadata={"help": "round learning rate"})
    epochs: float | None = field(default=None, metadata={"help": "round epochs"})
    beta: float | None = field(default=None, metadata={"help": "DPO beta / ORPO lambda"})
    precision: str | None = field(default=None, metadata={"help": "round precision: auto, fp32 or bf16"})
    # sampling settings: None keeps production's (the home's ``sampling`` setting)
    temperature: float | None = field(default=None, metadata={"help": "sampling temperature"})
    top_p: float | None = field(default=None, metadata={"help": "nucleus sampling top_p"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "response length cap"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap rounds for the win-rate interval"})

    def validate(self) -> "SimulationConfig":
        if self.rounds < 1:
            raise PrefloopError(f"rounds must be at least 1, not {self.rounds}")
        if self.pairs_per_round < 1:
            raise PrefloopError(f"pairs per round must be at least 1, not {self.pairs_per_round}")
        if self.eval_prompts < 0:
            raise PrefloopError(f"eval prompts must be 0 or more, not {self.eval_prompts}")
        if self.method not in METHODS:
            raise PrefloopError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if "sft" in PHASES[self.method] and self.sft_chosen_margin < 1:
            raise PrefloopError("sft_chosen_margin must be at least 1 in a simulation: simulated judges write "
                                "no better answers, so sft would have nothing to learn")
        if not 0.0 <= self.noise <= 1.0:
            raise PrefloopError(f"noise must be between 0 and 1, not {self.noise}")
        if self.heldout_pairs is not None and self.heldout_pairs < 0:
            raise PrefloopError(f"held-out pairs must be 0 or more, not {self.heldout_pairs}")
        if self.seeds < 1:
            raise PrefloopError(f"seeds must be at least 1, not {self.seeds}")
        if self.selection is not None and self.selection not in SELECTIONS:
            raise PrefloopError(f"selection must be one of {', '.join(SELECTIONS)}, not {self.selection!r}")
        if self.candidates is not None and not 2 <= self.candidates <= 16:
            raise PrefloopError(f"candidates must be from 2 to 16, not {self.candidates}")
        return self


ROUND_OVERRIDES = ("learning_rate", "epochs", "beta", "precision")  # None: RoundConfig's default
SAMPLING_OVERRIDES = ("temperature", "top_p", "max_new_tokens")  # None: the home's sampling setting
TIE_ALLOWANCE = 1.25  # gate pairs sampled per needed row: some pairs tie or are dropped as twins


# --------------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------------
def simulated_annotator(store: Store, judge: Judge) -> int:
    """The account a judge votes as (created once; it cannot sign in)."""
    name = f"sim-{judge_name(judge)}"[:64].replace(" ", "_")
    existing = store.annotator_by_name(name)
    if existing:
        return existing["id"]
    return store.add_annotator(name, "annotator", SIM_PASSWORD_HASH)


def judge_pairs(store: Store, judge: Judge, annotator_id: int, pair_ids: list[int], rng: random.Random) -> list[dict]:
    """Serve each pair to the simulated annotator (random left side) and record its vote."""
    votes = []
    for pair_id in pair_ids:
        pair = store.pair(pair_id)
        if pair is None:
            continue
        left = pair["generation_a_id"] if rng.random() < 0.5 else pair["generation_b_id"]
        store.assign_pair(annotator_id, pair_id, left)
        choice = checked_choice(judge, pair["prompt"], pair["text_a"], pair["text_b"])
        store.record_judgment(annotator_id, pair_id, choice)
        votes.append({"pair_id": pair_id, "choice": choice,
                      "version_a_id": pair["version_a_id"], "version_b_id": pair["version_b_id"]})
    return votes


def battles_of(store: Store, votes: list[dict]) -> list[arena.Battle]:
    names: dict[int, str] = {}

    def name(version_id: int) -> str:
        if version_id not in names:
            names[version_id] = store.require_version(version_id)["name"]
        return names[version_id]

    return [(name(v["version_a_id"]), name(v["version_b_id"]), v["choice"]) for v in votes]


def round_config(config: SimulationConfig, round_index: int, min_new_pairs: int = 0):
    """The RoundConfig for one simulated round: production's defaults plus CLI overrides."""

    values = {k: getattr(config, k) for k in ROUND_OVERRIDES if getattr(config, k) is not None}
    if "sft" in PHASES[config.method]:
        values["sft_chosen_margin"] = config.sft_chosen_margin
    return RoundConfig(
        method=config.method, seed=config.seed + round_index, min_new_pairs=min_new_pairs,
        all_judgments=config.all_judgments, **values
    ).validate()


def sampling_params(config: SimulationConfig, store: Store | None = None):
    """Production's sampling (the home's setting, or the default) plus CLI overrides."""

    values = dict(store.get_setting("sampling") if store is not None else DEFAULT_SETTINGS["sampling"])
    values.update({k: getattr(config, k) for k in SAMPLING_OVERRIDES if getattr(config, k) is not None})
    return SamplingParams.from_dict(values)


def heldout_pairs_wanted(store: Store, config: SimulationConfig) -> int:
    """--heldout-pairs, or enough gate pairs for the gate minimum after ties."""
    if config.heldout_pairs is not None:
        return config.heldout_pairs
    return -(-int(store.get_setting("gate_min_rows")) * 5 // 4)  # ceil(min_rows * TIE_ALLOWANCE)


def cutoff_rate(store: Store, version: str, pair_ids: list[int] | None = None) -> float | None:
    """Share of a version's responses that hit max_new_tokens (in these pairs, or all of them)."""
    if pair_ids is not None:
        reasons = []
        for pair_id in pair_ids:
            pair = store.pair(pair_id)
            for side in ("a", "b"):
                if store.require_version(pair[f"version_{side}_id"])["name"] == version:
                    reasons.append(pair[f"finish_reason_{side}"])
    else:
        reasons = [g["finish_reason"] for g in store.generation_texts(split=None, version=version)]
    return round(sum(r == "length" for r in reasons) / len(reasons), 4) if reasons else None


def nothing_to_learn(store: Store, config: SimulationConfig, index: int, parent: str, counts: dict) -> str | None:
    """Why the loop must stop before round ``index`` trains, or None when it has rows to learn from.

    A judge that ties every pair leaves no preference to train on: a model that has collapsed
    (every answer empty, or all the same length to a length judge) does this. Stopping here keeps
    the rounds already measured, where raising would throw them away with the run.
    """

    if rounds.readiness(store, round_config(config, index))["have"] > 0:
        return None
    return (
        f"stopped before round {index + 1}: the judge preferred neither answer in any of the "
        f"{sum(counts.values())} pairs sampled from {parent} ({counts['tie']} ties, "
        f"{counts['both_bad']} both bad), so there is nothing to train on; "
        f"{index} of {config.rounds} rounds ran"
    )


def train_round(store: Store, config) -> dict:
    """Create a round row and run its body in this process (no child process, no waiting)."""

    round_id = rounds.create_round(store, config)
    rounds.run_round(store, round_id)
    return store.round(round_id)


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def run_simulation(
    store: Store,
    config: SimulationConfig,
    *,
    judge: Judge | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
    on_round: Callable[[dict], None] | None = None,
    resume: dict | None = None,
) -> dict:
    """Run ``config.rounds`` rounds; returns {"rounds": [...], ...} (the ``--json`` object).

    ``on_round`` gets that object after every finished round (``"finished": false`` until the
    last): a bundled-model round takes about 20 minutes on a small machine, so a run cut short
    (a session's end, a killed process) still leaves the rounds it finished. After every round
    the home's state is also saved (evaluate/checkpoint.py); ``resume``, the result so far that
    ``checkpoint.restore`` returned, goes on from the round after its last."""

    config.validate()
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    judge = judge or load_judge(config.judge)
    active = store.active_version()
    if active is None:
        raise PrefloopError("no active model version: run `prefloop init` first")
    base = store.version_chain(active["name"])[0]["name"]
    if store.count_prompts("train") == 0:
        raise PrefloopError("no train prompts: import some with `prefloop prompts import`")
    if config.eval_prompts and store.count_prompts("heldout") == 0:
        raise PrefloopError("no held-out prompts to battle on: import some or pass --eval-prompts 0")
    annotator_id = simulated_annotator(store, noisy(judge, config.noise) if config.noise else judge)  # its name
    params = sampling_params(config, store)
    if params.to_dict() != sampling_params(SimulationConfig(), store).to_dict():
        store.set_setting("sampling", params.to_dict())  # the gate's length samples must use them too
        log(f"sampling setting of this home set to {params.to_dict()} (the options given)")
    gate_pairs = heldout_pairs_wanted(store, config)
    if gate_pairs and store.count_prompts("heldout") == 0:
        if config.heldout_pairs:
            raise PrefloopError("no held-out prompts for the gate: import some or pass --heldout-pairs 0")
        gate_pairs = 0
        log("no held-out prompts: no gate pairs, so the gate can only wait (see --force-promote)")
    results = list(resume["rounds"]) if resume else []
    if resume and resume.get("active") != active["name"]:
        raise PrefloopError(f"the checkpoint's active version is {resume.get('active')}, this home's is "
                            f"{active['name']}: it is not this home's checkpoint")
    started_all = time.perf_counter() - (resume["seconds"] if resume else 0.0)
    stopped = None
    for index in range(len(results), config.rounds):
        started = time.perf_counter()
        # Each round's randomness derives from (seed, round), never from what earlier rounds drew,
        # so a resumed run's rounds are the ones an uninterrupted run would have run.
        rng = random.Random(f"{config.seed}:{index}")  # which answer is shown on the left
        voter = noisy(judge, config.noise, random.Random(f"{config.seed}:{index}:noise")) if config.noise else judge
        parent = store.active_version()["name"]
        log(f"round {index + 1}/{config.rounds}: sampling {config.pairs_per_round} pairs from {parent}")
        pair_ids = sample_pairs(
            store, parent, n_prompts=config.pairs_per_round, split="train", params=params,
            seed=config.seed * 1000 + index, purpose="train", selection=config.selection,
            candidates=config.candidates, progress=_tqdm_progress(f"sampling {parent}") if progress else None,
        )
        votes = judge_pairs(store, voter, annotator_id, pair_ids, rng)
        counts = {c: sum(v["choice"] == c for v in votes) for c in ("a", "b", "tie", "both_bad")}
        gate_votes = []
        if gate_pairs:
            log(f"round {index + 1}: sampling {gate_pairs} gate pairs (held-out prompts) from {parent}")
            gate_ids = sample_pairs(
                store, parent, n_prompts=gate_pairs, split="heldout", params=params,
                seed=config.seed * 1000 + 250 + index, purpose="train",
                progress=_tqdm_progress(f"gate pairs {parent}") if progress else None,
            )
            gate_votes = judge_pairs(store, voter, annotator_id, gate_ids, rng)
        stopped = nothing_to_learn(store, config, index, parent, counts)
        if stopped:
            log(stopped)
            break
        log(f"round {index + 1}: {len(votes)} votes {counts}; training ({config.method})")
        finished = train_round(store, round_config(config, index))
        models.release_memory()
        new = store.version(finished["new_version_id"]) if finished.get("new_version_id") else None
        if new is None:
            raise PrefloopError(
                f"round {finished['id']} ended {finished['status']} without a new version: "
                f"{finished.get('error') or 'see prefloop rounds show ' + str(finished['id'])}"
            )
        metrics = finished.get("metrics") or {}
        verdict = metrics.get("gate") or {}
        promoted = finished["status"] == "promoted"
        if config.force_promote and store.active_version()["name"] != new["name"]:
            if new["status"] == "rejected":
                store.update_version(new["id"], status="candidate")
            models.promote(store, new["name"])  # --force-promote: past any verdict
        log(f"round {index + 1}: gate {verdict.get('decision')}: {verdict.get('reason')}")
        result = {
            "round": index + 1,
            "round_id": finished["id"],
            "version": new["name"],
            "parent": parent,
            "active": store.active_version()["name"],
            "pairs": len(votes),
            "votes": counts,
            "heldout_pairs": len(gate_votes),
            "heldout_votes": {c: sum(v["choice"] == c for v in gate_votes) for c in ("a", "b", "tie", "both_bad")},
            "dataset_size": finished.get("dataset_size"),
            "cut_off_answers_trained": metrics.get("cut_off_answers"),
            "kto_class_weights": metrics.get("kto_class_weights"),  # kto only
            "phases": metrics.get("phases"),  # sft-dpo only
            "gate": {
                "promoted": promoted,
                "decision": verdict.get("decision"),
                "reason": verdict.get("reason"),
                "rows": verdict.get("rows"),
                "accuracy": verdict.get("accuracy"),
                "lower_bound": verdict.get("lower_bound"),
                "guards": verdict.get("guards"),
            },
            "forced": bool(config.force_promote and not promoted),
            "heldout_accuracy": metrics.get("heldout_accuracy"),
            "train_seconds": round(time.perf_counter() - started, 1),
        }
        if config.eval_prompts:
            log(f"round {index + 1}: battling {new['name']} vs {base} on {config.eval_prompts} held-out prompts")
            battle_ids = sample_battle_pairs(
                store, new["name"], base, n_prompts=config.eval_prompts, split="heldout",
                params=params, seed=config.seed * 1000 + 500 + index, purpose="arena",
                progress=_tqdm_progress(f"battles {new['name']} vs {base}") if progress else None,
            )
            battles = battles_of(store, judge_pairs(store, judge, annotator_id, battle_ids, rng))
            rate = arena.win_rate(battles, new["name"], base, method="bootstrap",
                                  bootstrap=config.bootstrap, seed=config.seed)
            wilson = arena.win_rate(battles, new["name"], base)
            result.update(
                win_rate_vs_v0=rate.win_rate, ci_low=rate.ci_low, ci_high=rate.ci_high,
                wilson_low=wilson.ci_low, wilson_high=wilson.ci_high, battles=rate.battles,
                wins=rate.wins, ties=rate.ties, losses=rate.losses,
            )
            lengths = {r["version"]: r for r in autostats.stats_by_version(
                _battle_texts(store, battle_ids), baseline=base)}
            result["mean_words"] = lengths.get(new["name"], {}).get("mean_words")
            result["mean_words_v0"] = lengths.get(base, {}).get("mean_words")
            result["cutoff_rate"] = cutoff_rate(store, new["name"], battle_ids)
            result["cutoff_rate_v0_battles"] = cutoff_rate(store, base, battle_ids)
            log(
                f"round {index + 1}: {new['name']} vs {base} win rate {rate.win_rate:.1%} "
                f"[{rate.ci_low:.1%}, {rate.ci_high:.1%}] over {rate.battles} battles; mean words "
                f"{result['mean_words']} vs {result['mean_words_v0']}"
            )
        result.setdefault("cutoff_rate", metrics.get("cutoff_rate"))
        models.release_memory()
        result["seconds"] = round(time.perf_counter() - started, 1)
        results.append(result)
        so_far = _run_summary(store, config, params, gate_pairs, base, results, None, started_all, finished=False)
        checkpoint.save(store, so_far)
        if on_round:
            on_round(so_far)
    return _run_summary(store, config, params, gate_pairs, base, results, stopped, started_all, finished=True)


def _run_summary(store: Store, config: SimulationConfig, params: SamplingParams, gate_pairs: int, base: str,
                 results: list[dict], stopped: str | None, started_all: float, *, finished: bool) -> dict:
    """The ``--json`` object of a run, with the rounds finished so far."""
    return {
        "config": run_options(config),
        "judge": config.judge,
        "method": config.method,
        "selection": config.selection or store.get_setting("selection"),
        "noise": config.noise,
        "seed": config.seed,
        "sampling": params.to_dict(),
        "round_config": {k: v for k, v in round_config(config, 0).to_dict().items()
                         if k in ("learning_rate", "epochs", "beta", "nll_weight", "lora_rank", "precision",
                                  "sft_chosen_margin", "all_judgments")},
        "heldout_pairs_per_round": gate_pairs,
        "force_promote": config.force_promote,
        "v0": {"version": base, "cutoff_rate": cutoff_rate(store, base)},
        "active": store.active_version()["name"],
        "promoted": [r["version"] for r in results if r["gate"]["promoted"]],
        "rounds": results,
        "stopped": stopped,
        "seconds": round(time.perf_counter() - started_all, 1),
        "finished": finished,
    }


def run_options(config: SimulationConfig) -> dict:
    """The options that make a run what it is (all but how many rounds and seeds): a resumed run
    must use the same ones, or its rounds would belong to two experiments."""
    return {k: v for k, v in asdict(config).items() if k not in ("rounds", "seeds")}


def partial_writer(path: Path) -> Callable[[dict], None]:
    """An ``on_round`` that rewrites ``path`` with the result so far, atomically (a reader, or a
    process killed mid-write, never sees half a file)."""

    def write(result: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".tmp")
        part.write_text(json.dumps(result))
        part.replace(path)

    return write


def _tqdm_progress(description: str) -> Callable[[int, int], None]:
    """A sampler progress callback (done, total) drawing a tqdm bar on stderr."""
    from tqdm.auto import tqdm

    bar: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc=description, unit="prompt", file=sys.stderr, leave=False)
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar["bar"].close()

    return update


def _battle_texts(store: Store, pair_ids: list[int]) -> list[dict]:
    rows = []
    for pair_id in pair_ids:
        pair = store.pair(pair_id)
        for side in ("a", "b"):
            rows.append({"version": store.require_version(pair[f"version_{side}_id"])["name"],
                         "text": pair[f"text_{side}"]})
    return rows


# --------------------------------------------------------------------------------------------
# several seeds
# --------------------------------------------------------------------------------------------
def run_seeds(
    store: Store,
    config: SimulationConfig,
    *,
    judge: Judge | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
    home: Path | None = None,
    on_round: Callable[[dict], None] | None = None,
) -> dict:
    """``config.seeds`` runs (seeds seed, seed+1, ...), each in a fresh home folder under this
    one (``sim-seed-<n>``; under ``home`` when given, so several comparisons can share one v0)
    holding this home's v0 (used in place) and its prompts; returns {"seeds": [each run's
    result], "summary": mean and spread per round}; ``on_round`` gets that object, with the rounds
    finished so far, after every round."""

    config.validate()
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    active = store.active_version()
    if active is None:
        raise PrefloopError("no active model version: run `prefloop init` first")
    base = store.version_chain(active["name"])[0]
    base_path = str(models.version_path(base))
    prompts = [{"text": p["text"], "messages": p.get("messages"), "kind": p.get("kind"),
                "source": p.get("source"), "split": p["split"]} for p in store.list_prompts()]
    settings = {k: v for k, v in store.all_settings().items() if k != "active_version"}
    home = Path(home or os.environ.get("PREFLOOP_HOME") or store.path.parent).resolve()
    runs = []
    for offset in range(config.seeds):
        seed = config.seed + offset
        folder = home / f"sim-seed-{seed}"
        if folder.exists() and any(folder.iterdir()):
            raise PrefloopError(f"{folder} exists and is not empty: remove it, or start from another --seed")
        log(f"seed {seed}: a fresh home in {folder}")
        previous = os.environ.get("PREFLOOP_HOME")
        os.environ["PREFLOOP_HOME"] = str(folder)
        models.clear_cache()
        try:
            seed_store = Store(folder / "prefloop.db")
            models.create_base_version(seed_store, base_model=base_path, name=base["name"])
            seed_store.add_prompts(prompts)
            for key, value in settings.items():
                seed_store.set_setting(key, value)
            one = SimulationConfig(**{**config.__dict__, "seed": seed, "seeds": 1})
            def partial(run: dict) -> None:
                on_round({"seeds": [*runs, run], "summary": summarise([*runs, run])})

            runs.append(run_simulation(seed_store, one, judge=judge, log=log, progress=progress,
                                       on_round=partial if on_round else None))
            seed_store.close()
        finally:
            if previous is None:
                os.environ.pop("PREFLOOP_HOME", None)
            else:
                os.environ["PREFLOOP_HOME"] = previous
            models.clear_cache()
    return {"seeds": runs, "summary": summarise(runs)}


def spread(values: list[float]) -> dict:
    """mean, sample standard deviation, min and max of the values that are there."""
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None}
    return {"n": len(values), "mean": round(statistics.fmean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None,
            "min": round(min(values), 4), "max": round(max(values), 4)}


def summarise(runs: list[dict]) -> dict:
    """Per round over seeds: the candidate's win rate vs v0 and cut-off rate, how many promoted;
    and the win rate of the version that was active at the end."""
    rounds = max((len(r["rounds"]) for r in runs), default=0)
    per_round = []
    for i in range(rounds):
        here = [r["rounds"][i] for r in runs if len(r["rounds"]) > i]
        per_round.append({
            "round": i + 1,
            "runs": len(here),
            "promoted": sum(1 for r in here if r["gate"]["promoted"]),
            "win_rate_vs_v0": spread([r.get("win_rate_vs_v0") for r in here]),
            "gate_accuracy": spread([r["gate"].get("accuracy") for r in here]),
            "cutoff_rate": spread([r.get("cutoff_rate") for r in here]),
        })
    return {
        "seeds": [r["seed"] for r in runs],
        "rounds": per_round,
        "v0_cutoff_rate": spread([r["v0"]["cutoff_rate"] for r in runs]),
        "final_active": [r["active"] for r in runs],
    }
