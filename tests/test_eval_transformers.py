"""The local transformers runner on a tiny randomly initialised VLM built from config (no download).

Its outputs are random tokens: the test checks the plumbing (chat template with the image,
batched greedy and sampled generation, truncation bookkeeping, manifest), never quality.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from eval_bench_fixture import make_bench  # noqa: E402
from tiny_vlm import build_tiny_llava  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_llava(root), make_bench(root, 3, rubric=False)


def test_transformers_runner_smoke(tiny, tmp_path):
    from openmedreason.evaluate.run import evaluate

    model_dir, bench = tiny
    res = evaluate(bench, f"hf:{model_dir}", tmp_path / "ev", judge="none", env={}, max_tokens=6,
                   hf_options={"batch_size": 2, "device": "cpu"})
    lines = [json.loads(x) for x in (tmp_path / "ev" / "items.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(isinstance(ln["response"], str) for ln in lines)
    assert all(ln["finish_reason"] in ("stop", "length") for ln in lines)
    assert res["truncated"] == sum(ln["finish_reason"] == "length" for ln in lines)
    assert res["accuracy"]["overall"]["n"] == 3
    man = json.loads((tmp_path / "ev" / "manifest.json").read_text())
    assert man["model"]["kind"] == "transformers" and man["model"]["model_class"] == "LlavaForConditionalGeneration"
    assert len(man["model"]["chat_template_sha256"]) == 16 and "transformers" in man["model"]


def test_transformers_runner_sampling(tiny):
    from openmedreason.bench.loaders import load_items
    from openmedreason.evaluate.runners import Job, Protocol, TransformersRunner

    model_dir, bench = tiny
    items = load_items(bench, limit=2)
    runner = TransformersRunner(str(model_dir), device="cpu", batch_size=4, max_new_tokens=5)
    jobs = [Job(it, s) for it in items for s in range(2)]
    gens = runner.generate(jobs, Protocol(samples=2, seed=1))
    assert len(gens) == 4 and all(g.model == str(model_dir) for g in gens)
    again = runner.generate(jobs, Protocol(samples=2, seed=1))
    assert [g.text for g in gens] == [g.text for g in again]  # seeded
