"""``omr export``: every format read back and checked against its target's conventions."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import re
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from dataset_factory import MEDICAL_IMAGES, make_dataset
from openmedreason.bench.protocol import strip_instruction, user_text
from openmedreason.build.export.core import export_dataset
from openmedreason.build.export.registry import FORMATS
from openmedreason.build.hf import count_rows, read_rows, split_files, write_split


def image_variant(kind: str, source: str = "hypersegmented_neutrophil.jpg") -> bytes:
    """Bytes of a real corpus image turned into ``kind``: cmyk, rgba, i16, palette, tiny, corrupt, empty."""
    data = (MEDICAL_IMAGES / source).read_bytes()
    im = Image.open(io.BytesIO(data))
    out = io.BytesIO()
    if kind == "cmyk":
        im.convert("CMYK").save(out, format="JPEG", quality=90)
    elif kind == "rgba":
        rgba = im.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(out, format="PNG")
    elif kind == "i16":
        import numpy as np

        arr = np.asarray(im.convert("L"), dtype=np.uint16) * 16  # 12-bit range, as in medical images
        Image.fromarray(arr).save(out, format="PNG")
    elif kind == "palette":
        im.convert("P").save(out, format="GIF")
    elif kind == "tiny":
        im.resize((20, 16)).save(out, format="PNG")
    elif kind == "corrupt":
        return data[: len(data) // 3]  # truncated JPEG: header intact, data cut
    elif kind == "empty":
        return b""
    else:
        raise ValueError(kind)
    return out.getvalue()


def plant(dataset: Path, changes: dict[tuple[str, int], dict]) -> Path:
    """Rewrite rows of a built dataset in place (``changes[(split, i)]`` = fields to override;
    image bytes are wrapped in the image struct). Used to plant what a real build would never emit."""
    for split in ("train", "test"):
        rows = list(read_rows(dataset, split))
        for (s, i), fields in changes.items():
            if s == split:
                for key, value in fields.items():
                    rows[i][key] = {"bytes": value, "path": "planted.bin"} if key == "image" else value
        write_split(dataset, split, rows, len(rows), rows_per_file=4, row_group_rows=2)
    return dataset


def source_rows(dataset: Path, split: str) -> list[dict]:
    return list(read_rows(dataset, split, columns=["id", "question", "stem", "options", "answer", "reasoning"]))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export of every format from a clean dataset built by the real build (12 instances)."""
    tmp = tmp_path_factory.mktemp("export")
    ds = make_dataset(tmp, 12)
    # several shards per split, so the export streams across files
    for split in ("train", "test"):
        rows = list(read_rows(ds, split))
        write_split(ds, split, rows, len(rows), rows_per_file=3, row_group_rows=2)
    assert len(split_files(ds, "train")) > 1
    out = tmp / "out"
    manifests = export_dataset(ds, "all", out)
    return ds, out, manifests


def _sizes(ds: Path) -> tuple[int, int]:
    return count_rows(ds, "train"), count_rows(ds, "test")


