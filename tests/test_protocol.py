"""Evaluation, exports and training show a model the same turns (openmedreason.bench.protocol)."""

from openmedreason.bench.items import BenchItem
from openmedreason.bench.protocol import INSTRUCTIONS, strip_instruction, system_prompt, user_text
from openmedreason.build.export.common import SYSTEM_PROMPT
from openmedreason.evaluate.runners import build_prompt
from openmedreason.train.config import SFTRecipe


def test_one_protocol_everywhere():
    item = BenchItem(id="x", benchmark="omr-bench", question="What does the image show?", options=["Cyst", "Abscess"], answer="B")
    system, user = build_prompt(item)
    assert system == system_prompt() == SYSTEM_PROMPT == SFTRecipe().system_prompt
    assert "<think>" in system and "<answer>" in system
    assert user.strip() == user_text(item.question_text()).strip()
    assert SFTRecipe().instruction == INSTRUCTIONS["mcq"]
    assert strip_instruction(user_text(item.question_text())) == item.question_text()
