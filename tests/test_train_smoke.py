"""Training on CPU with a tiny random vision-language model (tests/tiny_vlm.py, no download):
recipes, data adapters and the length guard, 2 SFT steps and 1 GRPO step through the library
functions ``omr train`` calls, resume, the CLI, adapter reload and merge.

The tiny model's outputs are noise: these tests check plumbing (data → collator → LoRA → trainer
→ saved adapter), not learning. Recipe/config tests need no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path

import pytest

from openmedreason.bench.protocol import user_text
from openmedreason.train.config import DataSource, GRPORecipe, LoraSpec, ModelSpec, SFTRecipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "train"
RELEASE_FIXTURE = ROOT / "tests" / "fixtures" / "benchmarks" / "omr-release"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")


# ------------------------------------------------------------------------------------------
# recipes (no torch)


def test_published_defaults():
    s, g = SFTRecipe(), GRPORecipe()
    assert (s.lora.r, s.lora.alpha, s.lora.dropout) == (128, 256, 0.05)
    assert (s.learning_rate, s.lr_scheduler_type, s.warmup_ratio, s.num_train_epochs) == (5e-7, "cosine", 0.03, 2)
    assert (s.global_batch_size, s.per_device_train_batch_size, s.max_length) == (64, 4, 8192)
    assert (s.model.name_or_path, s.model.min_pixels, s.model.max_pixels) == ("Qwen/Qwen2.5-VL-7B-Instruct", 262_144, 786_432)
    assert (g.learning_rate, g.num_train_epochs, g.num_generations, g.beta) == (5e-5, 1, 16, 0.04)
    assert (g.max_completion_length, g.temperature, g.top_k, g.generation_batch_size) == (512, 0.9, 50, 64)
    assert (g.lora.r, g.lora.alpha, g.model.min_pixels, g.model.max_pixels) == (128, 256, 100_352, 200_704)
    assert (g.reward_weights.accuracy, g.reward_weights.format, g.reward_weights.length) == (1.0, 1.0, 0.0)


def test_global_batch_gives_grad_accum():
    s = SFTRecipe()
    assert [s.grad_accum(w) for w in (1, 2, 4, 8, 16)] == [16, 8, 4, 2, 1]
    with pytest.raises(ValueError, match="not a multiple"):
        s.grad_accum(3)
    with pytest.raises(ValueError, match="disagrees"):
        SFTRecipe(gradient_accumulation_steps=4).grad_accum(1)
    assert SFTRecipe(global_batch_size=None, gradient_accumulation_steps=3).grad_accum(2) == 3


def test_example_recipes_load_and_unknown_keys_fail(tmp_path):
    sft = load_recipe(EXAMPLES / "sft_qwen25vl_7b.toml", SFTRecipe)
    grpo = load_recipe(EXAMPLES / "grpo_qwen25vl_7b.toml", GRPORecipe)
    smoke = load_recipe(EXAMPLES / "smoke_cpu.toml", SFTRecipe)
    assert sft.model_dump(exclude={"data", "output_dir"}) == SFTRecipe().model_dump(exclude={"data", "output_dir", "seed"}) | {
        "seed": 42
    }
    assert grpo.model.name_or_path.endswith("merged") and grpo.num_generations == 16
    assert smoke.use_cpu and smoke.max_steps == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('learning_rat = 1e-5\n[[data]]\npath = "x"\n')
    with pytest.raises(ValueError, match="learning_rat"):
        load_recipe(bad, SFTRecipe)
    bad.write_text('[lora]\nrank = 8\n[[data]]\npath = "x"\n')
    with pytest.raises(ValueError, match="rank"):
        load_recipe(bad, SFTRecipe)
    with pytest.raises(ValueError, match="'grpo'"):
        load_recipe(EXAMPLES / "grpo_qwen25vl_7b.toml", SFTRecipe)
    bad.write_text('num_generations = 16\ngeneration_batch_size = 40\n[[data]]\npath = "x"\n')
    with pytest.raises(ValueError, match="multiple of num_generations"):
        load_recipe(bad, GRPORecipe)


def test_system_prompt_matches_the_trl_export():
    """Training on the dataset folder and on its TRL export must give the same prompts."""
    common = pytest.importorskip("openmedreason.build.export.common")
    assert SFTRecipe().system_prompt == common.SYSTEM_PROMPT


def test_parse_options():
    from openmedreason.train.data import parse_options

    assert parse_options("Which?\nA. x\nB. y z\nC. w") == ("Which?", ["x", "y z", "w"])
    assert parse_options("Line one\nline two\nA) x\nB) y") == ("Line one\nline two", ["x", "y"])
    assert parse_options("No options here") == ("No options here", [])
    assert parse_options("Q\nB. x\nC. y")[1] == []  # must start at A
    assert parse_options("Q\nA. only one")[1] == []


def test_multiplicities_are_seeded():
    import random

    from openmedreason.train.data import multiplicities

    assert multiplicities(4, 2.0, random.Random(0)) == [2, 2, 2, 2]
    m = multiplicities(10, 0.5, random.Random(0))
    assert sorted(m) == [0] * 5 + [1] * 5 and m == multiplicities(10, 0.5, random.Random(0))
    assert sum(multiplicities(10, 1.3, random.Random(1))) == 13


# ------------------------------------------------------------------------------------------
# the tiny model and data


@pytest.fixture(scope="module")
def stack():
    for mod in ("torch", "transformers", "trl", "peft"):
        pytest.importorskip(mod)


@pytest.fixture(scope="module")
def tiny(stack, tmp_path_factory):
    from tiny_vlm import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A real built dataset folder (contract D) over real bundled images: 8 train, 4 test rows."""
    from dataset_factory import make_dataset

    return make_dataset(tmp_path_factory.mktemp("ds"), 12)


