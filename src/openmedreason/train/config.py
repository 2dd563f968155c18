"""Training recipes (SFT, GRPO) as validated TOML files, with the published defaults.

The defaults reproduce the OpenMedReason release's scripts for Qwen2.5-VL-7B-Instruct
(METHOD §8; ``docs/training.md`` has the table and the deviations). A recipe file::

    output_dir = "runs/sft-qwen25vl-7b"
    seed = 42

    [model]
    name_or_path = "Qwen/Qwen2.5-VL-7B-Instruct"
    min_pixels = 262144
    max_pixels = 786432

    [lora]
    r = 128
    alpha = 256

    [[data]]
    path = "runs/demo/dataset"     # our dataset folder, a TRL export, parquet/jsonl, or hf:owner/name
    weight = 1.0
    split = "train"

Unknown keys are rejected (a typo never silently falls back to a default). Nothing here imports
torch; :mod:`openmedreason.train.sft` and :mod:`openmedreason.train.grpo` turn a recipe into TRL
arguments.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from openmedreason.bench.protocol import INSTRUCTIONS, system_prompt

#: System turn of every row built from our dataset, for training and for evaluating a trained
#: model: it asks for the dataset's own trace format (``<think>…</think>`` then
#: ``<answer>X</answer>``), the evaluation protocol's (openmedreason.bench.protocol). Same text as the TRL export's system prompt
#: (``openmedreason.build.export.common.SYSTEM_PROMPT``), so training on the dataset folder and on
#: its TRL export gives the same rows.
DEFAULT_SYSTEM_PROMPT = system_prompt()


class ModelSpec(BaseModel):
    """The base model and how it is loaded."""

    model_config = ConfigDict(extra="forbid")

    name_or_path: str = Field(
        default="Qwen/Qwen2.5-VL-7B-Instruct",
        description="Hub id or local folder loadable by AutoProcessor and AutoModelForImageTextToText "
        "(for GRPO: the merged SFT model, see `omr train merge`)",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="weights dtype; bfloat16 also turns on bf16 mixed precision on GPU"
    )
    attn_implementation: str | None = Field(
        default="sdpa",
        description="eager | sdpa | flash_attention_2 (the release disabled flash-attn-2); None = transformers' choice",
    )
    min_pixels: int | None = Field(
        default=262_144,
        ge=1,
        description="lower pixel bound for the image processor (Qwen2/2.5/3-VL `size.shortest_edge`); None = "
        "the processor's own. Release SFT: 256·32² = 262,144",
    )
    max_pixels: int | None = Field(
        default=786_432,
        ge=1,
        description="upper pixel bound (Qwen-VL `size.longest_edge`): bounds the image tokens per row. "
        "Release SFT: 768·32² = 786,432",
    )
    gradient_checkpointing: bool = Field(default=True, description="trade compute for activation memory")
    trust_remote_code: bool = Field(default=False, description="allow model code from the hub (off by default)")

    @model_validator(mode="after")
    def _bounds(self) -> "ModelSpec":
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) > max_pixels ({self.max_pixels})")
        return self


class LoraSpec(BaseModel):
    """PEFT LoRA on the language model; the vision tower and the projector stay frozen."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="false = full fine-tuning of the whole model (needs far more memory)")
    r: int = Field(default=128, ge=1, description="LoRA rank")
    alpha: int = Field(default=256, ge=1, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0, description="LoRA dropout")
    target_modules: str | list[str] = Field(
        default="language",
        description="'language' = every linear layer of the language model (not lm_head, not the vision "
        "tower or projector); 'all-linear' = PEFT's choice over the whole model; a list of module names; "
        "or any other string = a regex matched against full module names",
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        description="modules trained in full and saved with the adapter (e.g. ['merger'] for the Qwen2.5-VL "
        "projector, which the release trained); empty = everything but LoRA frozen",
    )


