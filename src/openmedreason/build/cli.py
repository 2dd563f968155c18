"""CLI commands of this package, registered on the main ``omr`` app by :func:`register`.

Import heavy modules inside the command functions so ``omr --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console(stderr=True)
out_console = Console()

decontam_app = typer.Typer(
    help="Decontamination registry: fingerprints of benchmark items that the build keeps out of the dataset.",
    no_args_is_help=True,
)

REGISTRY_HELP = "Registry directory (default: $OMR_DECONTAM_DIR or ~/.cache/openmedreason/decontam)."


def register(app: typer.Typer) -> None:
    """Add this package's commands to ``app``."""
    app.command("build")(build)
    app.add_typer(decontam_app, name="decontam")


def build(
    run: Path = typer.Argument(..., help="Run directory with verified instances (RUN/c2_verify), from omr run or omr demo."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config; its \\[build] table sets dedup, split and decontamination (docs/dataset.md). Default: the config recorded in RUN/manifest.json."),
    test_size: Optional[int] = typer.Option(None, "--test-size", min=0, help="Test split size in items (whole article groups move, so it is approximate)."),
    test_fraction: Optional[float] = typer.Option(None, "--test-fraction", min=0.0, max=1.0, help="Test split share of the kept items (used when --test-size is not given)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Split seed (default: the run config's seed)."),
    registry: Optional[Path] = typer.Option(None, "--registry", help=REGISTRY_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Dataset folder (default RUN/dataset; replaced atomically)."),
) -> None:
    """Build the Hugging Face dataset RUN/dataset/: dedup, decontaminate, split by article, Parquet + card."""
    from openmedreason.build.config import BuildConfig
    from openmedreason.build.dataset import _load_run_config, build_dataset
    from openmedreason.config import load_config

    if not run.is_dir():
        console.print(f"[red]no run directory {run}[/red]")
        raise typer.Exit(2)
    run_cfg = load_config(config) if config else _load_run_config(run)
    try:
        bc = BuildConfig.from_run(run_cfg, test_size=test_size, test_fraction=test_fraction, seed=seed)
        if registry is not None:
            bc = bc.model_copy(update={"decontam_registry": str(registry)})
        res = build_dataset(run, run_cfg, out=out, build_config=bc)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1)
    table = Table(title="Build funnel (in = kept + rejected)")
    for col in ("step", "in", "kept", "rejected", "reasons"):
        table.add_column(col, justify="right" if col in ("in", "kept", "rejected") else "left")
    for name, s in res.build["steps"].items():
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(s["rejected"].items())) or "-"
        table.add_row(name, str(s["in"]), str(s["kept"]), str(sum(s["rejected"].values())), reasons)
    out_console.print(table)
    out_console.print(f"train {res.train}, test {res.test} → {res.dataset_dir} (card: {res.card.name})")


@decontam_app.command("add")
def decontam_add(
    name: str = typer.Argument(..., help="Benchmark name in the registry (e.g. slake, vqa-rad, pathvqa, pmc-vqa, medxpertqa-mm, omr-bench)."),
    path: Path = typer.Argument(..., help="Local copy of the benchmark in its usual file layout, or our dataset folder / released parquet."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Loader format (default: NAME when it is a known benchmark, else detected)."),
    articles: Optional[bool] = typer.Option(None, "--articles/--no-articles", help="Record article ids (default: only for omr-bench / openmedreason)."),
    registry: Optional[Path] = typer.Option(None, "--registry", help=REGISTRY_HELP),
    num_perm: int = typer.Option(64, "--num-perm", min=16, max=512, help="MinHash permutations (match the build's num_perm)."),
) -> None:
    """Fingerprint a benchmark's items (image pHash, question MinHash, article ids) into the registry."""
    from openmedreason.build.config import default_registry_dir
    from openmedreason.build.decontam import Registry, iter_bench_items

    if not path.exists():
        console.print(f"[red]no such path {path}[/red]")
        raise typer.Exit(2)
    known = {"slake", "vqa-rad", "pathvqa", "pmc-vqa", "medxpertqa-mm", "omr-bench"}
    bench = fmt or (name.lower() if name.lower() in known else None)
    reg = Registry(registry or default_registry_dir())
    try:
        info = reg.add(name, iter_bench_items(path, bench), source=str(path.resolve()), num_perm=num_perm, articles=articles)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1)
    out_console.print(
        f"{name}: {info['items']} items ({info['with_image']} with image, {info['with_article']} with article ids) → {reg.path(name)}"
    )


@decontam_app.command("list")
def decontam_list(registry: Optional[Path] = typer.Option(None, "--registry", help=REGISTRY_HELP)) -> None:
    """List the registered benchmarks."""
    from openmedreason.build.config import default_registry_dir
    from openmedreason.build.decontam import Registry

    reg = Registry(registry or default_registry_dir())
    names = reg.names()
    if not names:
        out_console.print(f"no benchmark registered in {reg.root}")
        return
    table = Table(title=f"Decontamination registry {reg.root}")
    for col in ("name", "items", "with image", "with article", "source", "added"):
        table.add_column(col)
    for n in names:
        i = reg.info(n)
        table.add_row(n, str(i.get("items")), str(i.get("with_image")), str(i.get("with_article")), str(i.get("source")), str(i.get("added")))
    out_console.print(table)
