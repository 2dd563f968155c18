"""``omr``: a thin command-line shell over the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from openmedreason import __version__

app = typer.Typer(
    name="omr",
    help="OpenMedReason: build medical VQA corpora with reasoning traces from open-access articles.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)
out_console = Console()


def _version(value: bool) -> None:
    if value:
        print(f"openmedreason {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


def print_funnel(result: dict[str, Any]) -> None:
    table = Table(title="Funnel (in = kept + rejected)")
    for col in ("step", "in", "kept", "rejected", "reasons"):
        table.add_column(col, justify="right" if col in ("in", "kept", "rejected") else "left")
    for name, s in result["steps"].items():
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(s["rejected"].items(), key=lambda kv: -kv[1]))
        table.add_row(name, str(s["in"]), str(s["kept"]), str(sum(s["rejected"].values())), reasons or "-")
    out_console.print(table)


def _overrides(
    seed: Optional[int],
    shard_size: Optional[int],
    allow_license: Optional[str],
    field_map: Optional[str],
    a1_preset: Optional[str] = None,
) -> dict[str, Any]:
    from openmedreason.ingest.license import parse_allow

    ov: dict[str, Any] = {"seed": seed, "shard_size": shard_size}
    if allow_license:
        ov["steps.ingest.allow_license"] = sorted(parse_allow(allow_license))
    ov["steps.ingest.field_map"] = field_map
    ov["steps.a1_pixels.preset"] = a1_preset
    return ov


def _run(
    sources: list[str],
    out: Path,
    config_path: Optional[Path],
    overrides: dict[str, Any],
    workers: int,
    upto: str | None,
    **run_kw: Any,
) -> dict[str, Any]:
    from openmedreason.config import load_config
    from openmedreason.ingest.sources import SourceError
    from openmedreason.run import pipeline
    from openmedreason.run.steps import RunIncomplete

    try:
        config = load_config(config_path, overrides)
    except (ValueError, OSError) as exc:
        console.print(f"[red]invalid configuration:[/red] {exc}")
        raise typer.Exit(2)
    if upto is None or upto not in ("ingest", "a1_pixels"):
        _announce_engine(config)
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("shards", total=None)
        try:
            result = pipeline.run(
                sources,
                out,
                config,
                workers=workers,
                upto=upto,
                **run_kw,
                on_plan=lambda n: progress.update(task, total=n),
                on_shard_done=lambda _i: progress.advance(task),
            )
        except (SourceError, ValueError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2)
        except RunIncomplete as exc:
            progress.stop()
            console.print(f"[yellow]run not complete:[/yellow] {exc}")
            console.print("finished work is kept; rerun the same command to resume.")
            partial = getattr(exc, "funnel", None)
            if partial:
                print_funnel(partial)
            raise typer.Exit(3)
    return result


def _announce_engine(config: Any) -> None:
    engine = config.resolved_engine()
    if engine == "offline":
        why = "forced by --offline / engine = \"offline\"" if config.engine == "offline" else (
            "no LLM endpoint configured (set OMR_LLM_BASE_URL and OMR_LLM_MODEL, or [llm.default] in the config)"
        )
        console.print(
            f"[bold yellow]engine: offline[/bold yellow] ({why}). Heuristic baseline from the articles' own text, "
            "no network, no key: not a substitute for a model."
        )
    else:
        console.print("[bold]engine: llm[/bold] (OpenAI-compatible endpoint; see docs/llm.md)")


SOURCES_HELP = "JATS files (.nxml/.xml), folders of them, PMC OA packages (.tar.gz), record files (.jsonl/.parquet)."
ALLOW_HELP = "Licence codes to admit besides the default policy (ND and unknown are denied), comma-separated, or 'all'."
FIELD_MAP_HELP = "For record files: preset (openpmc, medcorpus) or 'panel_field=column,…'. Default: detected per file."


@app.command()
def run(
    sources: list[str] = typer.Argument(..., help=SOURCES_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (created; rerun the same command to resume)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file (see docs/configuration.md)."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Worker processes (1 = in-process)."),
    seed: Optional[int] = typer.Option(None, help="Seed for every random choice."),
    shard_size: Optional[int] = typer.Option(None, help="Source units per shard."),
    allow_license: Optional[str] = typer.Option(None, help=ALLOW_HELP),
    field_map: Optional[str] = typer.Option(None, help=FIELD_MAP_HELP),
    a1_preset: Optional[str] = typer.Option(None, help="A1 pixel-check preset: default or paper."),
    offline: bool = typer.Option(False, "--offline", help="Use the offline engine even when an LLM endpoint is configured."),
    max_cost: Optional[float] = typer.Option(
        None, "--max-cost", help="Stop cleanly once LLM spend for this run directory would pass USD (resumable)."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the LLM response cache."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Run the free steps, then estimate LLM calls, tokens and cost without a paid call."
    ),
    build: bool = typer.Option(
        True, "--build/--no-build", help="After the pipeline, build RUN/dataset/ (dedup, decontamination, split, Parquet, card)."
    ),
) -> None:
    """Run the pipeline (ingest → A1 → A2 → B1 → B2 → C1 → C2) over SOURCES into a resumable run directory."""
    ov = _overrides(seed, shard_size, allow_license, field_map, a1_preset)
    if offline:
        ov["engine"] = "offline"
    if dry_run:
        from openmedreason.config import load_config
        from openmedreason.run.pipeline import dry_run as plan

        try:
            report = plan(sources, out, load_config(config, ov), workers=workers)
        except ValueError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2)
        print(json.dumps(report, indent=2, default=lambda o: o.__dict__ if hasattr(o, "__dict__") else str(o)))
        ests = [e for e in report["llm_steps"].values() if isinstance(e, dict)]
        if not ests:
            console.print("no LLM step in this pipeline (offline engine): 0 calls, 0 tokens, $0.")
            return
        calls = sum(e.get("calls", 0) for e in ests)
        tokens = sum(e.get("prompt_tokens", 0) + e.get("completion_tokens", 0) for e in ests)
        cost = sum(e.get("cost_usd", 0.0) for e in ests)
        console.print(f"estimate: {calls:,} LLM calls, {tokens:,} tokens, ${cost:,.2f}")
        if calls and not cost:
            console.print("no prices configured: set price_input_per_mtok / price_output_per_mtok in \\[llm.*] for a cost")
        return
    result = _run(sources, out, config, ov, workers, None, max_cost_usd=max_cost, no_cache=no_cache)
    print_funnel(result)
    if build:
        _build(out, config, ov)
    console.print(f"run directory: {out}  (funnel.json, manifest.json, <step>/kept-*.parquet, <step>/rejected-*.parquet, dataset/)")


def _build(out: Path, config_path: Optional[Path], overrides: dict[str, Any]) -> Any:
    """The dataset build after a complete pipeline run (``omr build`` does the same on its own)."""
    from openmedreason.build.dataset import build_dataset
    from openmedreason.config import load_config

    try:
        res = build_dataset(out, load_config(config_path, overrides))
    except (ValueError, OSError) as exc:
        console.print(f"[red]dataset build failed:[/red] {exc}")
        raise typer.Exit(2)
    console.print(f"dataset: {res.dataset_dir}  train {res.train}, test {res.test}, build rejects {res.rejected}")
    return res


@app.command()
def ingest(
    sources: list[str] = typer.Argument(..., help=SOURCES_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory: ingest/kept-*.parquet and ingest/rejected-*.parquet."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config file."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Worker processes."),
    shard_size: Optional[int] = typer.Option(None, help="Source units per shard."),
    allow_license: Optional[str] = typer.Option(None, help=ALLOW_HELP),
    field_map: Optional[str] = typer.Option(None, help=FIELD_MAP_HELP),
) -> None:
    """Parse articles, packages and record files into one Panel record per figure panel."""
    result = _run(sources, out, config, _overrides(None, shard_size, allow_license, field_map), workers, "ingest")
    print_funnel(result)


@app.command("check-image")
def check_image(
    paths: list[Path] = typer.Argument(..., help="Image files."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line: path, keep, reason, value, metrics."),
    preset: str = typer.Option("default", help="Threshold preset: default (modality-robust) or paper (published)."),
) -> None:
    """Run the A1 pixel checks on image files."""
    from openmedreason.quality.pixels import check_images

    table = Table("path", "keep", "reason", "value")
    failed = False
    for row in check_images([str(p) for p in paths], preset=preset):
        failed |= not row["keep"]
        if as_json:
            print(json.dumps(row, sort_keys=True, default=str))
        else:
            v = row.get("value")
            table.add_row(str(row["path"]), "yes" if row["keep"] else "no", row["reason"] or "-", "-" if v is None else f"{v:.4g}")
    if not as_json:
        out_console.print(table)


@app.command()
def funnel(run_dir: Path = typer.Argument(..., help="Run directory.")) -> None:
    """Print a run's funnel (in, kept, rejected by reason, per step)."""
    from openmedreason.run.pipeline import load_funnel

    try:
        print_funnel(load_funnel(run_dir))
    except FileNotFoundError:
        console.print(f"[red]no funnel.json in {run_dir}[/red]")
        raise typer.Exit(2)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="Run directory.")) -> None:
    """Write RUN/report.md and RUN/report/*.png (funnel, categories, modalities) and print the report."""
    from openmedreason.report import print_report

    if not run_dir.is_dir():
        console.print(f"[red]not a run directory: {run_dir}[/red]")
        raise typer.Exit(2)
    path = print_report(run_dir, out_console)
    console.print(f"report written to {path}")


