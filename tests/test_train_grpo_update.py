"""One GRPO step on the tiny random LLaVA (tests/tiny_vlm.py) that must move the LoRA adapter.

With a random model the accuracy and format rewards are 0 for every completion, so the group
advantages and the policy gradient are 0 and ``test_train_smoke`` cannot tell a working GRPO step
from one that never updates. Here one extra, deterministic reward that differs between the
completions of a prompt (distinct characters of the completion text) is added next to the
recipe's own rewards, and the step runs through :func:`openmedreason.train.grpo.prepare_grpo` and
:func:`openmedreason.train.sft.run_and_save` (what ``omr train grpo`` calls). The test checks that
the logged rewards vary within a group, that the saved adapter moved away from its initial
values (``lora_B`` starts at exactly 0), and that nothing but LoRA parameters changed.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict

import pytest

for _mod in ("torch", "transformers", "trl", "peft"):
    pytest.importorskip(_mod)

from openmedreason.train.config import DataSource, ExtraReward, GRPORecipe, LoraSpec, ModelSpec  # noqa: E402
from openmedreason.train.rewards import completion_text  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

NUM_GENERATIONS = 4


def distinct_chars(completions, **kwargs):
    """Test reward: the number of distinct characters of each completion, divided by 10.

    Deterministic in the text and, on random tokens, almost never equal across a group."""
    return [len(set(completion_text(c))) / 10 for c in completions]


SEEN: list[tuple[list[str], list[float]]] = []


def distinct_chars_recorded(completions, **kwargs):
    """``distinct_chars``, recording each call's row ids and scores for the assertions."""
    scores = distinct_chars(completions, **kwargs)
    SEEN.append((list(kwargs["id"]), scores))
    return scores


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_vlm import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from dataset_factory import make_dataset

    return make_dataset(tmp_path_factory.mktemp("ds"), 6)


def _recipe(tiny, dataset, out) -> GRPORecipe:
    return GRPORecipe(
        output_dir=str(out),
        seed=0,
        use_cpu=True,
        max_steps=1,
        per_device_train_batch_size=2 * NUM_GENERATIONS,  # 2 prompts × NUM_GENERATIONS completions in one step
        global_batch_size=None,
        gradient_accumulation_steps=1,
        num_generations=NUM_GENERATIONS,
        generation_batch_size=2 * NUM_GENERATIONS,
        max_completion_length=12,
        learning_rate=1e-2,
        warmup_ratio=0.0,
        # AdamW's decoupled decay moves lora_A even with a zero gradient: off, so any change is the gradient's
        weight_decay=0.0,
        logging_steps=1,
        save_steps=10,
        model=ModelSpec(
            name_or_path=str(tiny), dtype="float32", attn_implementation="eager", min_pixels=None, max_pixels=None,
            gradient_checkpointing=False,
        ),
        lora=LoraSpec(r=4, alpha=8, dropout=0.0),
        data=[DataSource(path=str(dataset))],
    )


def test_grpo_step_with_a_varying_reward_moves_only_the_lora_adapter(tiny, dataset, tmp_path):
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    from openmedreason.train import grpo
    from openmedreason.train.sft import run_and_save

    SEEN.clear()
    out = tmp_path / "grpo"
    recipe = _recipe(tiny, dataset, out)
    # the test reward goes in the way a user adds one: an [[extra_rewards]] entry naming it by import path
    recipe = recipe.model_copy(update={"extra_rewards": [ExtraReward(function=f"{__name__}:distinct_chars_recorded", weight=1.0)]})
    prep = grpo.prepare_grpo(recipe)
    model = prep.trainer.model
    assert [f.__name__ for f in prep.trainer.reward_funcs] == ["accuracy_reward", "format_reward", "distinct_chars_recorded"]

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapter_before = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
    assert all(float(v.abs().sum()) == 0 for k, v in adapter_before.items() if "lora_B" in k)  # PEFT's zero init

    manifest = run_and_save(recipe, prep, "grpo")
    assert manifest["result"]["global_step"] == 1

    # the extra reward varied inside at least one group, so some advantages were non-zero
    assert len(SEEN) == 1
    ids, scores = SEEN[0]
    assert len(scores) == 2 * NUM_GENERATIONS and len(set(ids)) == 2
    groups: dict[str, list[float]] = defaultdict(list)
    for rid, s in zip(ids, scores):
        groups[rid].append(s)
    assert any(len(set(g)) > 1 for g in groups.values()), groups
    logged = [h for h in manifest["result"]["log_history"] if "rewards/distinct_chars_recorded/std" in h]
    assert logged and logged[0]["rewards/distinct_chars_recorded/std"] > 0
    assert logged[0]["rewards/accuracy_reward/mean"] == 0.0  # the random model never answers: the signal is ours
    assert logged[0]["frac_reward_zero_std"] < 1.0
    assert math.isfinite(logged[0]["loss"])

    # the saved adapter: same tensors as before training, moved by the step
    saved = load_file(out / "adapter_model.safetensors")
    assert set(saved) == set(adapter_before)
    assert all("language_model" in k for k in saved)
    moved_b = [k for k, v in saved.items() if "lora_B" in k and float(v.abs().sum()) > 0]
    # (lora_A cannot move on this first step: its gradient flows through lora_B, still 0)
    assert moved_b, "every lora_B is still at its zero init: the GRPO step did not update the adapter"

    # only LoRA parameters changed: base language-model weights, projector and vision tower untouched
    after = dict(model.named_parameters())
    frozen = [n for n in before if n not in trainable]
    assert any("vision_tower" in n for n in frozen) and any("multi_modal_projector" in n for n in frozen)
    changed = [n for n in frozen if not torch.equal(before[n], after[n].detach())]
    assert not changed, changed[:5]
    assert any(not torch.equal(before[n], after[n].detach()) for n in trainable)
