"""``FORMATS``: export format name → exporter class (the class docstring says what it writes)."""

from __future__ import annotations

from openmedreason.build.export.common import Exporter
from openmedreason.build.export.easyr1 import EasyR1Exporter
from openmedreason.build.export.llamafactory import LlamaFactoryExporter
from openmedreason.build.export.lmms_eval import LmmsEvalExporter
from openmedreason.build.export.medvlthinker import MedVLThinkerExporter
from openmedreason.build.export.trl_grpo import TrlGrpoExporter
from openmedreason.build.export.trl_sft import TrlSftExporter
from openmedreason.build.export.verl import VerlExporter
from openmedreason.build.export.vlmevalkit import VlmEvalKitExporter

FORMATS: dict[str, type[Exporter]] = {
    cls.name: cls
    for cls in (
        TrlSftExporter,
        TrlGrpoExporter,
        LlamaFactoryExporter,
        EasyR1Exporter,
        VerlExporter,
        LmmsEvalExporter,
        VlmEvalKitExporter,
        MedVLThinkerExporter,
    )
}


def describe(name: str) -> str:
    """First line of a format's module docstring (for ``omr export --help`` and the manifest)."""
    import sys

    doc = sys.modules[FORMATS[name].__module__].__doc__ or FORMATS[name].__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else name