@app.command()
def reasons(
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    markdown: bool = typer.Option(False, "--markdown", help="Print docs/reasons.md."),
) -> None:
    """List every reject-reason code with its meaning."""
    from openmedreason.reasons import REASONS, load_all, reasons_markdown

    load_all()
    if markdown:
        print(reasons_markdown(), end="")
        return
    if as_json:
        print(json.dumps(REASONS, indent=2, sort_keys=True))
        return
    table = Table("code", "meaning")
    for code in sorted(REASONS):
        table.add_row(code, REASONS[code])
    out_console.print(table)


cache_app = typer.Typer(help="Inspect or clear the LLM response cache of a run (RUN/_llm/cache.sqlite) or a shared cache file.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


def _cache_path(target: Path) -> Path:
    path = target / "_llm" / "cache.sqlite" if target.is_dir() else target
    if not path.exists():
        console.print(f"[red]no LLM cache at {path}[/red]")
        raise typer.Exit(2)
    return path


@cache_app.command("stats")
def cache_stats_cmd(
    target: Path = typer.Argument(..., help="Run directory or cache file."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Entries, calls saved, tokens and cost recorded, per step and model."""
    from openmedreason.llm.cache import cache_stats

    stats = cache_stats(_cache_path(target))
    print(json.dumps(stats, indent=2, sort_keys=True, default=str) if as_json else _pretty(stats))


def _pretty(obj: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(obj, dict):
        return "\n".join(
            f"{pad}{k}:\n{_pretty(v, indent + 1)}" if isinstance(v, (dict, list)) else f"{pad}{k}: {v}" for k, v in obj.items()
        )
    if isinstance(obj, list):
        return "\n".join(_pretty(v, indent) for v in obj)
    return f"{pad}{obj}"


@cache_app.command("clear")
def cache_clear_cmd(
    target: Path = typer.Argument(..., help="Run directory or cache file."),
    step: Optional[str] = typer.Option(None, help="Only this step's entries."),
) -> None:
    """Delete cached replies (all, or one step's): the next run pays for them again."""
    from openmedreason.llm.cache import cache_clear

    n = cache_clear(_cache_path(target), step=step)
    out_console.print(f"removed {n} cached entr{'y' if n == 1 else 'ies'}")


# Commands of the later stages live beside their code; each module registers its own.
from openmedreason.bench.cli import register as _register_bench  # noqa: E402
from openmedreason.build.cli import register as _register_build  # noqa: E402
from openmedreason.build.export.cli import register as _register_export  # noqa: E402
from openmedreason.evaluate.cli import register as _register_evaluate  # noqa: E402
from openmedreason.train.cli import register as _register_train  # noqa: E402

for _register in (_register_build, _register_export, _register_bench, _register_evaluate, _register_train):
    _register(app)


def default_corpus() -> Path | None:
    """The bundled demo corpus: ./examples/corpus, else the source tree's copy (editable install)."""
    for base in (Path.cwd(), *Path(__file__).resolve().parents):
        cand = base / "examples" / "corpus"
        if (cand / "articles").is_dir():
            return cand
    return None


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-run"), "--out", "-o", help="Run directory."),
    corpus: Optional[Path] = typer.Option(None, help="Corpus folder with articles/ and medical/ (default: bundled)."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Worker processes."),
) -> None:
    """The main job, offline: the bundled sample articles and medical images through the pipeline,
    the dataset build, the rubric of the test split, an evaluation of two built-in baselines and the reports."""
    corpus = corpus or default_corpus()
    if corpus is None or not corpus.is_dir():
        console.print("[red]bundled corpus not found; pass --corpus PATH (a folder with articles/ and medical/)[/red]")
        raise typer.Exit(2)
    sources = [str(corpus / "articles")]
    medical = corpus / "medical" / "metadata.jsonl"
    if medical.exists():
        sources.append(str(medical))
    console.print(f"offline demo on {corpus}: articles and medical images → verified MCQs with reasoning traces")
    # The sample corpus is tiny: hold out half of it so the benchmark part has items to score.
    overrides = {
        "shard_size": 4,
        "engine": "offline",
        "steps.ingest.field_map": "medcorpus" if medical.exists() else None,
        "build": {"test_fraction": 0.5},
    }
    result = _run(sources, out, None, overrides, workers, None)
    print_funnel(result)
    built = _build(out, None, overrides)

    from openmedreason.bench.rubric import fill_dataset
    from openmedreason.evaluate.report import compare
    from openmedreason.evaluate.run import evaluate
    from openmedreason.report import write_report

    rub = fill_dataset(built.dataset_dir, engine=None)
    console.print(f"rubric (offline, cut from the traces' sections): {_rubric_summary(rub)}")
    ev = out / "eval"
    console.print(
        "evaluation: two built-in baselines, not models — builtin:reference replays the gold traces (checks the scoring), "
        "builtin:blind answers from the text alone; judge: offline-lexical (presence only)"
    )
    for name in ("reference", "blind"):
        res = evaluate(built.dataset_dir, f"builtin:{name}", ev / name, judge="offline")
        console.print(f"  builtin:{name}: {_eval_summary(res)}  → {ev / name / 'report.md'}")
    compare(ev / "reference", ev / "blind", ev / "compare", judge="none")
    console.print(f"run directory: {out}; report: {write_report(out)}; dataset card: {built.dataset_dir / 'README.md'}")


def _rubric_summary(res: Any) -> str:
    if isinstance(res, dict):
        counts = res.get("units") or res.get("counts") or {}
        items = res.get("items")
        return f"{items} items, units {counts}" if items is not None else json.dumps(res, default=str)[:200]
    return str(res)[:200]


def _eval_summary(res: dict[str, Any]) -> str:
    acc = (res.get("accuracy") or {}).get("overall") or res.get("accuracy") or {}
    if isinstance(acc, dict) and "mean" in acc:
        return f"accuracy {100 * acc['mean']:.1f}% over {acc.get('n', '?')} items"
    return "done"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
