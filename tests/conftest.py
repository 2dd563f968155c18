"""Suite-wide fixtures."""

import pytest


@pytest.fixture(autouse=True)
def _private_decontam_registry(tmp_path_factory, monkeypatch):
    """Never read or write the user's real decontamination registry (~/.cache/openmedreason)."""
    monkeypatch.setenv("OMR_DECONTAM_DIR", str(tmp_path_factory.mktemp("decontam")))