def _rgb(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.mode == "RGB"
    return im


def _load(path: Path, cache: Path, **kw):
    from datasets import load_dataset

    return load_dataset("parquet", cache_dir=str(cache), **kw)


def test_every_format_written_and_counted(exported):
    ds, out, manifests = exported
    n_train, n_test = _sizes(ds)
    assert n_train and n_test
    assert set(manifests) == set(FORMATS)
    for name, m in manifests.items():
        on_disk = json.loads((out / name / "export.json").read_text())
        assert on_disk == m
        assert m["totals"] == {"read": n_train + n_test, "written": n_train + n_test, "rejected": 0}
        assert m["counts"]["test"]["written"] == n_test
        assert m["source"]["dataset_hash"].startswith("sha256:")
        assert (out / name / "rejected.jsonl").read_text() == ""
        for f in m["files"]:
            assert (out / name / f).is_file(), (name, f)
    assert not list(out.glob(".*.partial"))


# ---------------------------------------------------------------------------------------------- TRL


def _trl_rows(out: Path, fmt: str, cache: Path, source: Path):
    ds = _load(out / fmt, cache, data_dir=str(out / fmt))
    assert set(ds) == {"train", "test"}
    assert (len(ds["train"]), len(ds["test"])) == _sizes(source)
    return ds


def _check_prompt(row, src):
    prompt = row["prompt"]
    assert [m["role"] for m in prompt] == ["system", "user"]
    user = prompt[-1]["content"]
    assert [b["type"] for b in user] == ["image", "text"]
    # the user turn is the evaluation protocol's: question, blank line, instruction
    assert user[1]["text"] == user_text(src["question"]) and row["answer"] == src["answer"] and row["options"] == src["options"]
    assert len(row["images"]) == 1 and isinstance(row["images"][0], Image.Image) and row["images"][0].mode == "RGB"
    lines = strip_instruction(user[1]["text"]).split("\n")
    assert [l[:2] for l in lines[-len(row["options"]) :]] == [f"{x}." for x in row["letters"]]
    assert row["answer"] in row["letters"] and len(row["letters"]) == len(row["options"])


def test_trl_sft_fields(exported, tmp_path):
    source, out, _ = exported
    ds = _trl_rows(out, "trl-sft", tmp_path, source)
    for split in ("train", "test"):
        src = {r["id"]: r for r in source_rows(source, split)}
        for row in ds[split]:
            _check_prompt(row, src[row["id"]])
            assert row["split"] == split
            (msg,) = row["completion"]
            assert msg["role"] == "assistant" and [b["type"] for b in msg["content"]] == ["text"]
            assert msg["content"][0]["text"] == src[row["id"]]["reasoning"]
            assert msg["content"][0]["text"].endswith(f"<answer>{row['answer']}</answer>")


def test_trl_grpo_fields_reach_reward_kwargs(exported, tmp_path):
    source, out, _ = exported
    ds = _trl_rows(out, "trl-grpo", tmp_path, source)
    assert "completion" not in ds["train"].column_names
    batch = ds["train"][:3]

    # TRL calls reward functions with every extra column as a keyword argument
    def reward(completions, answer, options, letters, **kw):
        return [1.0 if c[0]["content"].endswith(f"<answer>{a}</answer>") else 0.0 for c, a in zip(completions, answer)]

    extra = {k: v for k, v in batch.items() if k not in ("prompt", "images")}
    completions = [[{"role": "assistant", "content": f"<think>x</think>\n<answer>{a}</answer>"}] for a in batch["answer"]]
    assert reward(completions, **extra) == [1.0, 1.0, 1.0]
    src = {r["id"]: r for r in source_rows(source, "test")}
    for row in ds["test"]:
        _check_prompt(row, src[row["id"]])


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "<image>": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|>"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|end|>\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", chat_template=template)


@pytest.mark.parametrize("fmt", ["trl-sft", "trl-grpo"])
def test_trl_own_data_utils_accept_the_export(exported, tmp_path, fmt):
    pytest.importorskip("trl")
    from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages

    source, out, _ = exported
    ds = _trl_rows(out, fmt, tmp_path, source)
    tok = _tiny_tokenizer()
    for row in ds["train"]:
        assert is_conversational(row)
        filled = prepare_multimodal_messages(row["prompt"], row["images"])  # raises on a count mismatch
        blocks = [b for m in filled for b in m["content"] if b["type"] == "image"]
        assert len(blocks) == 1 and blocks[0]["image"] is row["images"][0]
        example = {"prompt": row["prompt"]} | ({"completion": row["completion"]} if fmt == "trl-sft" else {})
        rendered = apply_chat_template(example, tok)
        assert rendered["prompt"].count("<image>") == 1
        question = row["prompt"][-1]["content"][1]["text"]
        assert question in rendered["prompt"] and rendered["prompt"].endswith("<|assistant|>")
        if fmt == "trl-sft":
            assert f"<answer>{row['answer']}</answer>" in rendered["completion"]
        with pytest.raises(ValueError):
            prepare_multimodal_messages(row["prompt"], row["images"] * 2)


# ------------------------------------------------------------------------------------- LLaMA-Factory