def _model(tiny: Path, **kw) -> ModelSpec:
    return ModelSpec(
        name_or_path=str(tiny), dtype="float32", attn_implementation="eager", min_pixels=None, max_pixels=None,
        gradient_checkpointing=False, **kw,
    )


def _common(tiny: Path, data: list[DataSource], out: Path, **kw) -> dict:
    base = dict(
        output_dir=str(out),
        seed=0,
        use_cpu=True,
        max_steps=2,
        per_device_train_batch_size=2,
        global_batch_size=2,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        logging_steps=1,
        save_steps=1,
        save_total_limit=2,
        model=_model(tiny),
        lora=LoraSpec(r=8, alpha=16, dropout=0.0),
        data=data,
    )
    base.update(kw)
    return base


def _train_rows(dataset: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for f in sorted((dataset / "data").glob("train-*.parquet")) for r in pq.read_table(f).to_pylist()]


# ------------------------------------------------------------------------------------------
# data adapters and the length guard


def test_dataset_rows_become_trl_rows(stack, dataset, tmp_path):
    from openmedreason.train.data import build_dataset

    rows = {r["id"]: r for r in _train_rows(dataset)}
    recipe = SFTRecipe(output_dir=str(tmp_path), data=[DataSource(path=str(dataset))])
    ds, report = build_dataset(recipe, "sft")
    assert len(ds) == len(rows) == report.rows == 8
    for ex in ds:
        src = rows[ex["id"]]
        assert [m["role"] for m in ex["prompt"]] == ["system", "user"]
        assert ex["prompt"][1]["content"] == user_text(src["question"])  # the evaluation protocol's user turn
        assert ex["completion"] == [{"role": "assistant", "content": src["reasoning"]}]
        assert len(ex["images"]) == 1 and ex["images"][0].size[0] > 0
    files = report.as_dict()["sources"][0]["files"]
    assert files[0]["sha256"] == hashlib.sha256(Path(files[0]["name"]).read_bytes()).hexdigest()

    grpo, _ = build_dataset(GRPORecipe(output_dir=str(tmp_path), data=[DataSource(path=str(dataset))]), "grpo")
    for ex in grpo:
        src = rows[ex["id"]]
        assert (ex["answer"], ex["options"], ex["letters"]) == (src["answer"], src["options"], "ABCDE"[: len(src["options"])])
        assert "completion" not in ex


