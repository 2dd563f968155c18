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
from typing import Any

from openmedreason.train import common
from openmedreason.train.common import Prepared, run_and_save
from openmedreason.train.config import GRPORecipe

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
    for extra in recipe.extra_rewards:
        if extra.weight:
            funcs.append(load_function(extra.function))
            weights.append(extra.weight)
    if not funcs:
        raise ValueError("every reward weight is 0")
    return funcs, weights


def load_function(path: str) -> Any:
    """The callable named by ``package.module:function`` (a clear error when it cannot be imported)."""
    import importlib

    module, _, name = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"extra reward {path!r} cannot be imported: {exc}") from exc
    if not callable(fn):
        raise ValueError(f"extra reward {path!r} is not callable")
    return fn


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

    inp = common.prepare_inputs(recipe, "grpo", recipe.max_prompt_length)
    funcs, weights = reward_functions(recipe)
    trainer = GRPOTrainer(
        model=inp.model,
        reward_funcs=funcs,
        args=grpo_args(recipe, weights),
        train_dataset=inp.dataset,
        processing_class=inp.processor,
        peft_config=inp.peft_config,
    )
    return inp.prepared(trainer)


def train_grpo(recipe: GRPORecipe) -> dict[str, Any]:
    """Run GRPO for ``recipe``: resume when asked, train, save the adapter and the processor to
    ``recipe.output_dir`` with ``dropped.jsonl`` and ``train_manifest.json``. Returns the manifest."""
    prep = prepare_grpo(recipe)
    args = prep.trainer.args
    # the functions and weights the trainer was built with (not a second reward_functions() call)
    funcs = prep.trainer.reward_funcs
    extra = {
        "rewards": {"functions": [getattr(f, "__name__", str(f)) for f in funcs], "weights": list(args.reward_weights)},
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
