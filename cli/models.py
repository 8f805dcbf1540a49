"""Model version commands (`prefloop models ...`) and `prefloop sample`.

Every command resolves names through the store first, so an unknown version fails with one line
(listing the known ones) before anything is loaded or written.
"""

from __future__ import annotations

import click

from prefloop.annotate.sampler import sample_pairs
from prefloop.db.store import Store
from prefloop.db.vocab import SPLITS
from prefloop.engine.generation import SamplingParams
from prefloop.engine.models import export_merged, promote, reject, rollback
from prefloop.errors import SamplerError


def _store() -> Store:
    return Store()


def _version_line(version: dict) -> str:
    return f"{version['name']} ({version['kind']}, {version['status']})"


# --------------------------------------------------------------------------------------------
# prefloop models ...
# --------------------------------------------------------------------------------------------
@click.group("models")
def models_group() -> None:
    """List, promote, roll back, reject and export model versions.

    Example: prefloop models list
    """


@models_group.command("list")
def models_list() -> None:
    """Every version with its parent and status; `*` marks the active one.

    Example: prefloop models list
    """
    store = _store()
    versions = store.list_versions()
    if not versions:
        click.echo("no model versions yet: run `prefloop init`")
        return
    active = store.active_version()
    names = {v["id"]: v["name"] for v in versions}
    header = ("", "name", "kind", "parent", "status", "created")
    rows = [
        (
            "*" if active and active["id"] == v["id"] else "",
            v["name"],
            v["kind"],
            names.get(v["parent_id"], "-"),
            v["status"],
            v["created_at"][:19].replace("T", " "),
        )
        for v in versions
    ]
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for r in (header, *rows):
        click.echo("  ".join(str(cell).ljust(w) for cell, w in zip(r, widths)).rstrip())


@models_group.command("promote")
@click.argument("name")
def models_promote(name: str) -> None:
    """Make NAME the active version; open train pairs of other versions leave the queue.

    Example: prefloop models promote v2
    """

    version = promote(_store(), name)
    click.echo(f"active version is now {_version_line(version)}")


@models_group.command("rollback")
@click.option("--to", "to", metavar="NAME", help="Version to make active (default: the active version's parent).")
def models_rollback(to: str | None) -> None:
    """Move the active pointer back; the version rolled back from is marked retired.

    Example: prefloop models rollback --to v1
    """

    version = rollback(_store(), to)
    click.echo(f"rolled back: active version is now {_version_line(version)}")


@models_group.command("reject")
@click.argument("name")
def models_reject(name: str) -> None:
    """Mark a candidate version rejected so it can never be promoted (files are kept).

    Example: prefloop models reject v3
    """

    version = reject(_store(), name)
    click.echo(f"rejected {_version_line(version)}")


@models_group.command("export")
@click.argument("name")
@click.argument("out_dir", type=click.Path(file_okay=False))
def models_export(name: str, out_dir: str) -> None:
    """Write NAME as a standalone HF checkpoint (adapters merged) to OUT_DIR.

    Load it anywhere with AutoModelForCausalLM.from_pretrained(OUT_DIR).

    Example: prefloop models export v2 ./exports/v2
    """

    store = _store()
    store.require_version(name)
    click.echo(f"exporting {name} ...")
    path = export_merged(store, name, out_dir)
    click.echo(f"exported {name} to {path}")


# --------------------------------------------------------------------------------------------
# prefloop sample
# --------------------------------------------------------------------------------------------
@click.command("sample")
@click.option("--version", "version", metavar="NAME", help="Version to sample from (default: the active one).")
@click.option("--prompts", "n_prompts", type=click.IntRange(min=1), default=16, show_default=True, help="How many prompts (those with the fewest pairs from this version first).")
@click.option("--split", type=click.Choice(SPLITS), default="train", show_default=True, help="Prompt split to draw from.")
@click.option("--temperature", type=float, help="Override the `sampling` setting's temperature (0 = greedy).")
@click.option("--top-p", "top_p", type=float, help="Override the `sampling` setting's top_p.")
@click.option("--max-new-tokens", "max_new_tokens", type=int, help="Override the `sampling` setting's max_new_tokens.")
@click.option("--seed", type=int, help="Run seed; the same seed, settings and prompts give the same pairs.")
@click.option("--batch-size", "batch_size", type=click.IntRange(min=1), default=32, show_default=True, help="Responses decoded together (two per prompt); 32 measured fastest on CPU (bench/sampling.py).")
def sample(
    version: str | None,
    n_prompts: int,
    split: str,
    temperature: float | None,
    top_p: float | None,
    max_new_tokens: int | None,
    seed: int | None,
    batch_size: int,
) -> None:
    """Sample response pairs from a version and queue them for annotators.

    Two responses per prompt, from two seeds; near-identical pairs are dropped.

    Example: prefloop sample --prompts 32 --temperature 0.8 --seed 1
    """
    from tqdm import tqdm

    store = _store()
    if version is None:
        active = store.active_version()
        if active is None:
            raise SamplerError("no active model version yet: run `prefloop init` first")
        version = active["name"]
    row = store.require_version(version)
    params = SamplingParams.from_dict(store.get_setting("sampling")).replace(
        temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens
    )
    with tqdm(total=n_prompts, unit="prompt", desc=f"sampling {row['name']}") as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        pair_ids = sample_pairs(
            store,
            row["name"],
            n_prompts=n_prompts,
            split=split,
            params=params,
            seed=seed,
            progress=progress,
            batch_size=batch_size,
        )
    attempted = min(n_prompts, store.count_prompts(split))
    dropped = attempted - len(pair_ids)
    click.echo(
        f"queued {len(pair_ids)} pair(s) from {row['name']}"
        + (f"; dropped {dropped} near-identical" if dropped else "")
    )
