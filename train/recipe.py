"""How a round trains: the TRL trainer for its method and every setting it runs with.

``rounds.py`` runs a round's life (create, spawn, train, gate, decide); this module is the part
that talks to TRL: which trainer (DPO, KTO, SFT, or ORPO from trl.experimental), its config
fields, the warmup, KTO's class weights, the precision, answer-only LM-head tricks on CPU,
training cut-off answers without an end-of-turn token, progress callbacks into the database, and
the phase clock and memory figure that go on the round.

A method runs one trainer per phase (config.PHASES): sft-dpo is an SFT phase, then a DPO phase
that continues the same adapter. Every function here takes the config of one phase, whose
``method`` is that phase's trainer.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

from prefloop.db.store import Store, now
from prefloop.engine.generation import encode_conversation
from prefloop.engine.history import fit_history
from prefloop.engine.models import cpu_has_native_bf16
from prefloop.train import distributed
from prefloop.train.config import RoundConfig


def fit_prompt_length(rows: list[dict], tokenizer, budget: int) -> tuple[list[dict], int]:
    """Cut each row's conversation from the left at ``budget`` tokens as the sampler does
    (prefloop.engine.history), and leave out rows whose last user turn alone is still longer
    (TRL would cut the answer instead). Returns (rows, how many were left out)."""
    kept = []
    for row in rows:
        messages, dropped = fit_history(tokenizer, row["prompt"], budget)
        if len(encode_conversation(tokenizer, messages)) <= budget:
            kept.append({**row, "prompt": messages, **({"history_dropped_turns": dropped} if dropped else {})})
    return kept, len(rows) - len(kept)


def prompt_budget(store: Store, config: RoundConfig) -> int:
    """Tokens of history a round's rows keep: the sampler's budget (setting
    ``history_token_budget``), or the round's max_prompt_length when that is smaller."""
    return min(config.max_prompt_length, int(store.get_setting("history_token_budget")))


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
        seed=config.seed,
        save_strategy="no",  # the adapter is saved once, atomically, by register_adapter_version
        report_to="none",
        disable_tqdm=True,  # progress goes to the database; the log file stays readable
    )
    if config.method != "sft":  # SFT has no reference to stay near and no beta
        settings["beta"] = config.beta
    if config.method == "sft":
        settings["completion_only_loss"] = True  # learn the answer, not to predict the user's prompt
    if config.method == "dpo" and config.nll_weight:
        settings.update(loss_type=["sigmoid", "sft"], loss_weights=[1.0, config.nll_weight])
    return settings


