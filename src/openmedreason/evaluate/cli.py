"""CLI commands of this package, registered on the main ``omr`` app by :func:`register`:
``omr eval`` and ``omr compare``.

Import heavy modules inside the command functions so ``omr --help`` stays fast."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

console = Console(stderr=True)

MODEL_HELP = (
    "Model under test: a model id served by the OpenAI-compatible endpoint (--base-url, else \\[llm.eval] / "
    "\\[llm.default] / OMR_LLM_BASE_URL); hf:NAME_OR_PATH for a local transformers model (extra 'train'); "
    "builtin:reference (replays the reference traces: an oracle that checks scoring) or builtin:blind "
    "(text-only baseline). Neither built-in is a model."
)


def _load_config(path: Optional[Path]):  # noqa: ANN202 - RunConfig, imported lazily
    from openmedreason.config import load_config

    try:
        return load_config(path)
    except (ValueError, OSError) as exc:
        console.print(f"[red]invalid configuration:[/red] {exc}")
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    """Add ``eval`` and ``compare`` to ``app``."""

    @app.command("eval")
    def eval_cmd(
        bench: Path = typer.Option(..., "--bench", "-b", help="Benchmark: a dataset folder, parquet files (ours or neginb/OpenMedReason), or a standard VQA set in its file layout."),
        model: str = typer.Option(..., "--model", "-m", help=MODEL_HELP),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: items.jsonl, results.json, manifest.json, report.md, PNGs. Rerun the same command to resume."),
        base_url: Optional[str] = typer.Option(None, "--base-url", help="Endpoint of the model under test (overrides the config and OMR_LLM_BASE_URL). The key is read from the environment only."),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config: \\[llm.eval] for the model under test, \\[llm.judge] for the judge (docs/evaluation.md)."),
        benchmark: Optional[str] = typer.Option(None, "--benchmark", help="Force the benchmark format (omr-bench, slake, vqa-rad, pathvqa, pmc-vqa, medxpertqa-mm); default: detected."),
        split: str = typer.Option("test", "--split", help="Split to evaluate for dataset folders."),
        judge: str = typer.Option("auto", "--judge", help="PKR judge: auto (LLM judge when an endpoint is configured, else offline), offline (lexical presence only, correctness unavailable), llm, none."),
        judge_mode: str = typer.Option("per_axis", "--judge-mode", help="LLM judge calls: per_axis (3 per response, as published) or batched (1 per response)."),
        samples: int = typer.Option(1, "--samples", "-k", min=1, help="1 = greedy; k > 1 = k samples per item at T=1.2, top_p=0.95, stop </answer>."),
        seed: int = typer.Option(0, "--seed", help="Seed of the sampling requests and the bootstrap."),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate only the first N items."),
        judge_check: int = typer.Option(0, "--judge-check", min=0, help="Re-judge N responses: test-retest and per-axis vs batched agreement."),
        llm_extractor: bool = typer.Option(False, "--llm-extractor", help="Let an LLM read replies the rule extractor found no answer in (reported separately, never in the strict figure)."),
        max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Output token cap for the model under test (default: the config's max_tokens)."),
        max_cost: Optional[float] = typer.Option(None, "--max-cost", min=0, help="Stop before paid LLM calls (model + judge) pass this many USD; rerun with a higher limit to resume."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the LLM response cache."),
        batch_size: int = typer.Option(4, "--batch-size", min=1, help="hf: models only: items per generate() call."),
        device: Optional[str] = typer.Option(None, "--device", help="hf: models only: torch device (default: cuda when available, else cpu)."),
    ) -> None:
        """Evaluate a model on a benchmark: accuracy with clustered CIs, PKR trace scores, report."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from openmedreason.evaluate.run import EvalError, evaluate
        from openmedreason.llm import BudgetExceeded, LLMConfigError, LLMFatalError

        cfg = _load_config(config)
        try:
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as progress:
                task = progress.add_task("responses", total=None)
                results = evaluate(
                    bench, model, out, base_url=base_url, config=cfg, judge=judge, judge_mode=judge_mode, samples=samples,
                    seed=seed, limit=limit, judge_check=judge_check, llm_extractor=llm_extractor, benchmark=benchmark,
                    split=split, no_cache=no_cache, max_cost_usd=max_cost, max_tokens=max_tokens,
                    hf_options={"batch_size": batch_size, "device": device},
                    progress=lambda done, total: progress.update(task, completed=done, total=total),
                )
        except (EvalError, LLMConfigError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2)
        except LLMFatalError as exc:
            console.print(f"[red]endpoint error:[/red] {exc}")
            raise typer.Exit(2)
        except BudgetExceeded as exc:
            console.print(f"[yellow]stopped:[/yellow] {exc}")
            console.print("finished items are kept in items.jsonl; rerun the same command to resume.")
            raise typer.Exit(3)
        acc = results["accuracy"]["overall"]
        closed = results.get("closed") or {}

        def pct(x: Optional[float]) -> str:
            return "–" if x is None else f"{100 * x:.1f}"

        console.print(
            f"accuracy {pct(acc['mean'])}% [{pct(acc['lo'])}, {pct(acc['hi'])}] on {acc['n']} items; "
            f"invalid {pct(closed.get('invalid_rate'))}%, truncated {results.get('truncated', 0)}, "
            f"no response {results['errors']['n']}"
        )
        pkr = results.get("pkr") or {}
        ci = pkr.get("ci") or {}
        judge_name = ((results.get("scoring") or {}).get("pkr_judge") or {}).get("name")
        trace, ptrace = ci.get("trace") or {}, ci.get("presence_trace") or {}
        if trace.get("mean") is not None:
            console.print(f"PKR trace {trace['mean']:.1f} [{trace['lo']:.1f}, {trace['hi']:.1f}] ({judge_name})")
        elif ptrace.get("mean") is not None:
            console.print(f"PKR presence {ptrace['mean']:.1f} [{ptrace['lo']:.1f}, {ptrace['hi']:.1f}] ({judge_name}; correctness unavailable)")
        console.print(f"report: {out / 'report.md'}")

    @app.command("compare")
    def compare_cmd(
        results_a: Path = typer.Argument(..., help="First evaluation (its folder or results.json): A."),
        results_b: Path = typer.Argument(..., help="Second evaluation (its folder or results.json): B."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder for compare.json and compare.md (default: the current folder)."),
        judge: str = typer.Option("auto", "--judge", help="Pairwise preference judge: auto (when an endpoint is configured), llm, none."),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML config with \\[llm.judge]."),
        seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and of the pairwise order."),
        max_cost: Optional[float] = typer.Option(None, "--max-cost", min=0, help="Stop before paid judge calls pass this many USD."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the LLM response cache."),
    ) -> None:
        """Compare two evaluations on their common items: paired accuracy, PKR per axis, pairwise preference."""
        from openmedreason.evaluate.report import compare
        from openmedreason.evaluate.run import EvalError
        from openmedreason.llm import BudgetExceeded, LLMConfigError, LLMFatalError

        if judge not in ("auto", "llm", "none"):
            console.print("[red]--judge must be auto, llm or none[/red]")
            raise typer.Exit(2)
        cfg = _load_config(config)
        target = out or Path(".")
        try:
            res = compare(results_a, results_b, target, judge=judge, config=cfg, seed=seed, no_cache=no_cache, max_cost_usd=max_cost)
        except (EvalError, LLMConfigError, LLMFatalError) as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2)
        except BudgetExceeded as exc:
            console.print(f"[yellow]stopped:[/yellow] {exc}")
            raise typer.Exit(3)
        acc = res.get("accuracy")
        if acc:
            console.print(f"{res['n_common_items']} common items: A {100 * acc['a']:.1f}% vs B {100 * acc['b']:.1f}%")
        console.print(f"written: {target / 'compare.md'}, {target / 'compare.json'}")