def test_released_layout_and_weighted_mixing(stack, dataset, tmp_path):
    """The released parquet layout (no options column: parsed from the question) mixed with our
    dataset by weight, deterministically for a seed."""
    from openmedreason.train.data import build_dataset

    data = [DataSource(path=str(dataset), weight=2.0), DataSource(path=str(RELEASE_FIXTURE), split="test", weight=2 / 3)]
    ds, report = build_dataset(GRPORecipe(output_dir=str(tmp_path), data=data, seed=3), "grpo")
    assert [s.rows_used for s in report.sources] == [16, 2]
    assert report.sources[1].format == "omr" and report.sources[1].rows_read == 3
    release = [ex for ex in ds if ex["options"] == ["Optic disc", "Fovea", "Macular scar", "Cotton-wool spot"]]
    assert len(release) <= 2 and all(ex["letters"] == "ABCD" for ex in ds.select(range(16, 18)))
    again, _ = build_dataset(GRPORecipe(output_dir=str(tmp_path), data=data, seed=3), "grpo")
    assert again["id"] == ds["id"]
    with pytest.raises(ValueError, match="no completions"):
        build_dataset(SFTRecipe(output_dir=str(tmp_path), data=[DataSource(path=str(dataset), format="grpo")]), "sft")


def test_llava_json_and_messages_jsonl_layouts(stack, tmp_path):
    """Other VQA data to mix in: LLaVA-style JSON (conversations from/value, image path relative
    to the file) and messages JSONL with content blocks; the gold letter comes from the answer tag
    or the answer column."""
    import shutil

    from openmedreason.train.data import build_dataset

    img = ROOT / "examples" / "corpus" / "medical" / "images" / "retina.jpg"
    folder = tmp_path / "llava"
    (folder / "imgs").mkdir(parents=True)
    shutil.copy(img, folder / "imgs" / "r.jpg")
    trace = "<think>The bright disc is where the vessels converge.</think><answer>A</answer>"
    conv = [{"from": "human", "value": "<image>\nWhat is it?\nA. Optic disc\nB. Fovea"}, {"from": "gpt", "value": trace}]
    (folder / "train.json").write_text(json.dumps([{"id": "l1", "image": "imgs/r.jpg", "conversations": conv}]))
    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which layer?\nA. x\nB. y\nC. z"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<think>t</think><answer>C</answer>"}]},
    ]
    (folder / "extra.jsonl").write_text(json.dumps({"id": "m1", "images": [str(img)], "messages": msgs, "answer": "C"}) + "\n")

    sft, report = build_dataset(SFTRecipe(output_dir=str(tmp_path), data=[DataSource(path=str(folder / "train.json"))]), "sft")
    assert report.sources[0].format == "messages"
    assert sft[0]["prompt"] == [{"role": "user", "content": "What is it?\nA. Optic disc\nB. Fovea"}]
    assert sft[0]["completion"][0]["content"] == trace and len(sft[0]["images"]) == 1
    grpo, _ = build_dataset(
        GRPORecipe(output_dir=str(tmp_path), data=[DataSource(path=str(folder / "train.json")), DataSource(path=str(folder / "extra.jsonl"))]),
        "grpo",
    )
    assert [(r["answer"], r["options"], r["letters"]) for r in grpo] == [
        ("A", ["Optic disc", "Fovea"], "AB"),
        ("C", ["x", "y", "z"], "ABC"),
    ]


def test_bad_rows_are_dropped_with_reasons(stack, dataset, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from openmedreason.reasons import REASONS
    from openmedreason.train.data import build_dataset

    rows = _train_rows(dataset)[:4]
    rows[0]["reasoning"] = "<think>x</think><answer>A or B</answer>"  # malformed trace
    rows[1]["image"] = {"bytes": b"not an image", "path": "x.png"}
    rows[2]["answer"] = "Z"
    table = pq.read_table(sorted((dataset / "data").glob("train-*.parquet"))[0])
    folder = tmp_path / "bad" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), folder / "train-00000-of-00001.parquet")
    ds, report = build_dataset(SFTRecipe(output_dir=str(tmp_path), data=[DataSource(path=str(folder.parent))]), "sft")
    assert len(ds) == 1
    assert report.as_dict()["dropped"] == {"train.bad_trace": 1, "train.bad_image": 1, "train.no_gold": 1}
    assert all(d["reason"] in REASONS for d in report.drops)


