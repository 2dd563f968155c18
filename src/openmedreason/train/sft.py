"""Supervised fine-tuning with TRL ``SFTTrainer`` and PEFT LoRA (``omr train sft``).

Rows are conversational prompt → completion pairs with their image (see
:mod:`openmedreason.train.data`); the loss covers the completion (the trace) only. TRL gets
``max_length=None``: the recipe's ``max_length`` is enforced by dropping over-long rows before
training, because truncating a multimodal row can cut image tokens.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openmedreason.train import common
from openmedreason.train.config import SFTRecipe

log = logging.getLogger(__name__)


def sft_args(recipe: SFTRecipe) -> Any:
    """The TRL ``SFTConfig`` for a recipe."""
    from trl import SFTConfig

    kwargs = common.trainer_common_args(recipe)
    kwargs.update(
        max_length=None,  # never truncate: the length guard dropped over-long rows already
        completion_only_loss=recipe.completion_only_loss,
        remove_unused_columns=False,
    )
    kwargs.update(recipe.trainer_overrides)
    return SFTConfig(**kwargs)


@dataclass
class Prepared:
    """Everything :func:`train_sft` / :func:`~openmedreason.train.grpo.train_grpo` builds before
    training: the trainer (model, LoRA, data, collator), the processor and the data report."""

    trainer: Any
    processor: Any
    report: Any
    pixel_bounds_applied: bool
    peft_config: Any
    started: str
    t0: float


def prepare_sft(recipe: SFTRecipe) -> Prepared:
    """Load the processor and model, build and length-check the data, and set up the TRL
    ``SFTTrainer`` with LoRA. Writes ``dropped.jsonl``; trains nothing."""
    from trl import SFTTrainer

    from openmedreason.train.data import build_dataset

    started, t0 = common.now(), time.time()
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor, bounds = common.load_processor(recipe.model)
    dataset, report = build_dataset(
        recipe, "sft", processor, max_tokens=recipe.max_length, cache_dir=common.data_cache_dir(out)
    )
    common.write_dropped(out, report.drops)
    log.info("SFT data: %d rows, dropped %s", len(dataset), report.as_dict()["dropped"])

    model = common.load_model(recipe.model, recipe.use_cpu)
    peft_config = common.lora_config(model, recipe.lora)
    trainer = SFTTrainer(
        model=model, args=sft_args(recipe), train_dataset=dataset, processing_class=processor, peft_config=peft_config
    )
    return Prepared(trainer, processor, report, bounds, peft_config, started, t0)


def train_sft(recipe: SFTRecipe) -> dict[str, Any]:
    """Run SFT for ``recipe``: resume when asked, train, save the adapter and the processor to
    ``recipe.output_dir`` with ``dropped.jsonl`` and ``train_manifest.json``. Returns the manifest."""
    prep = prepare_sft(recipe)
    return run_and_save(recipe, prep, "sft")


def run_and_save(recipe: Any, prep: Prepared, kind: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a prepared trainer (resuming per the recipe), save outputs, write the manifest."""
    trainer, args = prep.trainer, prep.trainer.args
    resume = common.resolve_resume(recipe)
    result = trainer.train(resume_from_checkpoint=resume)
    out = Path(recipe.output_dir)
    common.save_outputs(trainer, prep.processor, out)
    manifest = {
        "kind": kind,
        "started_at": prep.started,
        "finished_at": common.now(),
        "wall_s": round(time.time() - prep.t0, 2),
        "recipe": recipe.model_dump(mode="json"),
        "recipe_hash": recipe.recipe_hash(),
        "data": prep.report.as_dict(),
        "model": {
            "base": recipe.model.name_or_path,
            "class": type(trainer.model).__name__,
            "processor": type(prep.processor).__name__,
            "pixel_bounds_applied": prep.pixel_bounds_applied,
            "lora": prep.peft_config is not None,
            "lora_target_modules": _jsonable(getattr(prep.peft_config, "target_modules", None)),
            "params": common.param_counts(trainer.model),
        },
        "trainer": {
            "max_length_passed_to_trl": getattr(args, "max_length", None),
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "world_size": args.world_size,
            "effective_batch": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        },
        **(extra or {}),
        "result": {
            "global_step": result.global_step,
            "train_loss": result.training_loss,
            "metrics": result.metrics,
            "resumed_from": resume,
            "log_history": trainer.state.log_history,
        },
        "versions": common.versions(),
        "device": common.device_info(),
    }
    common.write_manifest(out, manifest)
    return manifest


def _jsonable(v: Any) -> Any:
    if isinstance(v, (set, frozenset)):
        return sorted(v)
    return v
