"""CLI commands of this package, registered on the main ``omr`` app by :func:`register`.

``omr train sft --config FILE``, ``omr train grpo --config FILE``, ``omr train merge``.
Import heavy modules inside the command functions so ``omr --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

console = Console(stderr=True)

train_app = typer.Typer(
    name="train",
    help="Fine-tune a vision-language model on the dataset: SFT then GRPO (TRL + PEFT LoRA). "
    "Needs the train extra: pip install torch, then pip install -e '.\\[train]' (docs/training.md).",
    no_args_is_help=True,
)

CONFIG_HELP = "Recipe TOML (see examples/train/ and docs/training.md); unknown keys are rejected."


def _need_stack() -> None:
    missing = []
    for mod in ("torch", "transformers", "trl", "peft"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        console.print(
            f"[red]missing {', '.join(missing)}[/red]: install torch first (CUDA wheel on GPU machines), "
            "then pip install -e '.\\[train]' (docs/training.md)"
        )
        raise typer.Exit(2)


def _overrides(output_dir: Optional[Path], max_steps: Optional[int], resume: Optional[str]) -> dict[str, Any]:
    ov: dict[str, Any] = {"output_dir": str(output_dir) if output_dir else None, "max_steps": max_steps}
    if resume is not None:
        ov["resume_from_checkpoint"] = None if resume.lower() in ("no", "none", "false") else resume
    return ov


def _load(config: Path, cls: Any, overrides: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from openmedreason.train.config import load_recipe

    try:
        return load_recipe(config, cls, overrides)
    except (ValueError, ValidationError, OSError) as exc:
        console.print(f"[red]invalid recipe {config}:[/red] {exc}")
        raise typer.Exit(2)


def _summary(manifest: dict[str, Any]) -> None:
    res, data = manifest["result"], manifest["data"]
    dropped = ", ".join(f"{k}: {v}" for k, v in data["dropped"].items()) or "none"
    console.print(
        f"{manifest['kind']}: {res['global_step']} steps, train loss {res['train_loss']:.4g}, "
        f"{data['rows']} rows (dropped: {dropped}), {manifest['wall_s']} s"
    )
    out = manifest["recipe"]["output_dir"]
    console.print(f"adapter + processor + train_manifest.json in {out}")


def _train(kind: str, config: Path, overrides: dict[str, Any]) -> None:
    """Load the ``kind`` recipe, run ``train_sft`` / ``train_grpo`` and print the summary."""
    from openmedreason.train.config import GRPORecipe, SFTRecipe

    recipe = _load(config, SFTRecipe if kind == "sft" else GRPORecipe, overrides)
    _need_stack()
    if kind == "sft":
        from openmedreason.train.sft import train_sft as run
    else:
        from openmedreason.train.grpo import train_grpo as run
    try:
        manifest = run(recipe)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    _summary(manifest)


OUT_HELP = "Override the recipe's output_dir."
STEPS_HELP = "Override max_steps (e.g. a quick check)."
RESUME_HELP = "'auto' (last checkpoint in output_dir), a checkpoint folder, or 'no'. Default: the recipe's."


@train_app.command("sft")
def sft_cmd(
    config: Path = typer.Option(..., "--config", "-c", exists=True, dir_okay=False, help=CONFIG_HELP),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help=OUT_HELP),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help=STEPS_HELP),
    resume: Optional[str] = typer.Option(None, "--resume", help=RESUME_HELP),
) -> None:
    """Supervised fine-tuning (LoRA) on prompt → trace pairs; loss on the trace only."""
    _train("sft", config, _overrides(output_dir, max_steps, resume))


@train_app.command("grpo")
def grpo_cmd(
    config: Path = typer.Option(..., "--config", "-c", exists=True, dir_okay=False, help=CONFIG_HELP),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", "-o", help=OUT_HELP),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help=STEPS_HELP),
    resume: Optional[str] = typer.Option(None, "--resume", help=RESUME_HELP),
) -> None:
    """GRPO (LoRA) with accuracy + format rewards, from the merged SFT model."""
    _train("grpo", config, _overrides(output_dir, max_steps, resume))


@train_app.command("merge")
def merge_cmd(
    adapter: Path = typer.Option(..., "--adapter", exists=True, file_okay=False, help="LoRA adapter folder (an SFT/GRPO output_dir)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the merged model and processor."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model (default: the one named in adapter_config.json)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, bfloat16, float16 or float32."),
) -> None:
    """Merge a LoRA adapter into its base model and save a standalone checkpoint."""
    _need_stack()
    from openmedreason.train.merge import merge_adapter

    if dtype not in ("auto", "bfloat16", "float16", "float32"):
        console.print(f"[red]unknown dtype {dtype!r}[/red]")
        raise typer.Exit(2)
    try:
        summary = merge_adapter(adapter, out, base=base, dtype=dtype)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    console.print(f"merged {summary['adapter']} into {summary['base']}: {summary['params']:,} parameters → {out}")


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
    app.add_typer(train_app, name="train")
