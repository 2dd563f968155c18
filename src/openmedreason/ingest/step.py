"""The ``ingest`` step: source units in, one Panel record per figure panel out.

Articles whose licence is not admitted (by default: no-derivatives licences and unknown
licences) are rejected here, per panel, so that the licence decision is visible in the funnel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pydantic import Field

from openmedreason.ingest.license import DEFAULT_DENIED, LICENSE_CODES
from openmedreason.ingest.sources import SourceUnit
from openmedreason.reasons import reason
from openmedreason.records import Panel
from openmedreason.run.steps import Rejected, Step, StepConfig, StepResult

LICENSE_ND = reason("ingest.license_nd", "the article's licence forbids derivatives (ND); admit with --allow-license")
LICENSE_UNKNOWN = reason("ingest.license_unknown", "the article states no licence we can read; admit with --allow-license unknown")
LICENSE_DENIED = reason("ingest.license_denied", "the article's licence is not in the admitted set")


class IngestConfig(StepConfig):
    allow_license: tuple[str, ...] = Field(
        default=(), description="licence codes admitted on top of the default policy (which denies ND and unknown)"
    )
    deny_license: tuple[str, ...] = Field(default=(), description="licence codes denied on top of the default policy")
    field_map: str | None = Field(
        default=None, description="record sources: preset name (openpmc, medcorpus) or 'panel_field=column,…'"
    )
    max_xml_mb: int = Field(default=256, description="largest JATS file accepted, in MiB")

    def denied(self) -> frozenset[str]:
        return (DEFAULT_DENIED - set(self.allow_license)) | set(self.deny_license)


class Ingest(Step[SourceUnit, Panel]):
    name = "ingest"
    version = "2"  # 2: keyless record rows get a per-figure article_id
    Config = IngestConfig
    output = Panel
    one_to_one = False  # one article becomes many panels

    def __init__(self, config: IngestConfig | dict | None = None, workdir: Path | None = None) -> None:
        super().__init__(config)
        bad = (set(self.config.allow_license) | set(self.config.deny_license)) - set(LICENSE_CODES)
        if bad:
            raise ValueError(f"unknown licence code(s) {sorted(bad)}; known: {', '.join(LICENSE_CODES)}")
        self.workdir = workdir

    def _unit(self, unit: SourceUnit) -> list[Panel | Rejected]:
        path = Path(unit.path)
        if unit.kind == "jats":
            from openmedreason.ingest.jats import ingest_jats_file

            return ingest_jats_file(path, max_bytes=self.config.max_xml_mb << 20)
        if unit.kind == "oa_package":
            from openmedreason.ingest.oa_package import ingest_oa_package

            if self.workdir is None:
                raise RuntimeError("ingest of OA packages needs a work directory")
            return ingest_oa_package(path, self.workdir)
        from openmedreason.ingest.records_source import ingest_records

        return ingest_records(path, field_map=self.config.field_map, start=unit.start, stop=unit.stop)

    def process(self, batch: Sequence[SourceUnit]) -> StepResult[Panel]:
        out: StepResult[Panel] = StepResult()
        denied = self.config.denied()
        for unit in batch:
            for item in self._unit(unit):
                if isinstance(item, Rejected):
                    out.rejected.append(item)
                elif item.license in denied:
                    code = LICENSE_ND if item.license.endswith("-nd") else (
                        LICENSE_UNKNOWN if item.license == "unknown" else LICENSE_DENIED
                    )
                    out.rejected.append(Rejected(item, code, detail=item.license))
                else:
                    out.kept.append(item)
        return out
