"""The answer protocol shared by evaluation, the exports and training.

A model trained on our data is evaluated with the very turns it learned: the system prompt of
``prompts/eval_system.md`` and a user turn of the question (stem + lettered options) followed by
the instruction for its kind. Change the wording there (and bump the prompt version), never in a
copy.
"""

from __future__ import annotations

from functools import lru_cache

#: the last line of the user turn, by item kind (part of every evaluation prompt hash)
INSTRUCTIONS = {
    "mcq": "Choose one option. End with <answer>X</answer>, where X is its letter.",
    "open": "Answer briefly. End with <answer>your short answer</answer>.",
}

#: for targets without a system turn (EasyR1, verl): the format request in the user turn itself
FORMAT_INSTRUCTION = (
    "Think step by step inside <think></think>, then give only the letter of the correct option inside <answer></answer>."
)


@lru_cache(maxsize=None)
def system_prompt() -> str:
    """The system turn that asks for ``<think>…</think>`` then ``<answer>X</answer>``."""
    from openmedreason.prompts import load

    return load("eval_system").system


def user_text(question: str, kind: str = "mcq") -> str:
    """The user turn's text: the question (stem + ``X. option`` lines for MCQs), then the
    instruction, laid out by ``prompts/eval_system.md`` (the evaluation renders the same template)."""
    from openmedreason.prompts import load

    return load("eval_system").render(question=question, instruction=INSTRUCTIONS[kind])[1]


def strip_instruction(text: str) -> str:
    """The question part of a user turn made by :func:`user_text` (the instruction removed)."""
    for instruction in (*INSTRUCTIONS.values(), FORMAT_INSTRUCTION):
        if text.rstrip().endswith(instruction):
            return text.rstrip()[: -len(instruction)].rstrip()
    return text
