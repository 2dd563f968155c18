"""Supervised fine-tuning with TRL ``SFTTrainer`` and PEFT LoRA (``omr train sft``).

Rows are conversational prompt → completion pairs with their image (see
:mod:`openmedreason.train.data`); the loss covers the completion (the trace) only. TRL gets
``max_length=None``: the recipe's ``max_length`` is enforced by dropping over-long rows before
training, because truncating a multimodal row can cut image tokens.
"""

from __future__ import annotations

import logging
from typing import Any

from openmedreason.train import common
from openmedreason.train.common import Prepared, run_and_save
from openmedreason.train.config import SFTRecipe

__all__ = ["Prepared", "prepare_sft", "run_and_save", "sft_args", "train_sft"]

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


def prepare_sft(recipe: SFTRecipe) -> Prepared:
    """Load the processor and model, build and length-check the data, and set up the TRL
    ``SFTTrainer`` with LoRA. Writes ``dropped.jsonl``; trains nothing."""
    from trl import SFTTrainer

    inp = common.prepare_inputs(recipe, "sft", recipe.max_length)
    trainer = SFTTrainer(
        model=inp.model,
        args=sft_args(recipe),
        train_dataset=inp.dataset,
        processing_class=inp.processor,
        peft_config=inp.peft_config,
    )
    return inp.prepared(trainer)


def train_sft(recipe: SFTRecipe) -> dict[str, Any]:
    """Run SFT for ``recipe``: resume when asked, train, save the adapter and the processor to
    ``recipe.output_dir`` with ``dropped.jsonl`` and ``train_manifest.json``. Returns the manifest."""
    return run_and_save(recipe, prepare_sft(recipe), "sft")
