"""Hyperparameters of one training round, with defaults chosen for small preference sets.

A round sees tens to a few hundred pairs, judged by people, on a small model. That argues for a
LoRA adapter (few parameters to fit, the parent stays the DPO reference for free), a learning
rate far above TRL's full fine-tuning default, and only a couple of epochs (more memorises).
The config is stored as JSON on the round row and on the version card, so every number here can
be traced from a model back to the run that made it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from prefloop.errors import ConfigError

METHODS = ("dpo", "orpo", "kto", "sft", "sft-dpo")
# The trainers a method runs, in order; sft-dpo trains one adapter with SFT, then continues it with DPO.
PHASES = {"dpo": ("dpo",), "orpo": ("orpo",), "kto": ("kto",), "sft": ("sft",), "sft-dpo": ("sft", "dpo")}
PRECISIONS = ("auto", "fp32", "bf16")
QUANTIZE_CHOICES = ("none", "4bit")  # the same tuple as train/distributed.py's, which loads them


def _same_kind(default: Any, value: Any) -> bool:
    """JSON from a user must match the field: a text where a number goes fails later, unclearly."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if default is None:  # the optional whole numbers (min_new_pairs)
        return value is None or isinstance(value, int)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return True


@dataclass
class RoundConfig:
    method: str = field(
        default="dpo",
        metadata={"help": "dpo (pairs; reference = parent version), orpo (pairs; reference-free, NLL built in), "
                  "kto (single answers labelled good or bad: votes, both-bad, thumbs), sft (imitate written better "
                  "answers), sft-dpo (sft, then dpo on the same adapter, in one round)",
                  "choices": METHODS},
    )
    learning_rate: float = field(
        # LoRA wants 10-100x the full fine-tuning rate. 3e-4: the rate the earlier simulated loop
        # learned at, now production's too so simulation runs what production runs (README, "Does
        # the loop learn?", which says where that rate came from).
        default=3e-4,
        metadata={"help": "AdamW learning rate for the adapter"},
    )
    beta: float = field(
        default=0.1,  # TRL and the DPO paper's default; ORPO uses it as lambda (odds-ratio weight)
        metadata={"help": "DPO and KTO: KL strength towards the reference; ORPO: weight of the odds-ratio term; "
                  "SFT: unused"},
    )
    epochs: float = field(
        default=2.0,  # a few hundred pairs: 1 epoch barely moves, 3+ starts memorising
        metadata={"help": "passes over the round's preference rows"},
    )
    max_steps: int = field(
        default=-1,
        metadata={"help": "stop after this many optimizer steps (-1: run the full epochs); for quick tries"},
    )
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank r of every adapted projection"})
    lora_alpha: int = field(
        default=32,  # alpha = 2r: the usual scale, so changing r does not change the step size much
        metadata={"help": "LoRA scaling numerator (effective scale alpha / r)"},
    )
    lora_dropout: float = field(
        default=0.0,  # TRL's recipe: no dropout, so policy and reference see the same network
        metadata={"help": "dropout on the LoRA input (above 0 also keeps the model's own dropout on)"},
    )
    max_length: int = field(
        default=1024,  # prompt (at most max_prompt_length) + the longest answer the sampler may give
        metadata={"help": "tokens per prompt+response sequence (longer is truncated)"},
    )
    max_prompt_length: int = field(
        default=384,
        metadata={"help": "rows whose templated prompt is longer than this are left out of the round"},
    )
    batch_size: int = field(
        # 2 x 4 accumulation: the same 8 pairs per update as 4 x 2, at half the activation memory. With
        # 512-token answers a round's peak went from 9.2 to 5.2 GiB (README, "Round time and round memory")
        default=2, metadata={"help": "pairs per device per step"}
    )
    gradient_accumulation: int = field(
        default=4, metadata={"help": "steps accumulated per optimizer update (effective batch = batch_size x this)"}
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "share of steps spent warming the learning rate up"})
    nll_weight: float = field(
        default=0.0,
        metadata={
            "help": "DPO (and sft-dpo's DPO phase) only: weight of an added NLL (SFT) loss on the chosen answer, "
            "RPO-style (TRL loss_type ['sigmoid', 'sft']). ORPO has its NLL term built in (weight 1): leave 0."
        },
    )
    sft_chosen_margin: int = field(
        default=0,  # off: only what people wrote is imitated; a vote says "better", not "good"
        metadata={
            "help": "sft and sft-dpo: also imitate a pair's winning answer when its votes outnumber the other "
            "answer's by at least this many (and it was not cut off); 0: only written better answers"
        },
    )
    full_finetune: bool = field(
        default=False,
        metadata={"help": "train every weight instead of a LoRA adapter (not supported yet: see validate)"},
    )
    precision: str = field(
        default="auto",  # bf16 matmuls measured 4.7x faster than fp32 on an AVX512-BF16 CPU (README, round time)
        metadata={
            "help": "auto: bf16 mixed precision where the hardware computes bf16 natively (a CUDA GPU with bf16, "
            "a CPU with AVX512-BF16 or AMX), else fp32; fp32 or bf16 to force one",
            "choices": PRECISIONS,
        },
    )
    gradient_checkpointing: bool = field(
        default=False,  # a 135M model fits easily; checkpointing only slows it down
        metadata={"help": "trade compute for memory on large models"},
    )
    all_judgments: bool = field(
        default=False,
        metadata={
            "help": "train on every train judgment, not only those newer than the round that made "
            "the parent (iterative DPO trains each version on data sampled from it)"
        },
    )
    min_new_pairs: int | None = field(
        default=None,
        metadata={"help": "override the min_new_pairs setting (readiness gate) for this round"},
    )
    seed: int = field(default=0, metadata={"help": "seed for data order and adapter initialisation"})
    quantize_base: str = field(
        default="none",  # 4bit lets an 8B parent train on one 24 GB GPU (QLoRA); CUDA only
        metadata={"help": "none, or 4bit: load the parent in 4-bit NF4 (QLoRA, bitsandbytes, CUDA GPUs only) "
                  "and train the adapter in bf16 on top", "choices": QUANTIZE_CHOICES},
    )

    def validate(self) -> "RoundConfig":
        """Check every field; raise ConfigError naming the first bad one."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.method in METHODS, f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        need(0 < self.learning_rate <= 1e-2, f"learning_rate must be in (0, 0.01], not {self.learning_rate}")
        need(0 < self.beta <= 10, f"beta must be in (0, 10], not {self.beta}")
        need(0 < self.epochs <= 100, f"epochs must be in (0, 100], not {self.epochs}")
        need(self.max_steps == -1 or self.max_steps >= 1, f"max_steps must be -1 or >= 1, not {self.max_steps}")
        need(1 <= self.lora_rank <= 1024, f"lora_rank must be in [1, 1024], not {self.lora_rank}")
        need(1 <= self.lora_alpha <= 4096, f"lora_alpha must be in [1, 4096], not {self.lora_alpha}")
        need(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), not {self.lora_dropout}")
        need(16 <= self.max_length <= 32768, f"max_length must be in [16, 32768], not {self.max_length}")
        need(
            8 <= self.max_prompt_length < self.max_length,
            f"max_prompt_length must be at least 8 and below max_length ({self.max_length}), "
            f"not {self.max_prompt_length}",
        )
        need(1 <= self.batch_size <= 1024, f"batch_size must be in [1, 1024], not {self.batch_size}")
        need(
            1 <= self.gradient_accumulation <= 1024,
            f"gradient_accumulation must be in [1, 1024], not {self.gradient_accumulation}",
        )
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), not {self.warmup_ratio}")
        need(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        need(0 <= self.nll_weight <= 10, f"nll_weight must be in [0, 10], not {self.nll_weight}")
        need(
            not (self.method == "orpo" and self.nll_weight),
            "nll_weight applies to DPO only: ORPO's NLL term is built in; leave nll_weight at 0",
        )
        need(
            not (self.method in ("kto", "sft") and self.nll_weight),
            f"nll_weight applies to DPO only (dpo, sft-dpo), not {self.method}; leave nll_weight at 0",
        )
        need(
            not (self.method == "kto" and self.batch_size < 2),
            "kto needs batch_size of at least 2: its KL estimate pairs each prompt with another row's "
            "answer in the same batch",
        )
        need(
            0 <= self.sft_chosen_margin <= 1000,
            f"sft_chosen_margin must be in [0, 1000] (0: off), not {self.sft_chosen_margin}",
        )
        need(
            not (self.sft_chosen_margin and "sft" not in PHASES.get(self.method, ())),
            f"sft_chosen_margin applies to sft and sft-dpo only, not {self.method}; leave it at 0",
        )
        need(
            not self.full_finetune,
            "full fine-tuning is not supported yet: versions are LoRA adapters on their parent "
            "(a full checkpoint would need a 'merged' version kind in engine/models.py); "
            "raise lora_rank instead",
        )
        need(
            self.quantize_base in QUANTIZE_CHOICES,
            f"quantize_base must be one of {', '.join(QUANTIZE_CHOICES)}, not {self.quantize_base!r}",
        )
        need(
            self.min_new_pairs is None or self.min_new_pairs >= 0,
            f"min_new_pairs must be >= 0, not {self.min_new_pairs}",
        )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RoundConfig":
        """Build from a dict (a stored round's config, a CLI's options); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown round settings: {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for name, value in values.items():
            if not _same_kind(defaults[name], value):
                raise ConfigError(f"round setting {name} must be like {defaults[name]!r}, not {value!r}")
        try:
            return cls(**values)
        except TypeError as error:
            raise ConfigError(f"bad round settings: {error}") from error

    @classmethod
    def help_texts(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