class DataSource(BaseModel):
    """One training data source; several are mixed by weight."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        description="our dataset folder (data/{split}-*.parquet), a TRL export folder, a .parquet/.jsonl file "
        "or folder of them, or 'hf:owner/name' for a Hugging Face dataset"
    )
    weight: float = Field(
        default=1.0,
        gt=0.0,
        description="size multiplier: each row is used floor(weight) times plus a seeded random share of "
        "the fraction (0.5 = a random half, 2 = every row twice)",
    )
    split: str = Field(default="train", description="split to read (file prefix in data/, or the HF split)")
    format: Literal["auto", "omr", "prompt-completion", "messages", "grpo"] = Field(
        default="auto",
        description="row layout: omr (image/question/reasoning/answer[/options]), prompt-completion, messages "
        "(+images), grpo (prompt + answer); auto = detected from the columns",
    )
    max_rows: int | None = Field(default=None, ge=1, description="use only the first N rows (before weighting)")
    name: str | None = Field(default=None, description="label in logs and the manifest (default: the path)")

    @property
    def label(self) -> str:
        return self.name or self.path


class Recipe(BaseModel):
    """Settings shared by SFT and GRPO."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(default="", description="'sft' or 'grpo'; checked against the command when given")
    output_dir: str = Field(default="runs/train", description="checkpoints, the adapter, the processor and train_manifest.json")
    seed: int = Field(default=42, description="seed for data mixing, shuffling, LoRA init and sampling")
    model: ModelSpec = Field(default_factory=ModelSpec)
    lora: LoraSpec = Field(default_factory=LoraSpec)
    data: list[DataSource] = Field(default_factory=list, description="[[data]] entries, mixed by weight")

    system_prompt: str | None = Field(
        default=DEFAULT_SYSTEM_PROMPT, description="system turn of rows built from our dataset; None = no system turn"
    )
    instruction: str = Field(default=INSTRUCTIONS["mcq"], description="text appended to each question of our dataset in the user turn (default: the evaluation protocol's)")

    learning_rate: float = Field(default=5e-7, gt=0.0)
    lr_scheduler_type: str = Field(default="cosine")
    warmup_ratio: float = Field(default=0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    num_train_epochs: float = Field(default=2.0, gt=0.0)
    max_steps: int = Field(default=-1, description="> 0 overrides num_train_epochs")
    per_device_train_batch_size: int = Field(default=4, ge=1)
    global_batch_size: int | None = Field(
        default=64,
        ge=1,
        description="per-device × grad-accum × world size; grad-accum is derived from it (must divide exactly)",
    )
    gradient_accumulation_steps: int | None = Field(
        default=None, ge=1, description="explicit grad-accum; when global_batch_size is also set they must agree"
    )
    logging_steps: int = Field(default=10, ge=1)
    save_steps: int = Field(default=300, ge=1, description="checkpoint every N optimizer steps (release: 300)")
    save_total_limit: int | None = Field(default=3, ge=1, description="checkpoints kept (oldest deleted)")
    resume_from_checkpoint: str | bool | None = Field(
        default="auto",
        description="'auto' = the last checkpoint-* in output_dir if any; a path; false/None = start fresh",
    )
    report_to: list[str] = Field(default_factory=list, description="e.g. ['wandb'] or ['tensorboard']; [] = none")
    use_cpu: bool = Field(default=False, description="force CPU (smoke tests)")
    deepspeed: str | None = Field(default=None, description="DeepSpeed JSON config path (the release used ZeRO-3)")
    dataloader_num_workers: int = Field(default=0, ge=0)
    length_guard: Literal["drop", "error", "off"] = Field(
        default="drop",
        description="rows longer than the length limit (image tokens counted): drop and record them (drop), "
        "stop (error), or skip the check (off). Rows are never truncated: cutting a sequence can cut image "
        "tokens and break the image/token match",
    )
    trainer_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="extra TRL SFTConfig/GRPOConfig fields, passed as is (TRL rejects unknown names)",
    )

    def grad_accum(self, world_size: int | None = None) -> int:
        """Gradient-accumulation steps from the global batch, the per-device batch and the world size."""
        world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
        per_step = self.per_device_train_batch_size * world
        if self.global_batch_size is None:
            return self.gradient_accumulation_steps or 1
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of per_device_train_batch_size "
                f"{self.per_device_train_batch_size} × world size {world}"
            )
        accum = self.global_batch_size // per_step
        if self.gradient_accumulation_steps is not None and self.gradient_accumulation_steps != accum:
            raise ValueError(
                f"gradient_accumulation_steps {self.gradient_accumulation_steps} disagrees with global_batch_size "
                f"{self.global_batch_size} (= {accum} at per-device {self.per_device_train_batch_size}, world {world})"
            )
        return accum

    def mixed_precision(self) -> dict[str, bool]:
        """bf16/fp16 flags for the trainer: from the model dtype, off on CPU."""
        if self.use_cpu:
            return {"bf16": False, "fp16": False}
        return {"bf16": self.model.dtype == "bfloat16", "fp16": self.model.dtype == "float16"}

    def recipe_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


class SFTRecipe(Recipe):
    """Supervised fine-tuning on prompt → trace completions (loss on the completion only).

    Defaults: the release's ``train/scripts/sft.sh`` for Qwen2.5-VL-7B-Instruct."""

    kind: Literal["sft"] = "sft"
    max_length: int | None = Field(
        default=8192,
        ge=1,
        description="longest row in tokens, image tokens included (release: 8192). Enforced by length_guard, "
        "never by truncation (TRL gets max_length=None)",
    )
    completion_only_loss: bool = Field(default=True, description="loss on the assistant completion only, not the prompt")


