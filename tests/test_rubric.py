"""PKR rubric units: deterministic validation, offline extraction, LLM extraction, ``omr rubric``.

LLM replies come from the loopback fake server (tests/llm_fake_server.py): they are scripted
rubric replies written in this file, not model output. The offline traces are built by the real
offline C1 composer from the bundled corpus questions (see test_c1_trace.py).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from llm_fake_server import FakeOpenAIServer, Reply, fast_config
from openmedreason.bench import rubric as R
from openmedreason.bench.rubric import RubricCaps, extract_units, quote_in_trace, validate_units
from openmedreason.llm import LLMCache, LLMEngine
from openmedreason.reasons import REASONS

TRACE = """<think>
The task is to give the most likely diagnosis. The CT image has to be examined for the findings that bear on this.

Perception: The contrast-enhanced CT shows a 3 cm hypodense mass in the left hepatic lobe with peripheral nodular enhancement. The bile ducts are not dilated and the liver outline is smooth.

Clinical context: A 45-year-old woman has intermittent right upper quadrant pain.

Interpretation and medical knowledge: Hepatic haemangioma is the most common benign liver tumour and typically shows peripheral nodular discontinuous enhancement with centripetal fill-in. The lack of duct dilatation in this patient argues against an obstructing cholangiocarcinoma at the hilum. These findings are consistent with a haemangioma rather than a hypervascular metastasis, which would show rim enhancement.