def test_llamafactory_conventions(exported):
    source, out, _ = exported
    n_train, n_test = _sizes(source)
    root = out / "llamafactory"
    info = json.loads((root / "dataset_info.json").read_text())
    assert set(info) == {"openmedreason_train", "openmedreason_test"}
    for name, entry in info.items():
        assert entry["formatting"] == "sharegpt"
        assert entry["columns"] == {"messages": "messages", "images": "images"}
        assert entry["tags"] == {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
            "system_tag": "system",
        }
        records = json.loads((root / entry["file_name"]).read_text())
        assert isinstance(records, list) and len(records) == (n_train if name.endswith("train") else n_test)
        for rec in records:
            assert set(rec) == {"messages", "images"}
            assert isinstance(rec["images"], list) and len(rec["images"]) == 1
            roles = [m["role"] for m in rec["messages"]]
            assert roles == ["system", "user", "assistant"]
            assert all(isinstance(m["content"], str) for m in rec["messages"])
            text = "".join(m["content"] for m in rec["messages"])
            assert text.count("<image>") == len(rec["images"])
            assert rec["messages"][1]["content"].startswith("<image>")
            assert re.search(r"<answer>[A-E]</answer>$", rec["messages"][2]["content"])
            path = root / rec["images"][0]
            assert path.is_file() and not Path(rec["images"][0]).is_absolute()
            _rgb(path.read_bytes())


# --------------------------------------------------------------------------------------------- EasyR1


def test_easyr1_conventions(exported):
    ds, out, _ = exported
    t = pq.read_table(out / "easyr1" / "train.parquet").to_pylist()
    gold = {r["id"]: r for r in source_rows(ds, "train")}
    assert len(t) == len(gold)
    for row in t:
        # the loader splits the prompt on <image> and puts one image block per split point
        parts = row["problem"].split("<image>")
        assert len(parts) - 1 == len(row["images"]) == 1
        _rgb(row["images"][0]["bytes"])
        packed = json.loads(row["answer"])
        assert packed["letter"] in packed["options"] and packed["options"][packed["letter"]] == packed["answer_text"]
        assert packed["letter"] == gold[row["id"]]["answer"]
        assert list(packed["options"].values()) == gold[row["id"]]["options"]
        assert "<answer>" in row["problem"]  # the answer-format instruction


def test_easyr1_letter_mode(exported, tmp_path):
    from openmedreason.build.export.common import ExportOptions

    ds, _, _ = exported
    m = export_dataset(ds, "easyr1", tmp_path / "out", split="train", options=ExportOptions(easyr1_answer="letter"))
    assert m["easyr1"]["totals"]["rejected"] == 0 and m["easyr1"]["options"]["easyr1_answer"] == "letter"
    rows = pq.read_table(tmp_path / "out" / "easyr1" / "train.parquet").to_pylist()
    assert [r["answer"] for r in rows] == [r["answer"] for r in source_rows(ds, "train")]


# ----------------------------------------------------------------------------------------------- verl


def test_verl_conventions(exported, tmp_path):
    source, out, _ = exported
    rows = pq.read_table(out / "verl" / "test.parquet").to_pylist()
    src = source_rows(source, "test")
    assert len(rows) == len(src)
    for i, row in enumerate(rows):
        assert row["data_source"] == "openmedreason" and row["ability"]
        (msg,) = row["prompt"]
        assert msg["role"] == "user" and msg["content"].count("<image>") == len(row["images"]) == 1
        assert row["reward_model"] == {"style": "rule", "ground_truth": row["reward_model"]["ground_truth"]}
        info = row["extra_info"]
        assert row["reward_model"]["ground_truth"] == src[i]["answer"] and info["id"] == src[i]["id"]
        assert info["letters"] == "ABCDE"[: len(src[i]["options"])] and info["split"] == "test" and info["index"] == i
        assert info["options"][info["letters"].index(row["reward_model"]["ground_truth"])] == info["answer_text"]
        _rgb(row["images"][0]["bytes"])
    # through datasets (verl's loader) the images decode to PIL
    d = _load(out / "verl", tmp_path, data_files={"test": str(out / "verl" / "test.parquet")})["test"]
    assert isinstance(d[0]["images"][0], Image.Image)


# ------------------------------------------------------------------------------------------ lmms-eval


class _TaskLoader(__import__("yaml").SafeLoader):
    """A YAML loader that accepts lmms-eval's ``!function module.fn`` tag."""


_TaskLoader.add_constructor("!function", lambda loader, node: ("function", loader.construct_scalar(node)))


