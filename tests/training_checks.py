"""Checks every training test makes, as TRL's own tests do: the trainable parameters moved, and
the weights they were trained on did not."""

from __future__ import annotations

import torch


def base_state(store, name: str = "v0") -> dict[str, torch.Tensor]:
    """A version's weights, read fresh from disk (not the shared cache a bug could also change)."""
    from prefloop.engine import models

    model, _ = models.load_fresh(store, name)
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"base weights changed: {changed[:3]}"


def learned(store, name: str) -> bool:
    """Every LoRA B matrix starts at exactly zero: training moved them when any is nonzero (and
    all are finite)."""
    from safetensors.torch import load_file

    from prefloop.engine import models

    version = store.require_version(name)
    adapter = load_file(str(models.version_path(version) / "adapter_model.safetensors"))
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and all(torch.isfinite(t).all() for t in lora_b)
    return any(t.abs().sum() > 0 for t in lora_b)


def trainer_spy(monkeypatch) -> dict:
    """Record the trainer a round builds (``seen["trainer"]``), so a test can read the data and
    arguments the real trainer runs with; the round itself runs unchanged."""
    from prefloop.train import recipe

    seen: dict = {}
    real = recipe.make_trainer

    def spy(*args, **kwargs):
        seen["trainer"] = real(*args, **kwargs)
        return seen["trainer"]

    monkeypatch.setattr(recipe, "make_trainer", spy)
    return seen
