"""Pieces shared by SFT and GRPO: model and processor loading, LoRA targets, resume, manifest.

Imports torch/transformers/peft inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openmedreason.train.config import LoraSpec, ModelSpec, Recipe

log = logging.getLogger(__name__)

MANIFEST = "train_manifest.json"
DROPPED = "dropped.jsonl"
#: prepared training rows (Arrow), rebuilt on each run and removed after saving
DATA_CACHE = ".data_cache"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def apply_pixel_bounds(processor: Any, min_pixels: int | None, max_pixels: int | None) -> bool:
    """Set the image processor's pixel bounds (Qwen2/2.5/3-VL: ``size = {shortest_edge: min
    pixels, longest_edge: max pixels}``). Returns False, changing nothing, when the processor has
    no such bounds (e.g. a fixed-resolution CLIP processor)."""
    ip = getattr(processor, "image_processor", None)
    if ip is None or (min_pixels is None and max_pixels is None):
        return False
    kwargs_type = getattr(ip, "valid_kwargs", None)
    smart_resize = "min_pixels" in getattr(kwargs_type, "__annotations__", {}) or hasattr(ip, "min_pixels")
    size = getattr(ip, "size", None)
    if not smart_resize or size is None:
        return False
    new = dict(size.items()) if hasattr(size, "items") else dict(vars(size))
    if min_pixels is not None:
        new["shortest_edge"] = min_pixels
    if max_pixels is not None:
        new["longest_edge"] = max_pixels
    ip.size = new if isinstance(size, dict) else type(size)(**new)
    for attr, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and hasattr(ip, attr):
            setattr(ip, attr, value)
    return True


def load_processor(spec: ModelSpec) -> tuple[Any, bool]:
    """``AutoProcessor`` for the model with the recipe's pixel bounds; returns ``(processor, bounds_applied)``."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(spec.name_or_path, trust_remote_code=spec.trust_remote_code)
    applied = apply_pixel_bounds(processor, spec.min_pixels, spec.max_pixels)
    if not applied and (spec.min_pixels or spec.max_pixels):
        log.warning("%s: the image processor has no pixel bounds; min/max_pixels ignored", spec.name_or_path)
    tok = getattr(processor, "tokenizer", processor)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return processor, applied


def load_model(spec: ModelSpec, use_cpu: bool = False) -> Any:
    """``AutoModelForImageTextToText`` with the recipe's dtype and attention implementation."""
    import torch
    from transformers import AutoModelForImageTextToText

    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if spec.dtype != "auto":
        kwargs["dtype"] = getattr(torch, spec.dtype)
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    return AutoModelForImageTextToText.from_pretrained(spec.name_or_path, **kwargs)


def language_model_prefix(model: Any) -> str:
    """Qualified name of the language-model submodule (``model.language_model`` in transformers 5
    VLMs), found by identity with ``get_decoder()`` or by name."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    names = [n for n, m in model.named_modules() if n and m is decoder]
    if names:
        return names[0]
    names = [n for n, _ in model.named_modules() if n.split(".")[-1] in ("language_model", "text_model")]
    if names:
        return min(names, key=len)
    raise ValueError(f"cannot find the language model inside {type(model).__name__}; set lora.target_modules explicitly")


def lora_targets(model: Any, spec: LoraSpec) -> str | list[str]:
    """PEFT ``target_modules`` for ``spec.target_modules`` (see :class:`LoraSpec`)."""
    import torch

    tm = spec.target_modules
    if isinstance(tm, list) or tm == "all-linear":
        return tm
    if tm != "language":
        return tm  # a regex over full module names
    prefix = language_model_prefix(model)
    suffixes = sorted(
        {
            n.rsplit(".", 1)[-1]
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.startswith(prefix + ".")
        }
    )
    if not suffixes:
        raise ValueError(f"no linear layers under {prefix}")
    return rf"{re.escape(prefix)}\.(?:.*\.)?(?:{'|'.join(map(re.escape, suffixes))})"


def lora_config(model: Any, spec: LoraSpec) -> Any:
    """A PEFT ``LoraConfig`` for the model (causal LM task), or None when LoRA is disabled."""
    if not spec.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=lora_targets(model, spec),
        modules_to_save=spec.modules_to_save or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def resolve_resume(recipe: Recipe) -> str | None:
    """The checkpoint to resume from: ``auto`` = the last ``checkpoint-*`` in ``output_dir`` if any."""
    value = recipe.resume_from_checkpoint
    if value in (None, False, "", "false", "none"):
        return None
    if value in (True, "auto"):
        from transformers.trainer_utils import get_last_checkpoint

        out = Path(recipe.output_dir)
        return get_last_checkpoint(str(out)) if out.is_dir() else None
    if not Path(str(value)).is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint: {value} is not a folder")
    return str(value)


def versions() -> dict[str, str | None]:
    """Versions of the training stack and the platform, for the manifest."""
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("openmedreason", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "vllm", "deepspeed"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cuda": torch.cuda.is_available(), "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    return info


def param_counts(model: Any) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


def is_main_process() -> bool:
    """True on the global rank 0 (or without a launcher): only it writes the shared files."""
    return int(os.environ.get("RANK", "0")) == 0


def data_cache_dir(out: Path) -> Path:
    """Where this process keeps its prepared rows: one folder per rank, so processes launched
    together never delete each other's files."""
    return out / DATA_CACHE / f"rank-{os.environ.get('RANK', '0')}"