class RewardWeights(BaseModel):
    """Weights of the GRPO reward functions (the release: all equal)."""

    model_config = ConfigDict(extra="forbid")

    accuracy: float = Field(default=1.0, description="1 iff the single <answer> letter is the gold letter")
    format: float = Field(default=1.0, description="1 iff <think>…</think> then exactly one <answer>X</answer>")
    length: float = Field(default=0.0, description="soft over-length penalty in [-1, 0]; 0 = off (the release had none)")


class ExtraReward(BaseModel):
    """A user reward function added to the built-in ones: ``function = "package.module:name"``
    (importable; TRL signature ``(completions, **columns) -> list[float | None]``)."""

    model_config = ConfigDict(extra="forbid")

    function: str = Field(description="import path 'package.module:function'")
    weight: float = Field(default=1.0, description="its weight among the TRL reward_weights")

    @model_validator(mode="after")
    def _path(self) -> "ExtraReward":
        module, _, name = self.function.partition(":")
        if not module or not name:
            raise ValueError(f"extra reward {self.function!r}: expected 'package.module:function'")
        return self


class GRPORecipe(Recipe):
    """GRPO from the merged SFT model with accuracy + format rewards.

    Defaults: the release's ``train/scripts/grpo.sh`` and its unchanged ``params.py`` defaults."""

    kind: Literal["grpo"] = "grpo"
    learning_rate: float = Field(default=5e-5, gt=0.0)
    warmup_ratio: float = Field(default=0.05, ge=0.0, lt=1.0)
    num_train_epochs: float = Field(default=1.0, gt=0.0)
    per_device_train_batch_size: int = Field(default=1, ge=1, description="completions per device per step")
    global_batch_size: int | None = Field(default=None, ge=1)
    gradient_accumulation_steps: int | None = Field(default=1, ge=1)
    save_steps: int = Field(default=100, ge=1)
    model: ModelSpec = Field(default_factory=lambda: ModelSpec(min_pixels=100_352, max_pixels=200_704))

    num_generations: int = Field(default=16, ge=2, description="completions sampled per prompt (the group)")
    generation_batch_size: int | None = Field(
        default=64, ge=1, description="completions generated per generation round (multiple of num_generations)"
    )
    beta: float = Field(default=0.04, ge=0.0, description="KL coefficient against the reference (adapter-disabled) model")
    max_completion_length: int = Field(default=512, ge=1)
    max_prompt_length: int | None = Field(
        default=1024, ge=1, description="prompts longer than this (image tokens counted) are dropped, never truncated"
    )
    temperature: float = Field(default=0.9, gt=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=50, ge=0, description="0 = off")
    loss_type: str | None = Field(default=None, description="TRL loss_type (grpo, bnpo, dr_grpo, dapo…); None = TRL's default")
    scale_rewards: str | bool | None = Field(default=None, description="TRL scale_rewards; None = TRL's default")
    reward_weights: RewardWeights = Field(default_factory=RewardWeights)
    extra_rewards: list[ExtraReward] = Field(
        default_factory=list, description="[[extra_rewards]] tables: more reward functions by import path, with weights"
    )
    length_penalty_buffer: int = Field(
        default=128, ge=1, description="the length penalty ramps from 0 to -1 over the last N tokens before max_completion_length"
    )
    use_vllm: bool = Field(default=False, description="generate with vLLM (GPU; `pip install vllm`)")
    vllm_mode: Literal["colocate", "server"] = Field(default="colocate")
    vllm_gpu_memory_utilization: float = Field(default=0.3, gt=0.0, le=1.0)
    log_completions: bool = Field(default=False, description="print sampled completions with their rewards")

    @model_validator(mode="after")
    def _groups(self) -> "GRPORecipe":
        if self.generation_batch_size is not None and self.generation_batch_size % self.num_generations:
            raise ValueError(
                f"generation_batch_size {self.generation_batch_size} must be a multiple of num_generations {self.num_generations}"
            )
        return self


R = TypeVar("R", bound=Recipe)


def load_recipe(path: str | Path, cls: type[R], overrides: dict[str, Any] | None = None) -> R:
    """Read a TOML recipe into ``cls`` (unknown keys rejected). Relative paths stay relative to the
    working directory, like every other ``omr`` path. ``overrides`` are top-level keys set after reading."""
    path = Path(path)
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    expected = "sft" if cls is SFTRecipe else "grpo" if cls is GRPORecipe else None
    if expected and data.get("kind", expected) != expected:
        raise ValueError(f"{path}: kind = {data['kind']!r}, but this command trains {expected!r}")
    recipe = cls.model_validate(data)
    if not recipe.data:
        raise ValueError(f"{path}: no [[data]] entries")
    return recipe
