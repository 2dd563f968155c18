"""CLI commands of this package, registered on the main ``omr`` app by :func:`register`.

Import heavy modules inside the command functions so ``omr --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

FORMAT_NAMES = "trl-sft, trl-grpo, llamafactory, easyr1, verl, lmms-eval, vlmevalkit, medvlthinker"


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""

    @app.command("export")
    def export(
        dataset: Path = typer.Argument(..., help="Built dataset folder (RUN/dataset, with data/{train,test}-*.parquet)."),
        format: str = typer.Option(..., "--format", "-f", help=f"Target format, a comma-separated list, or 'all': {FORMAT_NAMES}."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder; each format is written to OUT/<format>/ (replaced)."),
        split: str = typer.Option("all", "--split", help="train, test or all (the splits the dataset has)."),
        images: str = typer.Option(
            "embed",
            "--images",
            help="embed: image bytes inside the files; files: images/<id>.<ext> next to them, referenced by relative path "
            "(LLaMA-Factory always uses files, VLMEvalKit always embeds).",
        ),
        limit: Optional[int] = typer.Option(None, "--limit", min=0, help="Read at most N rows per split."),
        easyr1_answer: str = typer.Option(
            "json", "--easyr1-answer", help="EasyR1 'answer' column: json (letter + options packed) or letter."
        ),
        task_name: str = typer.Option("openmedreason_mcq", "--task-name", help="lmms-eval task name (and YAML file name)."),
        no_system: bool = typer.Option(False, "--no-system", help="Leave out the system prompt (TRL, LLaMA-Factory)."),
        min_image_side: int = typer.Option(28, "--min-image-side", min=1, help="Reject images whose shorter side is below N px."),
    ) -> None:
        """Export a built dataset to training/evaluation frameworks, validating every row on write."""
        import json

        from rich.console import Console
        from rich.table import Table

        from openmedreason.build.export.common import ExportOptions
        from openmedreason.build.export.core import export_dataset

        console = Console(stderr=True)
        opts = ExportOptions(
            images=images,
            easyr1_answer=easyr1_answer,
            task_name=task_name,
            min_image_side=min_image_side,
        )
        if no_system:
            opts.system_prompt = None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from openmedreason.build.export.core import resolve_splits
        from openmedreason.build.hf import count_rows

        try:
            total = sum(
                min(count_rows(dataset, s), limit) if limit is not None else count_rows(dataset, s)
                for s in resolve_splits(dataset, split)
            )
            with Progress(
                TextColumn("[bold]rows"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
            ) as progress:
                task = progress.add_task("rows", total=total)
                manifests = export_dataset(
                    dataset, format, out, split=split, options=opts, limit=limit, on_row=lambda: progress.advance(task)
                )
        except (ValueError, FileNotFoundError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2)
        table = Table(title=f"Export of {dataset}")
        for col in ("format", "read", "written", "rejected", "reasons"):
            table.add_column(col, justify="right" if col in ("read", "written", "rejected") else "left")
        for name, m in manifests.items():
            reasons: dict[str, int] = {}
            for c in m["counts"].values():
                for code, n in c["rejected"].items():
                    reasons[code] = reasons.get(code, 0) + n
            t = m["totals"]
            table.add_row(name, str(t["read"]), str(t["written"]), str(t["rejected"]), ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "-")
        Console().print(table)
        for name, m in manifests.items():
            if m.get("md5"):
                console.print(f"{name} MD5: " + json.dumps(m["md5"]))
        console.print(f"written under {out}/<format>/ (export.json, rejected.jsonl in each); see docs/export.md")