def write_dropped(out: Path, drops: list[dict[str, Any]]) -> None:
    if not is_main_process():
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / DROPPED, "w", encoding="utf-8") as fh:
        for d in drops:
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")


def write_manifest(out: Path, manifest: dict[str, Any]) -> Path:
    """Write ``train_manifest.json`` atomically (main process only)."""
    out.mkdir(parents=True, exist_ok=True)
    if not is_main_process():
        return out / MANIFEST
    path = out / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)
    return path


def trainer_common_args(recipe: Recipe) -> dict[str, Any]:
    """TrainingArguments fields shared by SFTConfig and GRPOConfig, from the recipe."""
    return {
        "output_dir": recipe.output_dir,
        "seed": recipe.seed,
        "learning_rate": recipe.learning_rate,
        "lr_scheduler_type": recipe.lr_scheduler_type,
        "warmup_steps": recipe.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        "weight_decay": recipe.weight_decay,
        "num_train_epochs": recipe.num_train_epochs,
        "max_steps": recipe.max_steps,
        "per_device_train_batch_size": recipe.per_device_train_batch_size,
        "gradient_accumulation_steps": recipe.grad_accum(),
        "logging_steps": recipe.logging_steps,
        "save_strategy": "steps",
        "save_steps": recipe.save_steps,
        "save_total_limit": recipe.save_total_limit,
        "report_to": recipe.report_to or "none",
        "use_cpu": recipe.use_cpu,
        "deepspeed": recipe.deepspeed,
        "dataloader_num_workers": recipe.dataloader_num_workers,
        **recipe.mixed_precision(),
        # only when on: the flag is a deprecated alias in transformers 5 (still read by TRL)
        **({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
           if recipe.model.gradient_checkpointing else {}),
    }


def save_outputs(trainer: Any, processor: Any, out: Path) -> None:
    """Save the adapter (or full model) and the processor to ``out``, and remove the prepared
    data cache (rebuilt on every run)."""
    import shutil

    trainer.save_model(str(out))  # collective under DeepSpeed; the trainer writes on the main process
    if is_main_process():
        processor.save_pretrained(str(out))
    shutil.rmtree(data_cache_dir(out), ignore_errors=True)
    try:
        (out / DATA_CACHE).rmdir()  # gone once every rank removed its folder
    except OSError:
        pass


@dataclass
class Prepared:
    """Everything :func:`~openmedreason.train.sft.prepare_sft` /
    :func:`~openmedreason.train.grpo.prepare_grpo` builds before training: the trainer (model,
    LoRA, data, collator), the processor and the data report."""

    trainer: Any
    processor: Any
    report: Any
    pixel_bounds_applied: bool
    peft_config: Any
    started: str
    t0: float


@dataclass
class Inputs:
    """What both trainers are built from (see :func:`prepare_inputs`)."""

    processor: Any
    pixel_bounds_applied: bool
    dataset: Any
    report: Any
    model: Any
    peft_config: Any
    started: str
    t0: float

    def prepared(self, trainer: Any) -> Prepared:
        return Prepared(trainer, self.processor, self.report, self.pixel_bounds_applied, self.peft_config, self.started, self.t0)


def prepare_inputs(recipe: Recipe, kind: str, max_tokens: int | None) -> Inputs:
    """Load the processor, build and length-check the ``kind`` data (rows over ``max_tokens``
    dropped), write ``dropped.jsonl``, then load the model and its LoRA config."""
    from openmedreason.train.data import build_dataset

    started, t0 = now(), time.time()
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    processor, bounds = load_processor(recipe.model)
    dataset, report = build_dataset(recipe, kind, processor, max_tokens=max_tokens, cache_dir=data_cache_dir(out))
    write_dropped(out, report.drops)
    log.info("%s data: %d rows, dropped %s", kind.upper(), len(dataset), report.as_dict()["dropped"])
    model = load_model(recipe.model, recipe.use_cpu)
    return Inputs(processor, bounds, dataset, report, model, lora_config(model, recipe.lora), started, t0)


def run_and_save(recipe: Any, prep: Prepared, kind: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train a prepared trainer (resuming per the recipe), save outputs, write the manifest."""
    trainer, args = prep.trainer, prep.trainer.args
    resume = resolve_resume(recipe)
    result = trainer.train(resume_from_checkpoint=resume)
    out = Path(recipe.output_dir)
    save_outputs(trainer, prep.processor, out)
    manifest = {
        "kind": kind,
        "started_at": prep.started,
        "finished_at": now(),
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
            "params": param_counts(trainer.model),
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
        "versions": versions(),
        "device": device_info(),
    }
    write_manifest(out, manifest)
    return manifest


def _jsonable(v: Any) -> Any:
    if isinstance(v, (set, frozenset)):
        return sorted(v)
    return v
