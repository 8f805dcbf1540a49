"""Evaluation commands: `prefloop eval`, `prefloop simulate`, `prefloop battles create`."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import click

from prefloop.annotate.sampler import sample_battle_pairs
from prefloop.db.connection import prefloop_home
from prefloop.db.store import SELECTIONS, Store
from prefloop.errors import PrefloopError
from prefloop.evaluate import checkpoint
from prefloop.evaluate.judges import load_judge
from prefloop.evaluate.plots import save_plots, simulation_rows
from prefloop.evaluate.report import build_report
from prefloop.evaluate.simulate import (
    SimulationConfig,
    partial_writer,
    run_options,
    run_seeds,
    run_simulation,
)
from prefloop.train.config import METHODS


def _log(message: str) -> None:
    click.echo(message, err=True)


def _fmt(value, spec: str = ".3f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


@click.command("eval")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="write the full report as JSON here ('-' for stdout)")
@click.option("--png", "png_dir", type=click.Path(file_okay=False), help="write the plots (PNG) into this folder")
@click.option("--bootstrap", default=1000, show_default=True, help="bootstrap rounds for rating intervals")
@click.option("--seed", default=0, show_default=True, help="bootstrap seed")
@click.option("--accuracy/--no-accuracy", default=True, show_default=True,
              help="compute held-out preference accuracy where no round recorded it (loads each version)")
def eval_command(json_out, png_dir, bootstrap, seed, accuracy):
    """Leaderboard (Bradley-Terry ratings from blind battles), held-out accuracy and text stats.

    Example: prefloop eval --json report.json --png plots/
    """

    store = Store()
    report = build_report(store, bootstrap=bootstrap, seed=seed, compute_accuracy=accuracy, progress=_log)
    board = report["leaderboard"]
    out = sys.stderr if json_out == "-" else sys.stdout
    echo = lambda line="": click.echo(line, file=out)  # noqa: E731
    echo(f"Leaderboard ({board['battles']} battles, {board['anchor'] or 'no anchor'} = 1000)")
    if board["ratings"]:
        echo(f"  {'version':<10}{'rating':>8}  {'95% CI':<17}{'W':>5}{'T':>5}{'L':>5}")
        for r in board["ratings"]:
            ci = f"[{_fmt(r['ci_low'], '.0f')}, {_fmt(r['ci_high'], '.0f')}]"
            echo(f"  {r['version']:<10}{r['rating']:>8.0f}  {ci:<17}{r['wins']:>5}{r['ties']:>5}{r['losses']:>5}")
    else:
        echo("  no battles judged yet: queue some with `prefloop battles create --a v1 --b v0`")
    rates = {(w["opponent"], w["version"]): w for w in board["pairwise_win_rates"]}
    for w in board["win_tie_loss"]:
        rate = rates.get((w["version_a"], w["version_b"]))
        shown = (f"; {w['version_b']} wins {rate['win_rate']:.0%} [{rate['ci_low']:.0%}, {rate['ci_high']:.0%}]"
                 if rate else "")
        echo(f"  {w['version_a']} vs {w['version_b']}: {w['wins_a']}-{w['wins_b']} "
             f"({w['ties']} ties, {w['both_bad']} both bad){shown}")
    echo()
    echo("Versions")
    echo(f"  {'version':<10}{'method':<8}{'rows':>6}{'acc':>7}{'win vs base':>13}{'words':>8}{'len x':>7}{'dist-2':>8}{'refuse':>8}"
         f"{'cut off':>9}  gate")
    for v in report["versions"]:
        echo(f"  {v['version']:<10}{(v['method'] or '-'):<8}{_fmt(v['dataset_size'], 'd'):>6}"
             f"{_fmt(v['heldout_accuracy'], '.2f'):>7}{_fmt(v['win_rate_vs_base'], '.1%'):>13}"
             f"{_fmt(v['mean_words'], '.1f'):>8}{_fmt(v['length_ratio'], '.2f'):>7}"
             f"{_fmt(v['distinct_2'], '.2f'):>8}{_fmt(v['refusal_rate'], '.0%'):>8}"
             f"{_fmt(v.get('cutoff_rate'), '.0%'):>9}  {(v.get('gate') or {}).get('decision') or '-'}")
    agreement = report["agreement"]
    if agreement["annotators"]:
        echo()
        echo(f"Agreement (Krippendorff's alpha {_fmt(agreement['krippendorff_alpha'], '.2f')} over "
             f"{agreement['multiply_judged_pairs']} pairs judged more than once)")
        for a in agreement["annotators"]:
            echo(f"  {a['annotator']:<20}{a['judgments']:>6} votes  gold {_fmt(a['gold_accuracy'], '.0%')}"
                 f" ({a['gold_votes']})  mean kappa {_fmt(a['mean_kappa'], '.2f')}")
    if json_out:
        text = json.dumps(report, indent=2)
        if json_out == "-":
            click.echo(text)
        else:
            Path(json_out).write_text(text)
            _log(f"wrote {json_out}")
    if png_dir:

        for path in save_plots(report["versions"], png_dir, base=board["anchor"] or "v0"):
            _log(f"wrote {path}")


@click.command("simulate")
@click.option("--judge", default="prefloop.evaluate.judges:concise", show_default=True, help="module:function judge(prompt, a, b)")
@click.option("--rounds", default=3, show_default=True, help="training rounds")
@click.option("--pairs-per-round", default=96, show_default=True, help="train pairs sampled and judged per round")
@click.option("--heldout-pairs", type=int, default=None,
              help="gate pairs (held-out prompts) judged per round on top of --pairs-per-round "
                   "(default: the gate minimum, gate_min_rows, plus a quarter for ties)")
@click.option("--force-promote", is_flag=True, help="promote every candidate whatever the gate says (the old behaviour)")
@click.option("--seeds", default=1, show_default=True, help="runs (seed, seed+1, ...), each in a fresh home under this one; reports mean and spread")
@click.option("--method", type=click.Choice(list(METHODS)), default="dpo", show_default=True,
              help="round method (sft and sft-dpo also imitate winners with a clear vote margin: simulated "
                   "judges write no better answers)")
@click.option("--selection", type=click.Choice(list(SELECTIONS)), default=None,
              help="random (two answers per prompt) or active (k candidates, the pair annotate/selection.py "
                   "chooses); default: the home's selection setting, as production")
@click.option("--candidates", type=click.IntRange(2, 16), default=None,
              help="active selection: candidates per prompt (default: the candidates_per_prompt setting)")
@click.option("--all-judgments", is_flag=True,
              help="train each round on every closed train pair, earlier rounds' too (default: only the pairs "
                   "no earlier round took, as production)")
@click.option("--noise", default=0.0, show_default=True, help="share of votes replaced by a random choice")
@click.option("--seed", default=0, show_default=True)
@click.option("--eval-prompts", default=48, show_default=True, help="held-out prompts battled against v0 per round")
@click.option("--lr", "learning_rate", type=float, help="round learning rate (default: prefloop train's)")
@click.option("--epochs", type=float, help="round epochs (default: prefloop train's)")
@click.option("--beta", type=float, help="DPO beta / ORPO lambda (default: prefloop train's)")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), help="round precision (default auto)")
@click.option("--temperature", type=float, help="sampling temperature (default: the sampling setting)")
@click.option("--max-new-tokens", type=int, help="response length cap (default: the sampling setting)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object on stdout")
@click.option("--partial-json", "partial_path", type=click.Path(dir_okay=False),
              help="after every round, write the --json object of the rounds finished so far to this file "
                   "(\"finished\": false until the end): a run cut short keeps them")
@click.option("--resume", is_flag=True,
              help="go on from the last round this home's run finished (its simulate-checkpoint.db, written "
                   "after every round): the half-done round is discarded; the options must be the run's, "
                   "--rounds may be raised to add rounds")
@click.option("--png", "png_dir", type=click.Path(file_okay=False), help="write plots of the run into this folder")
def simulate_command(judge, rounds, pairs_per_round, heldout_pairs, force_promote, seeds, method, selection,
                     candidates, all_judgments, noise, seed,
                     eval_prompts, learning_rate, epochs, beta, precision, temperature, max_new_tokens, as_json, partial_path,
                     resume, png_dir):
    """Run the loop unattended with a simulated judge, as production runs it: sample, vote, train,
    gate (promote only on held-out evidence), battle v0. Settings are `prefloop train`'s defaults.

    Example: prefloop simulate --judge prefloop.evaluate.judges:concise --rounds 2 --pairs-per-round 48 --seeds 3 --json
    """

    config = SimulationConfig(
        judge=judge, rounds=rounds, pairs_per_round=pairs_per_round, heldout_pairs=heldout_pairs,
        force_promote=force_promote, seeds=seeds, method=method, selection=selection, candidates=candidates,
        all_judgments=all_judgments, noise=noise,
        seed=seed, eval_prompts=eval_prompts, learning_rate=learning_rate, epochs=epochs, beta=beta,
        precision=precision, temperature=temperature, max_new_tokens=max_new_tokens,
    ).validate()
    judge_fn = load_judge(judge)  # fail fast, before any model loads
    so_far = None
    if resume:
        if seeds > 1:
            raise click.ClickException("--resume goes on with one run (one seed's home); resume each "
                                       "sim-seed-<n> home on its own")
        so_far = checkpoint.restore(prefloop_home() / "prefloop.db", run_options(config))
        _log(f"resuming after round {len(so_far['rounds'])} of {config.rounds} (the checkpoint's state restored)")
    started = time.perf_counter()
    # Training libraries print their logs to stdout; stdout carries only our answer.
    on_round = partial_writer(Path(partial_path)) if partial_path else None
    with contextlib.redirect_stdout(sys.stderr):
        if seeds > 1:
            result = run_seeds(Store(), config, judge=judge_fn, log=_log, on_round=on_round)
        else:
            result = run_simulation(Store(), config, judge=judge_fn, log=_log, on_round=on_round, resume=so_far)
    if on_round:
        on_round(result)  # "finished": true
    runs = result["seeds"] if seeds > 1 else [result]
    if as_json:
        click.echo(json.dumps(result))
    else:
        for run in runs:
            click.echo(f"seed {run['seed']}: v0 cut-off rate {_fmt(run['v0']['cutoff_rate'], '.1%')}")
            click.echo(f"{'round':<7}{'version':<9}{'pairs':>6}{'gate':>8}{'acc':>7}{'low':>7}{'win vs v0':>11}  "
                       f"{'95% CI':<16}{'words':>7}{'cut off':>9}{'secs':>7}")
            for r in run["rounds"]:
                ci = f"[{_fmt(r.get('ci_low'), '.0%')}, {_fmt(r.get('ci_high'), '.0%')}]"
                gate = r["gate"]
                click.echo(f"{r['round']:<7}{r['version']:<9}{r['pairs']:>6}{(gate['decision'] or '-'):>8}"
                           f"{_fmt(gate['accuracy'], '.2f'):>7}{_fmt(gate['lower_bound'], '.2f'):>7}"
                           f"{_fmt(r.get('win_rate_vs_v0'), '.1%'):>11}  {ci:<16}{_fmt(r.get('mean_words'), '.1f'):>7}"
                           f"{_fmt(r.get('cutoff_rate'), '.1%'):>9}{r['seconds']:>7.0f}")
                click.echo(f"       gate: {gate['reason']}")
        if seeds > 1:
            click.echo("over seeds " + ", ".join(str(s) for s in result["summary"]["seeds"]) + ":")
            for r in result["summary"]["rounds"]:
                w = r["win_rate_vs_v0"]
                click.echo(f"  round {r['round']}: promoted {r['promoted']}/{r['runs']}; win vs v0 mean "
                           f"{_fmt(w['mean'], '.1%')} sd {_fmt(w['sd'], '.1%')} [{_fmt(w['min'], '.1%')}, {_fmt(w['max'], '.1%')}]")
        click.echo(f"total {time.perf_counter() - started:.0f} s")
    if png_dir:

        for path in save_plots(simulation_rows(runs[0]), png_dir):
            _log(f"wrote {path}")
    stopped = [run["stopped"] for run in runs if run["stopped"]]
    if stopped:
        raise click.ClickException(stopped[0])  # the rounds that ran are reported above


@click.group("battles")
def battles_group():
    """Blind version-vs-version battles for human annotators.

    Example: prefloop battles create --a v1 --b v0 --prompts 50
    """


@battles_group.command("create")
@click.option("--a", "version_a", required=True, help="one version (e.g. v1)")
@click.option("--b", "version_b", required=True, help="the other version (e.g. v0)")
@click.option("--prompts", "n_prompts", default=50, show_default=True, help="held-out prompts to battle on")
@click.option("--split", type=click.Choice(["heldout", "train"]), default="heldout", show_default=True)
@click.option("--seed", type=int, help="sampling seed (random when omitted)")
def battles_create(version_a, version_b, n_prompts, split, seed):
    """Queue blind battle pairs (one answer from each version per prompt, sides randomised).

    Annotators see them in the Annotate tab like any pair; `prefloop eval` turns the votes
    into ratings.

    Example: prefloop battles create --a v1 --b v0 --prompts 50
    """

    store = Store()
    for name in (version_a, version_b):
        store.require_version(name)
    if version_a == version_b:
        raise PrefloopError("a battle needs two different versions")
    if n_prompts < 1:
        raise PrefloopError("--prompts must be at least 1")
    pair_ids = sample_battle_pairs(store, version_a, version_b, n_prompts=n_prompts, split=split, seed=seed)
    click.echo(f"queued {len(pair_ids)} battle pairs {version_a} vs {version_b} on {split} prompts")