def test_lmms_eval_task_folder(exported, tmp_path):
    import yaml

    source, out, _ = exported
    root = out / "lmms-eval"
    cfg = yaml.load((root / "openmedreason_mcq.yaml").read_text(), Loader=_TaskLoader)
    assert cfg["task"] == "openmedreason_mcq"
    assert cfg["dataset_path"] == "parquet" and cfg["test_split"] == "test"
    assert cfg["output_type"] == "generate_until"
    for key in ("doc_to_visual", "doc_to_text", "doc_to_target", "process_results"):
        kind, ref = cfg[key]
        assert kind == "function" and ref == f"utils.{key}"
    assert {m["metric"] for m in cfg["metric_list"]} == {"acc_strict", "invalid_rate"}
    assert cfg["metadata"]["version"] == 1.0 and cfg["generation_kwargs"]["max_new_tokens"] > 0
    files = cfg["dataset_kwargs"]["data_files"]
    assert Path(files["test"]).is_file() and Path(files["test"]).is_absolute()

    # lmms-eval: datasets.load_dataset(path=dataset_path, **dataset_kwargs)[test_split]
    from datasets import load_dataset

    docs = load_dataset(cfg["dataset_path"], cache_dir=str(tmp_path), **cfg["dataset_kwargs"])[cfg["test_split"]]
    assert len(docs) == count_rows(source, "test")
    spec = importlib.util.spec_from_file_location("omr_lmms_utils", root / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    kwargs = cfg["lmms_eval_specific_kwargs"]["default"]
    for doc in docs:
        (img,) = utils.doc_to_visual(doc)
        assert img.mode == "RGB"
        text = utils.doc_to_text(doc, kwargs)
        assert doc["question"] in text and text.endswith(kwargs["post_prompt"])
        gold = utils.doc_to_target(doc)
        wrong = next(l for l in doc["letters"] if l != gold)
        assert utils.process_results(doc, [f"<think>…</think>\n<answer>{gold}</answer>"]) == {"acc_strict": 1.0, "invalid_rate": 0.0}
        assert utils.process_results(doc, [f"<answer>{wrong}</answer>"])["acc_strict"] == 0.0
        assert utils.process_results(doc, ["I cannot tell."])["invalid_rate"] == 1.0


def test_lmms_eval_fallback_extractor():
    spec = importlib.util.spec_from_file_location(
        "omr_lmms_utils_src", Path(__file__).resolve().parents[1] / "src/openmedreason/build/export/lmms_eval_utils.py"
    )
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    f = utils.fallback_extract
    assert f("<think>A or B</think>\n<answer>B</answer>", "ABCD") == ("B", "answer_tag")
    assert f("<answer>F</answer>", "ABCD") == (None, "invalid:answer_tag")
    assert f("so \\boxed{C}", "ABCD") == ("C", "boxed")
    assert f("The answer is (D).", "ABCD") == ("D", "answer_is")
    assert f(" A. ", "ABCD") == ("A", "bare_letter")
    assert f("no idea", "ABCD") == (None, "none")


# ----------------------------------------------------------------------------------------- VLMEvalKit


def test_vlmevalkit_tsv(exported):
    import pandas as pd

    source, out, manifests = exported
    root = out / "vlmevalkit"
    md5 = manifests["vlmevalkit"]["md5"]
    indices = []
    for split in ("train", "test"):
        src = {r["id"]: r for r in source_rows(source, split)}
        path = root / f"OpenMedReason_{split}.tsv"
        assert md5[path.name] == hashlib.md5(path.read_bytes()).hexdigest()
        df = pd.read_csv(path, sep="\t")
        assert len(df) == len(src)
        for col in ("index", "image", "question", "A", "B", "C", "D", "E", "answer", "category", "l2-category", "split"):
            assert col in df.columns
        for _, line in df.iterrows():
            indices.append(int(line["index"]))
            _rgb(base64.b64decode(line["image"]))
            # VLMEvalKit builds the options from the letter columns that are not NaN
            letters = [c for c in "ABCDE" if not pd.isna(line[c])]
            item = src[line["id"]]
            assert [line[c] for c in letters] == item["options"] and line["answer"] == item["answer"]
            assert line["question"] == item["stem"] and line["split"] == split
    assert sorted(indices) == list(range(sum(_sizes(source))))


# --------------------------------------------------------------------------------------- MedVLThinker


def test_medvlthinker_schema(exported, tmp_path):
    source, out, _ = exported
    ds = _load(out / "medvlthinker", tmp_path, data_dir=str(out / "medvlthinker"))
    seen = []
    for split in ("train", "test"):
        for row in ds[split]:
            options = json.loads(row["options"])  # their builder: json.loads(row["options"]).items()
            assert isinstance(options, dict) and row["answer_label"] in options
            assert row["answer"] == options[row["answer_label"]]
            assert not re.search(r"\n[A-E]\. ", row["question"])  # stem only, options separate
            assert isinstance(row["images"], list) and row["images"][0].mode == "RGB"
            assert row["dataset_name"] == "openmedreason"
            seen.append(row["dataset_index"])
    assert sorted(seen) == list(range(sum(_sizes(source))))


# ------------------------------------------------------------------------------------------ rejects


@pytest.fixture()
def fresh(exported, tmp_path):
    """A private copy of the clean dataset, for tests that plant bad rows in it."""
    import shutil

    ds, _, _ = exported
    return Path(shutil.copytree(ds, tmp_path / "dataset"))


def test_corrupt_image_rejected_and_nothing_else_lost(fresh, tmp_path):
    n_train, n_test = _sizes(fresh)
    train_ids = [r["id"] for r in source_rows(fresh, "train")]
    test_ids = [r["id"] for r in source_rows(fresh, "test")]
    plant(
        fresh,
        {
            ("train", 1): {"image": image_variant("corrupt")},
            ("train", 4): {"image": image_variant("empty")},
            ("test", 2): {"image": image_variant("tiny")},
        },
    )
    manifests = export_dataset(fresh, "all", tmp_path / "out")
    for name, m in manifests.items():
        assert m["counts"]["train"] == {"read": n_train, "written": n_train - 2, "rejected": {"export.bad_image": 2}}, name
        assert m["counts"]["test"] == {"read": n_test, "written": n_test - 1, "rejected": {"export.image_too_small": 1}}, name
        lines = [json.loads(l) for l in (tmp_path / "out" / name / "rejected.jsonl").read_text().splitlines()]
        assert {(r["id"], r["reason"]) for r in lines} == {
            (train_ids[1], "export.bad_image"),
            (train_ids[4], "export.bad_image"),
            (test_ids[2], "export.image_too_small"),
        }
        assert all(r["detail"] for r in lines)
        assert "truncated" in next(r["detail"] for r in lines if r["id"] == train_ids[1])
    kept = [r["extra_info"]["id"] for r in pq.read_table(tmp_path / "out" / "verl" / "train.parquet").to_pylist()]
    assert kept == [i for k, i in enumerate(train_ids) if k not in (1, 4)]  # order kept, nothing else lost
    lf = json.loads((tmp_path / "out" / "llamafactory" / "train.json").read_text())
    n_images = len(list((tmp_path / "out" / "llamafactory" / "images").iterdir()))
    assert len(lf) == n_train - 2 and n_images == n_train - 2 + n_test - 1


@pytest.mark.parametrize("kind", ["cmyk", "rgba", "i16", "palette"])
def test_odd_images_become_rgb(fresh, tmp_path, kind):
    plant(fresh, {("train", 0): {"image": image_variant(kind)}})
    m = export_dataset(fresh, "easyr1,vlmevalkit", tmp_path / "out", split="train", limit=2)
    assert m["easyr1"]["totals"]["rejected"] == 0 and m["easyr1"]["images_converted_to_rgb"] >= 1
    row = pq.read_table(tmp_path / "out" / "easyr1" / "train.parquet").to_pylist()[0]
    im = _rgb(row["images"][0]["bytes"])
    lo, hi = im.convert("L").getextrema()
    assert hi - lo > 50  # real content survived (a clipped 16-bit image would be flat white)
    if kind == "cmyk":
        assert row["images"][0]["path"].endswith(".jpg")


def test_row_level_rejects(fresh, tmp_path):
    src = source_rows(fresh, "train")
    assert len(src) >= 6
    gold2 = src[2]["answer"]
    wrong2 = next(l for l in "ABCDE"[: len(src[2]["options"])] if l != gold2)
    plant(
        fresh,
        {
            ("train", 0): {"answer": "ABCDE"[len(src[0]["options"])]},  # one past the item's letters
            ("train", 2): {"reasoning": f"<think>It fits option {wrong2}.</think>\n<answer>{wrong2}</answer>"},
            ("train", 3): {"id": src[1]["id"]},  # duplicate of an earlier id
            ("train", 4): {"options": ["a", "b", "c", "d", "e", "f"]},
            ("train", 5): {"reasoning": None},
        },
    )
    m = export_dataset(fresh, "all", tmp_path / "out", split="train")
    n = len(src)
    for name in ("trl-sft", "llamafactory"):  # formats that train on the trace
        assert m[name]["counts"]["train"]["rejected"] == {
            "export.bad_answer": 1,
            "export.trace_answer_mismatch": 1,
            "export.duplicate_id": 1,
            "export.bad_options": 1,
            "export.missing_field": 1,
        }, name
        assert m[name]["counts"]["train"]["written"] == n - 5
    for name in ("trl-grpo", "easyr1", "verl", "lmms-eval", "vlmevalkit", "medvlthinker"):
        assert m[name]["counts"]["train"]["rejected"] == {
            "export.bad_answer": 1,
            "export.duplicate_id": 1,
            "export.bad_options": 1,
        }, name
        assert m[name]["counts"]["train"]["written"] == n - 3
    sft = {json.loads(l)["id"]: json.loads(l)["reason"] for l in (tmp_path / "out" / "trl-sft" / "rejected.jsonl").open()}
    assert sft[src[2]["id"]] == "export.trace_answer_mismatch" and sft[src[5]["id"]] == "export.missing_field"


def test_shared_validator_catches_format_bugs(exported):
    from openmedreason.build.export.validate import BAD_ANSWER, BAD_SPLIT, MISSING_FIELD, PLACEHOLDER_MISMATCH, Reject, check_record
    from openmedreason.build.export.verl import VerlExporter

    ds, _, _ = exported
    from openmedreason.build.export.source import iter_rows
    from openmedreason.build.export.validate import normalize_row

    item = normalize_row(next(iter_rows(ds, "train")), "train", 0)
    good = {
        "data_source": "x",
        "prompt": [{"role": "user", "content": "<image>" + item.question}],
        "images": [{"bytes": item.image, "path": "a.jpg"}],
        "ability": "medical_vqa",
        "reward_model": {"style": "rule", "ground_truth": item.answer},
        "extra_info": {"split": "train", "index": 0, "id": item.id, "options": item.options, "letters": item.letters},
    }
    check_record(good, VerlExporter.spec, item)

    def broken(**changes):
        rec = json.loads(json.dumps({k: v for k, v in good.items() if k != "images"}))
        rec["images"] = good["images"]
        for path, value in changes.items():
            *head, last = path.split(".")
            target = rec
            for p in head:
                target = target[p]
            target[last] = value
        with pytest.raises(Reject) as err:
            check_record(rec, VerlExporter.spec, item)
        return err.value.code

    assert broken(prompt=[{"role": "user", "content": item.question}]) == PLACEHOLDER_MISMATCH
    assert broken(prompt=[{"role": "user", "content": "<image><image>" + item.question}]) == PLACEHOLDER_MISMATCH
    assert broken(**{"reward_model.ground_truth": "Z"}) == BAD_ANSWER
    assert broken(**{"extra_info.split": "validation"}) == BAD_SPLIT
    assert broken(**{"extra_info.index": "0"}) == MISSING_FIELD
    assert broken(ability="") == MISSING_FIELD


# --------------------------------------------------------------------------------- options and CLI


def test_files_mode_split_limit_and_replace(exported, tmp_path):
    from openmedreason.build.export.common import ExportOptions

    ds, _, _ = exported
    assert count_rows(ds, "test") > 2
    out = tmp_path / "out"
    (out / "trl-sft").mkdir(parents=True)
    (out / "trl-sft" / "stale.txt").write_text("old export")
    m = export_dataset(ds, "trl-sft,medvlthinker", out, split="test", limit=2, options=ExportOptions(images="files", rows_per_group=1))
    assert not (out / "trl-sft" / "stale.txt").exists()  # the format folder is replaced as a whole
    assert m["trl-sft"]["splits"] == ["test"] and m["trl-sft"]["totals"]["read"] == 2
    assert not (out / "trl-sft" / "train.parquet").exists()
    pf = pq.ParquetFile(out / "trl-sft" / "test.parquet")
    assert pf.metadata.num_rows == 2 and pf.metadata.num_row_groups == 2  # streamed in row groups
    for row in pf.read().to_pylist():
        (img,) = row["images"]
        assert img["bytes"] is None and (out / "trl-sft" / img["path"]).is_file()
        assert "|" not in img["path"]  # ids like "PMC1|F1|-|anatomy|1" become safe file names


def test_cli(exported, tmp_path):
    from typer.testing import CliRunner

    from openmedreason.cli import app

    ds, _, _ = exported
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(ds), "--format", "vlmevalkit,verl", "--out", str(tmp_path / "o"), "--split", "train"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "verl" / "train.parquet").is_file()
    assert "MD5" in res.output and "vlmevalkit" in res.output
    res = runner.invoke(app, ["export", str(ds), "--format", "nope", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown export format" in res.output
    res = runner.invoke(app, ["export", str(tmp_path), "--format", "verl", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2


def test_registry_has_docstrings():
    for name, cls in FORMATS.items():
        assert cls.name == name and cls.__doc__ and sys.modules[cls.__module__].__doc__


def test_trl_sft_trainer_trains_on_the_export(exported, tmp_path):
    """The strongest read-back: TRL's SFTTrainer prepares the export and takes two optimizer steps
    (tiny random LLaVA from tests/tiny_vlm.py, CPU, about 10 s)."""
    pytest.importorskip("trl")
    pytest.importorskip("torch")
    tiny_vlm = pytest.importorskip("tiny_vlm")
    from datasets import load_dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    _, out, _ = exported
    path = tiny_vlm.build_tiny_llava(tmp_path)
    ds = load_dataset("parquet", data_dir=str(out / "trl-sft"), cache_dir=str(tmp_path / "hf"))
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=2,
        per_device_train_batch_size=2,
        max_length=None,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
    )
    trainer = SFTTrainer(
        model=AutoModelForImageTextToText.from_pretrained(path),
        args=args,
        train_dataset=ds["train"],
        processing_class=AutoProcessor.from_pretrained(path),
    )
    result = trainer.train()
    assert result.global_step == 2 and result.training_loss > 0


def test_rows_without_stem_and_options_are_parsed_from_question(fresh, tmp_path):
    """Rows in the released layout (only ``question``) get stem and options from its ``A. …`` lines."""
    src = source_rows(fresh, "train")
    plant(fresh, {("train", 0): {"stem": None, "options": []}, ("train", 1): {"stem": None, "options": [], "question": "No options here"}})
    m = export_dataset(fresh, "verl,medvlthinker", tmp_path / "out", split="train", limit=2)
    assert m["verl"]["counts"]["train"] == {"read": 2, "written": 1, "rejected": {"export.bad_options": 1}}
    (row,) = pq.read_table(tmp_path / "out" / "medvlthinker" / "train.parquet").to_pylist()
    assert row["question"] == src[0]["stem"] and list(json.loads(row["options"]).values()) == src[0]["options"]


def test_released_layout_without_our_columns_exports(fresh, tmp_path):
    """The released neginb/OpenMedReason parquet (image, question, reasoning, answer and the rubric
    lists, no id) exports with positional ids ``{split}-{index:06d}``."""
    released = tmp_path / "released"
    (released / "data").mkdir(parents=True)
    keep = ["image", "question", "reasoning", "answer", "perception", "knowledge", "rationale"]
    for i, f in enumerate(split_files(fresh, "train")):
        pq.write_table(pq.read_table(f, columns=keep), released / "data" / f.name)
    n = count_rows(released, "train")
    m = export_dataset(released, "trl-sft,verl", tmp_path / "out", split="train")
    assert m["trl-sft"]["counts"]["train"] == {"read": n, "written": n, "rejected": {}}
    ids = pq.read_table(tmp_path / "out" / "trl-sft" / "train.parquet", columns=["id"]).column("id").to_pylist()
    assert ids == [f"train-{i:06d}" for i in range(n)]