def test_length_guard_drops_never_truncates(tiny, dataset, tmp_path):
    from transformers import AutoProcessor

    from openmedreason.train.data import build_dataset, length_counter, to_example

    processor = AutoProcessor.from_pretrained(tiny)
    recipe = SFTRecipe(output_dir=str(tmp_path), data=[DataSource(path=str(dataset))])
    count = length_counter(processor, "sft")
    lengths = {}
    for i, r in enumerate(_train_rows(dataset)):
        ex = to_example(r, None, "omr", "sft", recipe, i)
        lengths[ex.id] = count(ex)
    # the count is what the TRL collator builds: prompt (with image tokens) + completion
    threshold = sorted(lengths.values())[len(lengths) // 2]
    ds, report = build_dataset(recipe, "sft", processor, max_tokens=threshold)
    kept = {i for i, n in lengths.items() if n <= threshold}
    assert set(ds["id"]) == kept and 0 < len(kept) < len(lengths)
    assert report.as_dict()["dropped"] == {"train.over_length": len(lengths) - len(kept)}
    with pytest.raises(ValueError, match="no usable training rows"):
        build_dataset(recipe, "sft", processor, max_tokens=5)
    with pytest.raises(ValueError, match="length_guard"):
        build_dataset(recipe.model_copy(update={"length_guard": "error"}), "sft", processor, max_tokens=threshold)


def test_export_gives_the_same_rows(stack, dataset, tmp_path):
    """Rows read from the TRL exports equal rows read from the dataset folder."""
    core = pytest.importorskip("openmedreason.build.export.core")
    import datasets

    from openmedreason.train.data import build_dataset

    core.export_dataset(dataset, "trl-sft,trl-grpo", tmp_path / "exp", split="train")
    for kind, cls, sub in (("sft", SFTRecipe, "trl-sft"), ("grpo", GRPORecipe, "trl-grpo")):
        a, _ = build_dataset(cls(output_dir=str(tmp_path / "a"), data=[DataSource(path=str(dataset))]), kind)
        b, rb = build_dataset(cls(output_dir=str(tmp_path / "b"), data=[DataSource(path=str(tmp_path / "exp" / sub))]), kind)
        assert rb.sources[0].format == ("prompt-completion" if kind == "sft" else "grpo")
        raw = datasets.List(datasets.Image(decode=False))
        rows_a, rows_b = a.cast_column("images", raw).to_list(), b.cast_column("images", raw).to_list()
        for ra, rb_ in zip(rows_a, rows_b, strict=True):
            assert [im["bytes"] for im in ra.pop("images")] == [im["bytes"] for im in rb_.pop("images")]
            assert ra == rb_


def test_pixel_bounds_on_a_qwen_processor():
    pytest.importorskip("transformers")
    from types import SimpleNamespace

    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from openmedreason.train.common import apply_pixel_bounds

    proc = SimpleNamespace(image_processor=Qwen2VLImageProcessorPil())
    img = Image.open(ROOT / "examples" / "corpus" / "medical" / "images" / "retina.jpg").convert("RGB")
    before = int(proc.image_processor(images=[img])["image_grid_thw"].prod())
    assert apply_pixel_bounds(proc, 100_352, 200_704)
    grid = proc.image_processor(images=[img])["image_grid_thw"]
    assert int(grid.prod()) * 14 * 14 <= 200_704 < before * 14 * 14


# ------------------------------------------------------------------------------------------
# SFT, resume, GRPO, CLI, merge


def test_sft_two_steps_completion_loss_and_reloadable_adapter(tiny, dataset, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from openmedreason.train.sft import prepare_sft, run_and_save

    out = tmp_path / "sft"
    recipe = SFTRecipe(**_common(tiny, [DataSource(path=str(dataset))], out))
    prep = prepare_sft(recipe)
    assert prep.trainer.args.max_length is None  # TRL never truncates

    # the collator's labels cover the trace only, and the image placeholders are expanded
    ds = prep.trainer.train_dataset
    batch = prep.trainer.data_collator([ds[0], ds[1]])
    tok = prep.processor.tokenizer
    for i in range(2):
        labels = batch["labels"][i]
        target = tok.decode(labels[labels != -100])
        assert target.startswith(ds[i]["completion"][0]["content"]), target[:80]
        first = int((labels != -100).nonzero()[0])
        assert tok.decode(batch["input_ids"][i][:first]).rstrip().endswith("assistant")
        # the tiny model's geometry: a 28 px image in 14 px patches = 4 image tokens (CLS dropped)
        assert int((batch["input_ids"][i] == tok.convert_tokens_to_ids("<image>")).sum()) == 4
    assert batch["pixel_values"].shape[0] == 2

    manifest = run_and_save(recipe, prep, "sft")
    assert manifest["result"]["global_step"] == 2
    assert (out / "checkpoint-2").is_dir() and (out / "adapter_config.json").exists()
    assert not (out / ".data_cache").exists()  # prepared rows are removed after saving
    on_disk = json.loads((out / "train_manifest.json").read_text())
    assert on_disk["data"]["rows"] == 8 and on_disk["versions"]["trl"] and on_disk["recipe"]["lora"]["r"] == 8
    assert json.loads((out / "train_manifest.json").read_text())["recipe_hash"] == recipe.recipe_hash()

    # LoRA only on the language model, and training moved it away from the zero init
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all("language_model" in k for k in weights)
    assert any(float(v.abs().sum()) > 0 for k, v in weights.items() if "lora_B" in k)

    # reload: base + adapter generates from an image with the saved processor
    processor = AutoProcessor.from_pretrained(out)
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny), out)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which option? A. x B. y"}]}]
    inp = processor(text=[processor.apply_chat_template(msgs, add_generation_prompt=True)], images=[ds[0]["images"][0]], return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**inp, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == inp["input_ids"].shape[1] + 4 or gen.shape[1] > inp["input_ids"].shape[1]

    # resume: 'auto' picks checkpoint-2 and continues to step 3
    from openmedreason.train.sft import train_sft

    again = train_sft(recipe.model_copy(update={"max_steps": 3}))
    assert again["result"]["resumed_from"].endswith("checkpoint-2") and again["result"]["global_step"] == 3


def test_grpo_one_step_rewards_see_gold_columns(tiny, dataset, tmp_path):
    from openmedreason.train.grpo import prepare_grpo
    from openmedreason.train.rewards import accuracy_score, completion_text, format_score
    from openmedreason.train.sft import run_and_save

    gold = {r["id"]: r for r in _train_rows(dataset)}
    recipe = GRPORecipe(
        **_common(
            tiny, [DataSource(path=str(dataset))], tmp_path / "grpo",
            max_steps=1, per_device_train_batch_size=4, global_batch_size=None, gradient_accumulation_steps=1,
        ),
        num_generations=2,
        generation_batch_size=4,
        max_completion_length=12,
    )
    prep = prepare_grpo(recipe)
    assert [f.__name__ for f in prep.trainer.reward_funcs] == ["accuracy_reward", "format_reward"]
    seen = []
    real = prep.trainer.reward_funcs[0]

    def recording(completions, **kw):
        out = real(completions, **kw)
        seen.append((completions, kw, out))
        return out

    recording.__name__ = "accuracy_reward"
    prep.trainer.reward_funcs[0] = recording
    manifest = run_and_save(recipe, prep, "grpo")
    assert manifest["result"]["global_step"] == 1 and (tmp_path / "grpo" / "adapter_model.safetensors").exists()
    assert seen
    completions, kw, scores = seen[0]
    assert len(completions) == 4 and len(set(kw["id"])) == 2  # 2 prompts × 2 generations
    for c, rid, ans, opts, lets, s in zip(completions, kw["id"], kw["answer"], kw["options"], kw["letters"], scores):
        assert (ans, list(opts), lets) == (gold[rid]["answer"], gold[rid]["options"], "ABCDE"[: len(gold[rid]["options"])])
        assert s == accuracy_score(completion_text(c), ans, lets, opts)
    rewards_logged = [h for h in manifest["result"]["log_history"] if "rewards/accuracy_reward/mean" in h]
    assert rewards_logged and "rewards/format_reward/mean" in rewards_logged[0]
    assert format_score(completion_text(completions[0])) in (0.0, 1.0)


def test_cli_sft_and_merge(tiny, dataset, tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText
    from typer.testing import CliRunner

    from openmedreason.cli import app

    text = (EXAMPLES / "smoke_cpu.toml").read_text()
    text = text.replace('"PATH/TO/tiny-llava"', json.dumps(str(tiny))).replace('"runs/demo/dataset"', json.dumps(str(dataset)))
    cfg = tmp_path / "smoke.toml"
    cfg.write_text(text)
    assert tomllib.loads(text)["model"]["name_or_path"] == str(tiny)
    runner = CliRunner()
    res = runner.invoke(app, ["train", "sft", "--config", str(cfg), "--output-dir", str(tmp_path / "cli")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "cli" / "train_manifest.json").read_text())["result"]["global_step"] == 2

    res = runner.invoke(app, ["train", "merge", "--adapter", str(tmp_path / "cli"), "--out", str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    base = AutoModelForImageTextToText.from_pretrained(tiny)
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    mp, bp = dict(merged.named_parameters()), dict(base.named_parameters())
    assert not torch.equal(mp[name], bp[name])  # the adapter was folded into the weights
    vis = "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight"
    assert torch.equal(mp[vis], bp[vis])  # the vision tower stayed frozen

    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("seed = 0", "sede = 0"))
    res = runner.invoke(app, ["train", "sft", "--config", str(bad)])
    assert res.exit_code == 2 and "sede" in res.output


@pytest.mark.slow
def test_full_finetune_overfits_two_rows(tiny, dataset, tmp_path):
    """Heavier (~30 s): full fine-tuning (lora.enabled = false) for 20 steps on two rows drives the
    completion loss below half its start: the loss is wired to the trace tokens."""
    from transformers import AutoModelForImageTextToText

    from openmedreason.train.sft import train_sft

    out = tmp_path / "fit"
    recipe = SFTRecipe(
        **_common(tiny, [DataSource(path=str(dataset), max_rows=2)], out, max_steps=20, learning_rate=3e-3,
                  lr_scheduler_type="constant", save_steps=100, lora=LoraSpec(enabled=False))
    )
    manifest = train_sft(recipe)
    hist = [h["loss"] for h in manifest["result"]["log_history"] if "loss" in h]
    assert hist[-1] < 0.5 * hist[0], hist
    assert manifest["model"]["lora"] is False and not (out / "adapter_config.json").exists()
    AutoModelForImageTextToText.from_pretrained(out)  # a full checkpoint


def test_sixteen_bit_image_is_stretched_not_clipped_to_white():
    """A 12-bit greyscale scan stored as 16-bit becomes a usable RGB image (a plain convert clips it white)."""
    import io

    import numpy as np
    from PIL import Image

    from openmedreason.train.data import _image_value

    arr = (np.linspace(0, 4095, 64 * 64).reshape(64, 64)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    cell, im = _image_value({"bytes": buf.getvalue(), "path": "scan.png"}, None)
    rgb = np.asarray(im)
    assert im.mode == "RGB" and (rgb == 255).mean() < 0.05 and rgb.std() > 30
    assert Image.open(io.BytesIO(cell["bytes"])).mode == "RGB"


def test_options_are_read_from_a_protocol_user_turn():
    """A messages row whose user turn ends with the protocol instruction keeps all six options."""
    from openmedreason.bench.protocol import user_text
    from openmedreason.train.data import to_example

    question = "Which finding?\n" + "\n".join(f"{l}. option {l.lower()}" for l in "ABCDEF")
    row = {
        "id": "m1",
        "messages": [
            {"role": "user", "content": "<image>" + user_text(question)},
            {"role": "assistant", "content": "<think>Reasoning about the image.</think>\n<answer>F</answer>"},
        ],
        "images": [],
    }
    ex = to_example(row, None, "messages", "grpo", GRPORecipe(output_dir="x", data=[]), 0)
    assert ex.answer == "F" and ex.options == [f"option {l}" for l in "abcdef"]
