"""Model runners: what produces the responses that ``omr eval`` scores.

* :class:`OpenAIRunner`: any OpenAI-compatible VLM endpoint (vLLM, SGLang, Ollama, OpenAI…) through
  the LLM engine, so replies are cached, retried, rate-limited and costed like every other call.
* :class:`TransformersRunner`: a local Hugging Face model (``AutoProcessor`` +
  ``AutoModelForImageTextToText``; extra ``train``), for users without a server.
* :class:`ReferenceRunner` (``builtin:reference``): replays each item's reference trace. An oracle
  that checks scoring end to end (it must score 100% on closed items), not a model.
* :class:`BlindRunner` (``builtin:blind``): a text-only heuristic that never looks at the image; a
  floor to compare models against, not a model.

Every runner turns a list of :class:`Job` (item × sample index) into :class:`Generation` objects
in the same order. The protocol: the system prompt ``prompts/eval_system.md`` asks for
``<think>…</think>\\n<answer>X</answer>``; the user turn holds the image, the stem and lettered
options (open questions: the question and "answer briefly"). Greedy single run by default; with
``samples > 1`` the published sampling settings (temperature 1.2, top_p 0.95, stop at
``</answer>``, one seeded request per sample).
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from openmedreason.bench.items import BenchItem
from openmedreason.prompts import PromptTemplate, load

#: the published sampling settings used when ``samples > 1``
SAMPLE_TEMPERATURE = 1.2
SAMPLE_TOP_P = 0.95
STOP = "</answer>"

from openmedreason.bench.protocol import INSTRUCTIONS  # noqa: E402  (shared with exports and training)

BUILTIN_PREFIX = "builtin:"
HF_PREFIX = "hf:"


def eval_prompt() -> PromptTemplate:
    return load("eval_system")


def build_prompt(item: BenchItem) -> tuple[str, str]:
    """(system, user text) for ``item`` under the evaluation protocol."""
    tpl = eval_prompt()
    question = item.question_text() if item.kind == "mcq" else item.question
    return tpl.render(question=question, instruction=INSTRUCTIONS[item.kind])


def prompt_hash(item: BenchItem) -> str:
    """sha256 (16 hex) of exactly what the model is shown: system, user text and image bytes."""
    system, user = build_prompt(item)
    h = hashlib.sha256()
    for part in (system, user):
        h.update(part.encode())
        h.update(b"\0")
    img = item.image_bytes()
    h.update(hashlib.sha256(img).digest() if img else b"no-image")
    return h.hexdigest()[:16]


def prompts_manifest() -> dict[str, Any]:
    """Prompt ids and content hashes for the manifest."""
    tpl = eval_prompt()
    body = tpl.system + "\0" + tpl.user + "\0" + "\0".join(f"{k}={v}" for k, v in sorted(INSTRUCTIONS.items()))
    return {"eval_system": {"id": tpl.id, "sha256": hashlib.sha256(body.encode()).hexdigest()[:16]}}


@dataclass(frozen=True)
class Job:
    """One response to produce: ``item`` answered for the ``sample``-th time (0-based)."""

    item: BenchItem
    sample: int = 0


@dataclass(frozen=True)
class Protocol:
    """Decoding settings. ``samples == 1``: greedy; else the published sampling settings."""

    samples: int = 1
    seed: int = 0
    max_tokens: int | None = None

    @property
    def sampling(self) -> bool:
        return self.samples > 1

    def overrides(self, sample: int) -> dict[str, Any]:
        """Engine request overrides for one sample."""
        o: dict[str, Any] = {"seed": self.seed + sample}
        if self.sampling:
            o.update(temperature=SAMPLE_TEMPERATURE, top_p=SAMPLE_TOP_P, stop=[STOP])
        else:
            o["temperature"] = 0.0
        if self.max_tokens:
            o["max_tokens"] = self.max_tokens
        return o

    def describe(self) -> dict[str, Any]:
        if self.sampling:
            return {"mode": "sampling", "samples": self.samples, "temperature": SAMPLE_TEMPERATURE, "top_p": SAMPLE_TOP_P,
                    "stop": [STOP], "seeds": [self.seed + s for s in range(self.samples)], "max_tokens": self.max_tokens}
        return {"mode": "greedy", "samples": 1, "temperature": 0.0, "seed": self.seed, "max_tokens": self.max_tokens}


@dataclass
class Generation:
    """One response. ``error`` (a reason code) means there is no response at all (the request
    failed or the image could not be sent): the line is retried when the eval is resumed."""

    text: str | None
    finish_reason: str | None = None
    model: str | None = None
    error: str | None = None
    detail: str | None = None
    refusal: bool = False
    cached: bool = False
    calls: int = 0
    cost_usd: float = 0.0
    usage: dict[str, int] = field(default_factory=dict)
    stop_appended: bool = False

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


def close_answer_tag(text: str | None, finish_reason: str | None) -> tuple[str | None, bool]:
    """Re-append ``</answer>`` when a stop at ``</answer>`` consumed it (the server strips the stop
    string): only on a normal stop and when the last ``<answer>`` is still open."""
    if not text or finish_reason != "stop":
        return text, False
    opened, closed = text.rfind("<answer>"), text.rfind(STOP)
    if opened >= 0 and closed < opened:
        return text.rstrip() + STOP, True
    return text, False


class Runner:
    """Base class: ``generate(jobs, protocol)`` → one :class:`Generation` per job, in order."""

    kind = "runner"
    name = ""

    def generate(self, jobs: Sequence[Job], protocol: Protocol) -> list[Generation]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name}

    @property
    def calls_network(self) -> bool:
        return False

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------ endpoint
class OpenAIRunner(Runner):
    """The model under test behind an OpenAI-compatible endpoint, through :class:`LLMEngine`.

    Configuration: ``[llm.default]`` then ``[llm.eval]`` of the config file, then
    ``OMR_LLM_BASE_URL``/``OMR_LLM_MODEL``, then ``model``/``base_url`` given here (the CLI
    flags). The API key comes from the environment only. Replies are cached in
    ``OUT/_llm/cache.sqlite`` (or the configured ``cache_path``).
    """

    kind = "openai"

    def __init__(
        self,
        model: str,
        out: str | Path,
        *,
        llm_sections: Mapping[str, Mapping[str, Any]] | None = None,
        base_url: str | None = None,
        env: Mapping[str, str] | None = None,
        no_cache: bool = False,
        max_cost_usd: float | None = None,
        engine: Any = None,
    ) -> None:
        from openmedreason.llm import engine_for_step, resolve_llm_config

        self.name = model
        if engine is None:
            cfg = resolve_llm_config("eval", llm_sections, env, model=model, base_url=base_url)
            engine = engine_for_step("eval", llm_sections, out, config=cfg, no_cache=no_cache, max_cost_usd=max_cost_usd, env=env)
        self.engine = engine
        self.server_models: set[str] = set()

    @property
    def calls_network(self) -> bool:
        return True

    def requests(self, jobs: Sequence[Job], protocol: Protocol) -> list[Any]:
        from openmedreason.llm import LLMRequest, Message

        tpl = eval_prompt()
        out = []
        for job in jobs:
            system, user = build_prompt(job.item)
            img = job.item.image_bytes()
            out.append(
                LLMRequest(
                    step="eval",
                    template=tpl.name,
                    template_version=tpl.version,
                    messages=[Message.system(system), Message.user(user, images=[img] if img else [])],
                    overrides=protocol.overrides(job.sample),
                    record_id=f"{job.item.id}#{job.sample}",
                )
            )
        return out

    def generate(self, jobs: Sequence[Job], protocol: Protocol) -> list[Generation]:
        from openmedreason.llm import BAD_REQUEST, IMAGE_UNREADABLE, REFUSAL, REQUEST_FAILED

        results = self.engine.complete_many(self.requests(jobs, protocol))
        gens = []
        for r in results:
            if r.model:
                self.server_models.add(r.model)
            g = Generation(
                text=r.text,
                finish_reason=r.finish_reason,
                model=r.model,
                cached=r.cached,
                calls=r.calls,
                cost_usd=r.cost_usd,
                usage=r.usage.as_dict(),
            )
            if r.reason in (REQUEST_FAILED, BAD_REQUEST, IMAGE_UNREADABLE):
                g.error, g.detail = r.reason, r.detail
            elif r.reason == REFUSAL:
                g.refusal, g.detail = True, r.detail
            if protocol.sampling:
                g.text, g.stop_appended = close_answer_tag(g.text, g.finish_reason)
            gens.append(g)
        return gens

    def describe(self) -> dict[str, Any]:
        from openmedreason.llm.engine import redact_url

        cfg = self.engine.config
        return {
            "kind": self.kind,
            "name": self.name,
            "requested_model": cfg.model,
            "server_models": sorted(self.server_models),
            "base_url": redact_url(cfg.base_url),
            "endpoint_kind": cfg.endpoint_kind,
            "max_tokens": cfg.max_tokens,
            "image_max_side": cfg.image_max_side,
            "config_fingerprint": cfg.fingerprint(),
        }

    def close(self) -> None:
        self.engine.close()


# ------------------------------------------------------------------------------------ built-ins
class ReferenceRunner(Runner):
    """``builtin:reference``: replays each item's reference trace (an oracle for the scoring, not a
    model). Items without a trace get a bare ``<answer>`` with the gold answer."""

    kind = "builtin"
    name = "builtin:reference"

    def generate(self, jobs: Sequence[Job], protocol: Protocol) -> list[Generation]:
        out = []
        for job in jobs:
            it = job.item
            text = it.reference_reasoning or f"<think>\n(no reference trace for this item)\n</think>\n<answer>{it.answer}</answer>"
            out.append(Generation(text=text, finish_reason="stop", model=self.name))
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "note": "oracle: replays the reference traces; checks the scoring, not a model"}


_WORD = re.compile(r"[a-z0-9]+")
_STOP_WORDS = frozenset(
    "a an the of in on at to for with by from and or is are was were be this that these those which what who whom whose "
    "how why when where shown image figure panel most likely following best does do did it its as".split()
)
_YES_NO_START = re.compile(r"^\s*(is|are|was|were|does|do|did|can|could|has|have|will|would|should)\b", re.I)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOP_WORDS and len(w) > 1}


class BlindRunner(Runner):
    """``builtin:blind``: a text-only baseline, not a model. It never looks at the image: it picks
    the option sharing most words with the stem (ties broken by a seeded hash of the item id, so no
    letter is favoured), and answers open yes/no questions "yes" and other open questions
    "unknown"."""

    kind = "builtin"
    name = "builtin:blind"

    def generate(self, jobs: Sequence[Job], protocol: Protocol) -> list[Generation]:
        out = []
        for job in jobs:
            it = job.item
            if it.kind == "mcq" and it.options:
                stem = _words(it.question)
                scores = [len(stem & _words(o)) for o in it.options]
                best = max(scores)
                tied = [i for i, s in enumerate(scores) if s == best]
                h = int(hashlib.sha256(f"{protocol.seed + job.sample}:{it.id}".encode()).hexdigest(), 16)
                pick = tied[h % len(tied)]
                letter = it.letters[pick]
                why = f"option {letter} shares {best} word(s) with the question" if best else "no option shares words with the question; a tie-break picked"
                text = f"<think>\nText-only baseline: the image was not used. {why[0].upper() + why[1:]}.\n</think>\n<answer>{letter}</answer>"
            else:
                ans = "yes" if _YES_NO_START.match(it.question) else "unknown"
                text = f"<think>\nText-only baseline: the image was not used.\n</think>\n<answer>{ans}</answer>"
            out.append(Generation(text=text, finish_reason="stop", model=self.name))
        return out

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "note": "text-only heuristic baseline (word overlap with the stem); never sees the image; not a model"}


# ------------------------------------------------------------------------------------ transformers
class TransformersRunner(Runner):
    """A local Hugging Face VLM (``hf:<name-or-path>``): ``AutoProcessor`` +
    ``AutoModelForImageTextToText``, the processor's chat template, greedy or sampled generation
    in batches. Needs the ``train`` extra (torch, transformers); imported lazily."""

    kind = "transformers"

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        batch_size: int = 4,
        max_new_tokens: int = 1024,
        dtype: str | None = None,
        processor: Any = None,
        hf_model: Any = None,
    ) -> None:
        try:
            import torch
            import transformers
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("the transformers runner needs the 'train' extra: pip install 'openmedreason[train]'") from exc
        self.name = model
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens
        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if processor is None:
            processor = transformers.AutoProcessor.from_pretrained(model)
        if hf_model is None:
            kw: dict[str, Any] = {}
            if dtype:
                kw["dtype"] = getattr(torch, dtype)
            hf_model = transformers.AutoModelForImageTextToText.from_pretrained(model, **kw)
        self.processor = processor
        self.model = hf_model.to(self.device).eval()
        tok = getattr(processor, "tokenizer", processor)
        self.tokenizer = tok
        tok.padding_side = "left"  # decoder-only batch generation pads on the left
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        self.versions = {"transformers": transformers.__version__, "torch": torch.__version__}

    def _chat(self, item: BenchItem, has_image: bool) -> str:
        system, user = build_prompt(item)
        content: list[dict[str, Any]] = [{"type": "image"}] if has_image else []
        content.append({"type": "text", "text": user})
        messages = [{"role": "system", "content": [{"type": "text", "text": system}]}, {"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def generate(self, jobs: Sequence[Job], protocol: Protocol) -> list[Generation]:
        from PIL import Image

        torch = self._torch
        out: list[Generation] = []
        max_new = protocol.max_tokens or self.max_new_tokens
        for start in range(0, len(jobs), self.batch_size):
            batch = jobs[start : start + self.batch_size]
            images, texts = [], []
            for job in batch:
                data = job.item.image_bytes()
                img = Image.open(io.BytesIO(data)).convert("RGB") if data else None
                texts.append(self._chat(job.item, img is not None))
                if img is not None:
                    images.append(img)
            if images and len(images) != len(batch):
                # mixed batches (some items without an image) are generated one by one
                for job in batch:
                    out.extend(self.generate([job], protocol))
                continue
            inputs = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True).to(self.device)
            gen_kw: dict[str, Any] = {"max_new_tokens": max_new}
            if protocol.sampling:
                torch.manual_seed(protocol.seed + batch[0].sample + start)
                gen_kw.update(do_sample=True, temperature=SAMPLE_TEMPERATURE, top_p=SAMPLE_TOP_P, stop_strings=[STOP], tokenizer=self.tokenizer)
            else:
                gen_kw.update(do_sample=False)
            with torch.no_grad():
                seqs = self.model.generate(**inputs, **gen_kw)
            new = seqs[:, inputs["input_ids"].shape[1] :]
            eos = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id, *(_as_list(self.model.generation_config.eos_token_id))}
            for row in new:
                ids = row.tolist()
                # the number of generated tokens before padding or end-of-sequence
                n = next((i for i, t in enumerate(ids) if t in eos), len(ids))
                text = self.tokenizer.decode(ids[:n], skip_special_tokens=True)
                hit_stop = protocol.sampling and text.rstrip().endswith(STOP)
                finish = "length" if (n >= max_new and not hit_stop) else "stop"
                out.append(Generation(text=text, finish_reason=finish, model=self.name))
        return out

    def describe(self) -> dict[str, Any]:
        cfg = getattr(self.model, "config", None)
        tmpl = getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None) or ""
        return {
            "kind": self.kind,
            "name": self.name,
            "model_class": type(self.model).__name__,
            "name_or_path": getattr(cfg, "_name_or_path", None),
            "commit": getattr(cfg, "_commit_hash", None),
            "chat_template_sha256": hashlib.sha256(str(tmpl).encode()).hexdigest()[:16],
            "device": self.device,
            "batch_size": self.batch_size,
            "max_new_tokens": self.max_new_tokens,
            **self.versions,
        }


def _as_list(x: Any) -> list[Any]:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


BUILTINS = {"builtin:reference": ReferenceRunner, "builtin:blind": BlindRunner}


def make_runner(
    model: str,
    out: str | Path,
    *,
    llm_sections: Mapping[str, Mapping[str, Any]] | None = None,
    base_url: str | None = None,
    env: Mapping[str, str] | None = None,
    no_cache: bool = False,
    max_cost_usd: float | None = None,
    hf_options: Mapping[str, Any] | None = None,
) -> Runner:
    """The runner for ``model``: ``builtin:reference`` / ``builtin:blind``, ``hf:<name-or-path>``
    for a local transformers model, anything else = a model id at the OpenAI-compatible endpoint."""
    if model.startswith(BUILTIN_PREFIX):
        if model not in BUILTINS:
            raise ValueError(f"unknown built-in model {model!r}; known: {', '.join(sorted(BUILTINS))}")
        return BUILTINS[model]()
    if model.startswith(HF_PREFIX):
        return TransformersRunner(model[len(HF_PREFIX) :], **dict(hf_options or {}))
    return OpenAIRunner(model, out, llm_sections=llm_sections, base_url=base_url, env=env, no_cache=no_cache, max_cost_usd=max_cost_usd)