def trainer_settings(config: RoundConfig, on_gpu: bool, folder: Path) -> dict:
    """Every DPOConfig/ORPOConfig/KTOConfig/SFTConfig field a round sets: the recipe, plus what makes it fast.

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
    )
    if config.method != "sft":  # SFTConfig has no such field and leaves dropout as the model has it
        # TRL zeroes every dropout (LoRA's too) unless told not to: honour a nonzero lora_dropout
        settings["disable_dropout"] = config.lora_dropout == 0
    if config.method in ("dpo", "kto"):
        # The reference is the parent and never changes during a round: run it once over the rows
        # instead of once per row per epoch inside every training step. In batches of the training
        # batch: the pass holds a vocabulary-wide row of log-probs per answer token of its batch, so
        # its memory grows with the batch while on a CPU a bigger batch is not faster. (The round's
        # peak is the training step, not this pass: README, "Round time and round memory".)
        settings.update(precompute_ref_log_probs=True, precompute_ref_batch_size=config.batch_size)
    # Not a TRL field (_train takes it out before building the trainer): see completion_tokens_only.
    settings[COMPLETION_ONLY] = True
    return settings


COMPLETION_ONLY = "prefloop_lm_head_on_completions_only"


@contextlib.contextmanager
def completion_tokens_only(enabled: bool):
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


KTO_RATIO_RANGE = (1.0, 4 / 3)  # KTO paper, eq. 8: desirable_weight*n_D / (undesirable_weight*n_U)


def kto_class_weights(n_desirable: int, n_undesirable: int) -> dict:
    """KTO's desirable/undesirable loss weights for a round's label counts, as TRL's docs advise.

    The KTO paper (and TRL's KTOTrainer warning) want ``desirable_weight * n_D`` over
    ``undesirable_weight * n_U`` in [1, 4/3]. Counts already in range keep both weights at 1;
    otherwise the minority class alone is weighted up, to the middle of the range (7/6), so
    TRL's two-decimal check of the same range never sees it at an edge. Thumbs-down-heavy rounds
    (both-bad votes give two undesirable answers) weight desirable answers up, and the reverse.
    """
    low, high = KTO_RATIO_RANGE
    desirable_weight = undesirable_weight = 1.0
    if n_desirable and n_undesirable:  # one class alone: nothing to balance
        ratio = n_desirable / n_undesirable
        middle = (low + high) / 2
        if ratio < low:
            desirable_weight = middle / ratio
        elif ratio > high:
            undesirable_weight = ratio / middle
    return {
        "desirable": n_desirable,
        "undesirable": n_undesirable,
        "desirable_weight": round(desirable_weight, 4),
        "undesirable_weight": round(undesirable_weight, 4),
        "weighted_ratio": round(desirable_weight * n_desirable / (undesirable_weight * n_undesirable), 4)
        if n_undesirable else None,
    }


def make_trainer(model, tokenizer, rows, config: RoundConfig, on_gpu: bool, store, round_id, main, fields: dict,
                 progress: "Progress | None" = None):
    """The TRL trainer of one phase (``config.method``: dpo, orpo, kto or sft) over its rows.

    ``model`` is the parent, which the trainer wraps in a new LoRA adapter, or (a later phase of
    sft-dpo) the PEFT model an earlier phase trained, whose adapter the trainer continues.
    """
    import random

    from datasets import Dataset
    from peft import LoraConfig, PeftModel

    peft_config = None if isinstance(model, PeftModel) else LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules="all-linear",  # every attention and MLP projection (not the LM head)
        task_type="CAUSAL_LM",
    )
    if config.method == "kto":
        # KTO reads rows in order (its KL estimate pairs each row with its batch neighbour's answer),
        # so the order is the round's shuffle, by its seed: mixed labels and prompts in every batch.
        rows = list(rows)
        random.Random(config.seed).shuffle(rows)
    else:
        # Shortest first: the one reference pass runs over the rows in order, so its batches hold rows
        # of similar length (little padding). Training draws random batches whatever the order.
        rows = sorted(rows, key=_row_length)
    dataset = Dataset.from_list(rows)
    # many ranks: one copy
    dataset = distributed.shared_dataset(dataset, Path(fields["output_dir"]).parent / f"train-rows-{config.method}")
    callbacks = [progress_callback(store, round_id, progress)] if main else []
    common = dict(train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    if config.method == "dpo":
        from trl import DPOConfig

        # ref_model=None with a peft_config: the reference is the adapter-disabled model, the parent.
        # With an adapter already trained (sft-dpo), TRL freezes a copy of it as the reference ("ref").
        return _cut_off_aware("dpo")(model=model, ref_model=None, args=DPOConfig(**fields), **common)
    if config.method == "kto":
        from trl import KTOConfig

        return _cut_off_aware("kto")(model=model, ref_model=None, args=KTOConfig(**fields), **common)
    if config.method == "sft":
        from trl import SFTConfig, SFTTrainer

        return SFTTrainer(model=model, args=SFTConfig(**fields), **common)
    from trl.experimental.orpo import ORPOConfig

    return _cut_off_aware("orpo")(model=model, args=ORPOConfig(**fields), **common)


def drop_reference_adapter(model) -> None:
    """Remove the frozen copy ("ref") DPO keeps of an adapter it continued: only the trained one is saved."""
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
        model.set_adapter("default")


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
    """TRL's trainer, but answers flagged ``chosen_cut_off`` / ``rejected_cut_off`` (KTO:
    ``cut_off``) train without the end-of-turn token: stripped after TRL tokenises and before the
    reference pass runs."""
    if method == "kto":
        from trl import KTOTrainer

        class CutOffAwareKTOTrainer(KTOTrainer):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
                if "cut_off" not in dataset.column_names:
                    return dataset
                eos = self._tokenizer.eos_token_id

                def strip(row):
                    if row["cut_off"]:
                        row["completion_ids"] = strip_end_of_turn(row["completion_ids"], eos)
                    return row

                dataset = dataset.map(strip).remove_columns(["cut_off"])
                if "KL_completion_ids" in dataset.column_names:
                    # TRL's KL answers are the batch neighbours' answers, copied before the strip: again
                    def rotate(batch):
                        batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]
                        return batch

                    dataset = dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)
                return dataset

        return CutOffAwareKTOTrainer
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
    answers = [row[k] for k in ("chosen", "rejected", "completion") if k in row]
    return prompt + max(len(answer[0]["content"]) for answer in answers)


def use_bf16(config: RoundConfig, on_gpu: bool) -> bool:
    """Whether the round trains under bf16 autocast (see RoundConfig.precision)."""
    if config.precision != "auto":
        return config.precision == "bf16"

    return _gpu_bf16() if on_gpu else cpu_has_native_bf16()


def _gpu_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


class Progress:
    """Where one phase sits in its round: its share of the progress bar, the steps of the phases
    before it (metric rows keep counting), and a prefix for its metric names ("sft/" for
    sft-dpo's first phase, so the last phase's "loss" is the round's)."""

    def __init__(self, start: float = 0.05, end: float = 0.9, step_offset: int = 0, prefix: str = ""):
        self.start, self.end, self.step_offset, self.prefix = start, end, step_offset, prefix

    @classmethod
    def of_phase(cls, index: int, phases: tuple[str, ...], step_offset: int) -> "Progress":
        share = 0.85 / len(phases)
        prefix = f"{phases[index]}/" if index < len(phases) - 1 else ""
        return cls(0.05 + share * index, 0.05 + share * (index + 1), step_offset, prefix)


def progress_callback(store: Store, round_id: int, progress: Progress | None = None):
    """A TrainerCallback writing progress (training is 0.05-0.9 of a round) and every logged metric."""
    from transformers import TrainerCallback

    where = progress or Progress()

    class ProgressCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero and state.max_steps:
                fraction = min(1.0, state.global_step / state.max_steps)
                done = where.start + (where.end - where.start) * fraction
                store.update_round(round_id, progress=round(done, 4), heartbeat_at=now())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            numeric = {
                where.prefix + k: float(v) for k, v in logs.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))
            }
            if numeric:
                store.add_round_metrics(round_id, where.step_offset + state.global_step, numeric)

    return ProgressCallback()


class PhaseClock:
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


def last_values(metric_rows: list[dict]) -> dict[str, float]:
    last: dict[str, float] = {}
    for row in metric_rows:
        last[row["name"]] = row["value"]
    return last
