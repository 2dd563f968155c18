"""GRPO with TRL ``GRPOTrainer``, PEFT LoRA and our rewards (``omr train grpo``).

Start from the merged SFT model (``omr train merge``). Rewards: :func:`~openmedreason.train.rewards.accuracy_reward`
and :func:`~openmedreason.train.rewards.format_reward` (equal weights, as released), plus an
optional soft length penalty. The gold letter and the options travel in the ``answer``,
``options`` and ``letters`` columns. Prompts longer than ``max_prompt_length`` are dropped,
never truncated. With a LoRA adapter and ``beta > 0`` the KL reference is the base model
(adapter disabled), so no second copy of the weights is loaded.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from openmedreason.train import common
from openmedreason.train.config import GRPORecipe
from openmedreason.train.sft import Prepared, run_and_save

log = logging.getLogger(__name__)


def reward_functions(recipe: GRPORecipe) -> tuple[list[Any], list[float]]:
    """The reward functions with non-zero weight, and their weights (TRL ``reward_weights``)."""
    from openmedreason.train.rewards import accuracy_reward, format_reward, make_length_penalty

    w = recipe.reward_weights
    funcs: list[Any] = []
    weights: list[float] = []
    for fn, weight in (
        (accuracy_reward, w.accuracy),
        (format_reward, w.format),
        (make_length_penalty(recipe.max_completion_length, recipe.length_penalty_buffer), w.length),
    ):
        if weight:
            funcs.append(fn)
            weights.append(weight)
    if not funcs:
        raise ValueError("every reward weight is 0")
    return funcs, weights


def grpo_args(recipe: GRPORecipe, reward_weights: list[float]) -> Any:
    """The TRL ``GRPOConfig`` for a recipe."""
    from trl import GRPOConfig

    kwargs = common.trainer_common_args(recipe)
    kwargs.update(
        num_generations=recipe.num_generations,
        generation_batch_size=recipe.generation_batch_size,
        beta=recipe.beta,
        max_completion_length=recipe.max_completion_length,
        temperature=recipe.temperature,
        top_p=recipe.top_p,
        top_k=recipe.top_k,
        reward_weights=reward_weights,
        use_vllm=recipe.use_vllm,
        log_completions=recipe.log_completions,
        remove_unused_columns=False,  # answer/options/letters must reach the reward functions
    )
    if recipe.use_vllm:
        kwargs.update(vllm_mode=recipe.vllm_mode, vllm_gpu_memory_utilization=recipe.vllm_gpu_memory_utilization)
    if recipe.loss_type is not None:
        kwargs["loss_type"] = recipe.loss_type
    if recipe.scale_rewards is not None:
        kwargs["scale_rewards"] = recipe.scale_rewards
    kwargs.update(recipe.trainer_overrides)
    return GRPOConfig(**kwargs)


def prepare_grpo(recipe: GRPORecipe) -> Prepared:
    """Load the processor and model, build and length-check the prompts, and set up the TRL
    ``GRPOTrainer`` with LoRA and the rewards. Writes ``dropped.jsonl``; trains nothing."""
    from trl import GRPOTrainer

    from openmedreason.train.data import build_dataset

    started, t0 = common.now(), time.time()
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor, bounds = common.load_processor(recipe.model)
    dataset, report = build_dataset(
        recipe, "grpo", processor, max_tokens=recipe.max_prompt_length, cache_dir=common.data_cache_dir(out)
    )
    common.write_dropped(out, report.drops)
    log.info("GRPO data: %d prompts, dropped %s", len(dataset), report.as_dict()["dropped"])

    model = common.load_model(recipe.model, recipe.use_cpu)
    peft_config = common.lora_config(model, recipe.lora)
    funcs, weights = reward_functions(recipe)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=grpo_args(recipe, weights),
        train_dataset=dataset,
        processing_class=processor,
        peft_config=peft_config,
    )
    return Prepared(trainer, processor, report, bounds, peft_config, started, t0)


def train_grpo(recipe: GRPORecipe) -> dict[str, Any]:
    """Run GRPO for ``recipe``: resume when asked, train, save the adapter and the processor to
    ``recipe.output_dir`` with ``dropped.jsonl`` and ``train_manifest.json``. Returns the manifest."""
    prep = prepare_grpo(recipe)
    args = prep.trainer.args
    funcs, weights = reward_functions(recipe)
    extra = {
        "rewards": {"functions": [getattr(f, "__name__", str(f)) for f in funcs], "weights": weights},
        "grpo": {
            "generation_batch_size": args.generation_batch_size,
            "num_generations": args.num_generations,
            "beta": args.beta,
            "loss_type": args.loss_type,
            "scale_rewards": args.scale_rewards,
            "use_vllm": args.use_vllm,
        },
    }
    return run_and_save(recipe, prep, "grpo", extra)
