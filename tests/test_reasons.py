from pathlib import Path

import pytest

from openmedreason.reasons import REASONS, check, load_all, reason, reasons_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_docs_list_every_reason():
    expected = reasons_markdown()
    assert (ROOT / "docs" / "reasons.md").read_text() == expected, "run: omr reasons --markdown > docs/reasons.md"


def test_codes_are_stable_and_checked():
    load_all()
    for code in REASONS:
        stage, _, what = code.partition(".")
        assert stage and what and code == code.lower()
    with pytest.raises(KeyError):
        check("ingest.no_such_code")
    with pytest.raises(ValueError):
        reason("ingest.image_missing", "a different meaning")
    with pytest.raises(ValueError):
        reason("nodot", "x")
