"""Merge a LoRA adapter into its base model (``omr train merge``).

GRPO starts from the merged SFT model, as in the release. The merged folder loads with
``AutoModelForImageTextToText`` / ``AutoProcessor`` (and vLLM) like any checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openmedreason.train import common


def adapter_base(adapter_dir: Path) -> str:
    """The base model recorded in the adapter's ``adapter_config.json``."""
    cfg = adapter_dir / "adapter_config.json"
    if not cfg.exists():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json (not a PEFT adapter)")
    base = json.loads(cfg.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{cfg} names no base model; pass --base")
    return base


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, *, base: str | None = None, dtype: str = "auto") -> dict[str, Any]:
    """Load ``base`` (default: the adapter's own base), apply the adapter, merge it into the
    weights, and save the merged model and the processor to ``out_dir``. Returns a summary that is
    also written to ``out_dir/merge_manifest.json``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    base = base or adapter_base(adapter_dir)
    kwargs: dict[str, Any] = {}
    if dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    model = AutoModelForImageTextToText.from_pretrained(base, **kwargs)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir))
    # the adapter folder holds the processor the model was trained with (pixel bounds included)
    src = adapter_dir if (adapter_dir / "processor_config.json").exists() or (adapter_dir / "preprocessor_config.json").exists() else base
    AutoProcessor.from_pretrained(str(src)).save_pretrained(str(out_dir))
    summary = {
        "merged_at": common.now(),
        "adapter": str(adapter_dir),
        "base": base,
        "processor_from": str(src),
        "params": sum(p.numel() for p in merged.parameters()),
        "versions": common.versions(),
    }
    (out_dir / "merge_manifest.json").write_text(json.dumps(summary, indent=1))
    return summary