Answer justification: The peripheral nodular enhancement pattern and the undilated ducts point to hepatic haemangioma; therefore the answer is B. Hepatic haemangioma.
</think>
<answer>B</answer>"""

QUESTION = "What is the most likely diagnosis?\nA. Hepatic metastasis\nB. Hepatic haemangioma\nC. Cholangiocarcinoma\nD. Hepatic cyst"


def unit(topic="peripheral nodular enhancement of the mass", claim=None, quote=None, importance="core", **kw):
    return {
        "topic": topic,
        "claim": claim or "The hepatic mass shows peripheral nodular enhancement on the contrast-enhanced CT image.",
        "source_quote": quote or "a 3 cm hypodense mass in the left hepatic lobe with peripheral nodular enhancement",
        "importance": importance,
        **kw,
    }


# --------------------------------------------------------------------------- validation
def test_reason_codes_registered():
    for code in ("rubric.quote_not_found", "rubric.quote_length", "rubric.topic_length", "rubric.claim_length",
                 "rubric.duplicate", "rubric.over_cap", "rubric.missing_field", "rubric.bad_importance", "rubric.no_sections"):
        assert code in REASONS


@pytest.mark.parametrize("quote", [
    "a 3 cm HYPODENSE mass in the left hepatic lobe",          # case
    "a 3 cm hypodense   mass\n in the left  hepatic lobe",      # whitespace and newlines
    "Hepatic haemangioma is the most common benign liver tumour",
])
def test_quote_variants_found(quote):
    assert quote_in_trace(quote, TRACE)


def test_curly_quotes_and_dashes_normalised_both_ways():
    trace = 'Perception: The so-called "target sign" – a ring of low attenuation – is the patient\'s key finding.'
    assert quote_in_trace("the so‐called “target sign” — a ring of low attenuation", trace)  # curly quotes, em dash, U+2010
    assert quote_in_trace("is the patient’s key finding", trace)
    curly = "Perception: The so‐called “target sign” — a ring — is the patient’s key finding."
    assert quote_in_trace('the so-called "target sign" - a ring - is the patient\'s key finding', curly)


def test_paraphrase_and_ellipsis_fail():
    assert not quote_in_trace("a hypodense 3 cm mass in the left lobe of the liver", TRACE)  # paraphrase
    assert not quote_in_trace("a 3 cm hypodense mass ... peripheral nodular enhancement", TRACE)
    assert not quote_in_trace("", TRACE)


def test_every_reason_planted_and_caught():
    raw = {
        "perception": [
            unit(),                                                                    # kept
            unit(quote="a three centimetre low density lesion in the liver"),          # paraphrase
            unit(quote="hypodense mass"),                                              # 2 words
            unit(quote=" ".join(["mass"] * 31)),                                       # 31 words
            unit(topic=" ".join(["liver"] * 13)),                                      # 13-word topic
            unit(claim="The mass enhances peripherally."),                             # 4-word claim
            unit(claim=" ".join(["word"] * 26) + "."),                                 # 26-word claim
            unit(claim="the hepatic mass shows peripheral nodular enhancement on the contrast-enhanced CT image"),  # duplicate
            unit(importance="critical"),
            {"topic": "bile ducts", "claim": "", "source_quote": "The bile ducts are not dilated"},
        ],
    }
    kept, rejected = validate_units(TRACE, raw, RubricCaps())
    got = [r["reason"] for r in rejected]
    assert got == ["rubric.quote_not_found", "rubric.quote_length", "rubric.quote_length", "rubric.topic_length",
                   "rubric.claim_length", "rubric.claim_length", "rubric.duplicate", "rubric.bad_importance",
                   "rubric.missing_field"]
    assert [u.unit_id for u in kept["perception"]] == ["P1"]
    assert all(r["axis"] == "perception" and r["detail"] for r in rejected)
    assert rejected[0]["unit"]["source_quote"].startswith("a three centimetre")


def test_questions_synthesised_when_missing_or_malformed():
    raw = {
        "perception": [unit(presence_question="", correctness_question="no question mark here")],
        "rationale": [unit(topic="haemangioma versus metastasis", claim="The peripheral nodular enhancement favours haemangioma over a hypervascular metastasis.",
                           quote="consistent with a haemangioma rather than a hypervascular metastasis",
                           presence_question="Does the response weigh haemangioma against a hypervascular metastasis at all?")],
    }
    kept, rejected = validate_units(TRACE, raw)
    assert not rejected
    p = kept["perception"][0]
    assert p.presence_question == "Does the response discuss peripheral nodular enhancement of the mass?"
    assert p.correctness_question == ("Does the response correctly state that the hepatic mass shows peripheral nodular "
                                      "enhancement on the contrast-enhanced CT image?")
    r = kept["rationale"][0]
    assert r.presence_question == "Does the response weigh haemangioma against a hypervascular metastasis at all?"  # supplied, kept
    assert r.correctness_question.startswith("Does the response correctly conclude that the peripheral")


def test_caps_keep_core_first_then_trace_order_and_total():
    quotes = ["The contrast-enhanced CT shows a 3 cm", "hypodense mass in the left hepatic lobe", "with peripheral nodular enhancement",
              "The bile ducts are not dilated", "the liver outline is smooth", "Hepatic haemangioma is the most common"]
    raw = {"perception": [unit(topic=f"finding {i}", claim=f"Finding number {i} is visible on this contrast-enhanced CT image of the liver.",
                               quote=q, importance="supporting" if i < 3 else "core") for i, q in enumerate(quotes)]}
    kept, rejected = validate_units(TRACE, raw, RubricCaps(perception=4))
    # the three core units (3, 4, 5) go first, then the earliest supporting one (0); ids follow trace order
    assert [u.topic for u in kept["perception"]] == ["finding 0", "finding 3", "finding 4", "finding 5"]
    assert [u.unit_id for u in kept["perception"]] == ["P1", "P2", "P3", "P4"]
    assert [(r["reason"], r["unit"]["topic"]) for r in rejected] == [("rubric.over_cap", "finding 1"), ("rubric.over_cap", "finding 2")]

    # a total cap of 3 across axes interleaves axes by rank: core first, each axis's best unit first
    raw["knowledge"] = [unit(topic="haemangioma enhancement pattern", claim="Hepatic haemangioma typically shows peripheral nodular discontinuous enhancement with fill-in.",
                             quote="typically shows peripheral nodular discontinuous enhancement", importance="core")]
    kept, rejected = validate_units(TRACE, raw, RubricCaps(perception=4, total=3))
    assert [u.topic for u in kept["perception"]] == ["finding 3", "finding 4"]
    assert [u.unit_id for u in kept["knowledge"]] == ["K1"]
    assert sum(len(v) for v in kept.values()) == 3
    assert [r["unit"]["topic"] for r in rejected if r["detail"] == "total cap 3"] == ["finding 5", "finding 0"]


# --------------------------------------------------------------------------- offline
def test_offline_extraction_from_sections():
    res = extract_units(TRACE, question=QUESTION, answer="B", item_id="x1")
    assert res.provenance["engine"] == "offline"
    p, k, r = res.units["perception"], res.units["knowledge"], res.units["rationale"]
    assert [u.unit_id for u in p] == ["P1", "P2"] and p[0].importance == "core"
    assert p[0].topic == "hypodense mass in the hepatic lobe"
    assert len(k) == 1 and k[0].topic == "Hepatic haemangioma"          # case-independent sentence
    assert [u.unit_id for u in r] == ["R1", "R2", "R3"]                  # case-linked sentences + justification
    assert r[-1].claim == "The peripheral nodular enhancement pattern and the undilated ducts point to hepatic haemangioma."
    for u in (*p, *k, *r):
        assert quote_in_trace(u.source_quote, TRACE)
        assert "answer is" not in u.claim.lower() and "woman" not in u.claim  # no letter framing; clinical context skipped


def test_offline_on_real_offline_traces():
    from openmedreason.offline.c1 import compose_trace
    from test_c1_trace import medcorpus_questions

    n_items = n_units = 0
    for q in medcorpus_questions():
        t = compose_trace(q)
        if t is None:
            continue
        res = extract_units(t.reasoning, question=q.question_text(), answer=q.answer)
        n_items += 1
        n_units += res.n_units
        for axis, units in res.units.items():
            for u in units:
                assert quote_in_trace(u.source_quote, t.reasoning)
                assert 8 <= len(u.claim.split()) <= 25 and 1 <= len(u.topic.split()) <= 12
        assert res.units["rationale"], q.id  # the justification always yields one rationale unit
    assert n_items >= 10 and n_units >= 2 * n_items - 2


def test_offline_without_sections_reports_it():
    res = extract_units("<think>The lungs look hazy so it is pneumonia.</think>\n<answer>A</answer>")
    assert res.n_units == 0 and res.provenance["note"] == "rubric.no_sections"


# --------------------------------------------------------------------------- LLM
@pytest.fixture
def server():
    with FakeOpenAIServer() as srv:
        yield srv


def _engine(server, tmp_path):
    return LLMEngine(fast_config(server), cache=LLMCache(tmp_path / "cache.sqlite"), env={})


LLM_REPLY = {
    "perception": [
        unit(presence_question="", correctness_question=""),
        unit(topic="bile duct calibre", claim="The intrahepatic and extrahepatic bile ducts are not dilated on this CT.",
             quote="The bile ducts are not dilated", importance="supporting", presence_question="", correctness_question=""),
    ],
    "knowledge": [
        unit(topic="haemangioma enhancement pattern", claim="Hepatic haemangioma typically shows peripheral nodular discontinuous enhancement with centripetal fill-in.",
             quote="The lesion is known to fill in centripetally over ten minutes",  # not in the trace
             presence_question="", correctness_question=""),
    ],
    "rationale": [
        unit(topic="haemangioma versus metastasis", claim="Peripheral nodular enhancement favours haemangioma over a hypervascular metastasis with rim enhancement.",
             quote="consistent with a haemangioma rather than a hypervascular metastasis", presence_question="", correctness_question=""),
    ],
}


def test_llm_rubric_scripted_reply_with_bad_quote(server, tmp_path):
    server.script(Reply(json=LLM_REPLY), match="Hepatic haemangioma is the most common")
    eng = _engine(server, tmp_path)
    try:
        res = extract_units(TRACE, question=QUESTION, answer="B", engine=eng, item_id="x1")
    finally:
        eng.close()
    assert server.chat_calls == 1
    body = server.requests[0]
    assert body["response_format"]["type"] == "json_schema" and body["temperature"] == 0.0
    text = json.dumps(body["messages"])
    assert "Reference answer: B" in text and "Clinical context" in text
    assert [u.unit_id for u in res.units["perception"]] == ["P1", "P2"]
    assert res.units["knowledge"] == []
    assert [r["reason"] for r in res.rejected] == ["rubric.quote_not_found"]
    assert res.units["rationale"][0].presence_question == "Does the response make an inferential link about haemangioma versus metastasis?"
    assert res.provenance["engine"] == "llm" and res.provenance["template"] == "rubric@1"
    assert res.provenance["model"] == "qwen-vl-2026-01-01"


def test_llm_failure_gives_no_units_and_the_reason(server, tmp_path):
    server.script(Reply(content="not json"), Reply(content="still not json"))
    eng = _engine(server, tmp_path)
    try:
        res = extract_units(TRACE, engine=eng)
    finally:
        eng.close()
    assert res.n_units == 0 and res.provenance["error"] == "llm.invalid_output"


# --------------------------------------------------------------------------- omr rubric on a dataset folder
def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (120, 60, 30)).save(buf, format="PNG")
    return buf.getvalue()


def make_dataset(root: Path, traces: list[str], split_sizes=(2, 1)) -> Path:
    """A small dataset folder with the contract-D schema (HF features metadata via ``datasets``)."""
    from datasets import Dataset, Features, Image as HFImage, List, Value

    unit_t = {k: Value("string") for k in ("unit_id", "topic", "claim", "presence_question", "correctness_question", "source_quote", "importance")}
    feats = Features({
        "image": HFImage(), "question": Value("string"), "reasoning": Value("string"), "answer": Value("string"),
        "perception": List(unit_t), "knowledge": List(unit_t), "rationale": List(unit_t),
        "id": Value("string"), "article_id": Value("string"), "category": Value("string"),
        "models": List(Value("string")), "stem": Value("string"), "options": List(Value("string")),
    })
    rows = [{
        "image": {"bytes": _png(), "path": f"img{i}.png"}, "question": QUESTION, "reasoning": t, "answer": "B",
        "perception": [], "knowledge": [], "rationale": [], "id": f"item-{i}", "article_id": f"PMC{i}",
        "category": "diagnosis", "models": [], "stem": QUESTION.splitlines()[0], "options": QUESTION.splitlines()[1:],
    } for i, t in enumerate(traces)]
    data = root / "data"
    data.mkdir(parents=True)
    ntest = len(split_sizes)
    start = 0
    for i, n in enumerate(split_sizes):
        Dataset.from_list(rows[start:start + n], features=feats).to_parquet(str(data / f"test-{i:05d}-of-{ntest:05d}.parquet"))
        start += n
    Dataset.from_list(rows[:1], features=feats).to_parquet(str(data / "train-00000-of-00001.parquet"))
    return root


def test_omr_rubric_offline_rewrites_test_split(tmp_path):
    from openmedreason.cli import app

    no_sections = "<think>Hazy lungs, so pneumonia.</think>\n<answer>B</answer>"
    ds = make_dataset(tmp_path / "ds", [TRACE, TRACE.replace("3 cm", "4 cm"), no_sections])
    files = sorted((ds / "data").glob("test-*.parquet"))
    before = {p: pq.read_schema(p) for p in files}
    train_before = (ds / "data" / "train-00000-of-00001.parquet").read_bytes()
    res = CliRunner().invoke(app, ["rubric", str(ds), "--engine", "offline"])
    assert res.exit_code == 0, res.output
    for p in files:  # schema and HF metadata unchanged
        assert pq.read_schema(p).equals(before[p], check_metadata=True)
    assert (ds / "data" / "train-00000-of-00001.parquet").read_bytes() == train_before
    t0 = pq.read_table(files[0]).to_pylist()
    assert [len(r["perception"]) for r in t0] == [2, 2] and t0[0]["perception"][0]["unit_id"] == "P1"
    assert t0[0]["image"]["bytes"] == _png()
    manifest = json.loads((ds / "rubric" / "manifest.json").read_text())
    assert manifest["engine"] == "offline" and manifest["items"] == 3 and manifest["items_with_units"] == 2
    assert manifest["items_without_units"] == [{"id": "item-2", "file": files[1].name, "cause": "rubric.no_sections"}]
    assert manifest["units"]["perception"] == 4 and manifest["caps"]["total"] == 10
    assert (ds / "rubric" / "rejected.jsonl").exists()

    import datasets

    loaded = datasets.load_dataset("parquet", data_files={"test": [str(p) for p in files]}, split="test")
    assert isinstance(loaded.features["image"], datasets.Image)
    assert loaded[0]["perception"][0]["topic"] == "hypodense mass in the hepatic lobe"
    assert loaded[0]["knowledge"][0]["unit_id"] == "K1"
    whole = datasets.load_dataset(str(ds), split="test")  # the folder as a user would load it
    assert whole.num_rows == 3 and len(whole[1]["rationale"]) == 3


def test_fill_dataset_llm_cached_rerun_and_caps(server, tmp_path):
    ds = make_dataset(tmp_path / "ds", [TRACE, TRACE], split_sizes=(2,))
    server.responder = lambda body: Reply(json=LLM_REPLY)
    eng = _engine(server, tmp_path)
    try:
        m1 = R.fill_dataset(ds, engine=eng, caps=RubricCaps(perception=1))
        calls = server.chat_calls
        m2 = R.fill_dataset(ds, engine=eng, caps=RubricCaps(perception=1))
    finally:
        eng.close()
    assert calls == 1  # two identical rows: one request, sent once (identical requests share the reply)
    assert server.chat_calls == calls  # rerun: everything from the cache
    assert m1["units"] == m2["units"] == {"perception": 2, "knowledge": 0, "rationale": 2, "total": 4}
    assert m1["rejected"] == {"rubric.over_cap": 2, "rubric.quote_not_found": 2}
    assert m1["engine"] == "llm" and m1["prompt"] == "rubric@1" and m1["models"] == ["qwen-vl-2026-01-01"]
    rej = [json.loads(line) for line in (ds / "rubric" / "rejected.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rej} == {"item-0", "item-1"} and {r["reason"] for r in rej} == {"rubric.over_cap", "rubric.quote_not_found"}
    rows = pq.read_table(ds / "data" / "test-00000-of-00001.parquet").to_pylist()
    assert [u["unit_id"] for u in rows[0]["perception"]] == ["P1"]


def test_rewrite_refuses_wrong_row_count(tmp_path):
    ds = make_dataset(tmp_path / "ds", [TRACE], split_sizes=(1,))
    path = ds / "data" / "test-00000-of-00001.parquet"
    with pytest.raises(ValueError):
        R.rewrite_rubric_columns(path, [])
    assert pq.read_table(path).num_rows == 1
    assert not list((ds / "data").glob(".*tmp"))


def test_omr_rubric_llm_from_config(server, tmp_path):
    """``omr rubric --engine llm`` with the endpoint and caps from the config file; the cache lives
    in DATASET/rubric/_llm, so a rerun sends nothing."""
    from openmedreason.cli import app

    ds = make_dataset(tmp_path / "ds", [TRACE, TRACE.replace("3 cm", "5 cm")], split_sizes=(2,))
    server.responder = lambda body: Reply(json=LLM_REPLY)
    cfg = tmp_path / "omr.toml"
    cfg.write_text(
        f'[llm.default]\nbase_url = "{server.base_url}"\nmodel = "qwen-vl"\nmax_retries = 1\nbackoff_initial_s = 0.01\n\n'
        "[steps.rubric]\nperception = 1\ntotal = 2\n"
    )
    runner = CliRunner()
    res = runner.invoke(app, ["rubric", str(ds), "--engine", "llm", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert server.chat_calls == 2 and (ds / "rubric" / "_llm" / "cache.sqlite").exists()
    manifest = json.loads((ds / "rubric" / "manifest.json").read_text())
    assert manifest["caps"] == {"perception": 1, "knowledge": 3, "rationale": 3, "total": 2}
    assert manifest["units"]["total"] == 4  # 2 per item: P1 + R1
    res = runner.invoke(app, ["rubric", str(ds), "--engine", "llm", "--config", str(cfg)])
    assert res.exit_code == 0 and server.chat_calls == 2
    cfg.write_text("[steps.rubric]\nperceptoin = 1\n")
    res = runner.invoke(app, ["rubric", str(ds), "--engine", "offline", "--config", str(cfg)])
    assert res.exit_code == 2 and "invalid configuration" in res.output


def test_truncated_reply_retried_with_larger_budget(server, tmp_path):
    server.script(Reply(content='{"perception": [', finish_reason="length"), Reply(json=LLM_REPLY))
    eng = _engine(server, tmp_path)
    try:
        res = extract_units(TRACE, engine=eng)
    finally:
        eng.close()
    assert server.chat_calls == 2
    assert server.requests[0]["max_tokens"] == 2048 and server.requests[1]["max_tokens"] == 4096
    assert res.n_units == 3 and "error" not in res.provenance  # P1, P2, R1 (the K unit's quote is not in the trace)
