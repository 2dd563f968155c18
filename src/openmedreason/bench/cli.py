"""CLI commands of this package, registered on the main ``omr`` app by :func:`register`.

Import heavy modules inside the command functions so ``omr --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
    app.command("rubric")(rubric)


def rubric(
    dataset: Path = typer.Argument(..., help="Dataset folder (data/test-*.parquet), e.g. RUN/dataset."),
    engine: str = typer.Option(
        "auto", "--engine", help="llm (one LLM call per test item), offline (cut from the trace's labelled sections), "
        "or auto = llm when an endpoint is configured, else offline."
    ),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config: \\[llm.rubric] endpoint, \\[steps.rubric] caps (perception, knowledge, rationale, total)."),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="Stop cleanly once LLM spend for this rubric run would pass USD."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the LLM response cache (DATASET/rubric/_llm)."),
) -> None:
    """Fill the test split's perception / knowledge / rationale rubric columns in place.

    Writes DATASET/rubric/rejected.jsonl (every dropped unit with its reason) and
    DATASET/rubric/manifest.json, then refreshes the dataset card.
    """
    import json

    from openmedreason.bench.rubric import RubricCaps, fill_dataset
    from openmedreason.config import load_config

    if engine not in ("auto", "offline", "llm"):
        console.print(f"[red]--engine must be auto, offline or llm, not {engine!r}[/red]")
        raise typer.Exit(2)
    try:
        cfg = load_config(config, None)
        caps = RubricCaps(**cfg.step_config("rubric"))
    except (ValueError, OSError) as exc:
        console.print(f"[red]invalid configuration:[/red] {exc}")
        raise typer.Exit(2)
    if engine == "auto":
        engine = cfg.resolved_engine(step="rubric")
    eng = None
    if engine == "llm":
        from openmedreason.llm import LLMConfigError, engine_for_step

        try:
            eng = engine_for_step("rubric", cfg.llm, dataset / "rubric", no_cache=no_cache, max_cost_usd=max_cost)
        except LLMConfigError as exc:
            console.print(f"[red]LLM configuration:[/red] {exc}")
            raise typer.Exit(2)
        console.print(f"[bold]rubric engine: llm[/bold] ({eng.config.model})")
    else:
        console.print(
            "[bold yellow]rubric engine: offline[/bold yellow]: units cut from the traces' labelled sections by "
            "heuristics, no model. Not a substitute for LLM-distilled units."
        )
    from openmedreason.llm import BudgetExceeded

    try:
        manifest = fill_dataset(dataset, engine=eng, caps=caps)
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    except BudgetExceeded as exc:
        console.print(f"[yellow]stopped at the spend limit:[/yellow] {exc}. Nothing was rewritten; replies so far are cached, rerun to resume.")
        raise typer.Exit(3)
    finally:
        if eng is not None:
            eng.close()
    u = manifest["units"]
    console.print(
        f"{manifest['items']} test items: {u['total']} units (P {u.get('perception', 0)}, K {u.get('knowledge', 0)}, "
        f"R {u.get('rationale', 0)}); {sum(manifest['rejected'].values())} candidates rejected; "
        f"{len(manifest['items_without_units'])} items without any unit"
    )
    if manifest["rejected"]:
        console.print("rejected: " + ", ".join(f"{k}: {v}" for k, v in manifest["rejected"].items()))
    console.print(f"written: {dataset / 'rubric' / 'manifest.json'}, {dataset / 'rubric' / 'rejected.jsonl'}")
    print(json.dumps({k: manifest[k] for k in ("engine", "items", "units", "rejected")}, indent=None))
