"""``[build]`` table of the run config: dedup, split, decontamination and Parquet settings.

Example ``omr.toml``::

    [build]
    test_size = 500               # or test_fraction = 0.1
    image_hamming = 6
    decontam_benchmarks = ["slake", "vqa-rad"]

The thresholds were chosen from measurements on the bundled images (docs/dataset.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: environment variable that overrides the default decontamination registry directory
REGISTRY_ENV = "OMR_DECONTAM_DIR"


def default_registry_dir() -> Path:
    """``$OMR_DECONTAM_DIR``, else ``~/.cache/openmedreason/decontam``."""
    env = os.environ.get(REGISTRY_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "openmedreason" / "decontam"


class BuildConfig(BaseModel):
    """Every setting of ``omr build`` with its default (documented in docs/dataset.md)."""

    model_config = ConfigDict(extra="forbid")

    # --- dedup ---
    image_hamming: int = Field(
        default=6,
        ge=0,
        le=64,
        description="pHash Hamming distance (of 64 bits) at or below which two images are near-duplicates "
        "(image dedup and the decontamination image match). Resized / recompressed copies measured 0-4, "
        "the closest distinct pair of bundled images 10",
    )
    split_image_hamming: int = Field(
        default=8,
        ge=0,
        le=64,
        description="pHash distance that links two articles into one split group (looser than dedup: a wrong "
        "link only constrains the split, a missed one leaks an image across splits)",
    )
    question_threshold: float = Field(
        default=0.7,
        gt=0.0,
        le=1.0,
        description="MinHash Jaccard (word set of the normalised stem + options) at or above which two "
        "questions on the same near-duplicate image cluster are duplicates (a lexical rewording with the same "
        "options measured 0.82; a different question with the same options 0.55)",
    )
    num_perm: int = Field(default=64, ge=16, le=512, description="MinHash permutations (signature length)")

    # --- split ---
    test_size: int | None = Field(
        default=None, ge=0, description="test split size in items (approximate: whole groups move); overrides test_fraction"
    )
    test_fraction: float = Field(default=0.1, ge=0.0, le=1.0, description="test split share of the kept items when test_size is unset")
    seed: int | None = Field(default=None, description="split seed; None = the run config's seed")

    # --- decontamination ---
    decontam_registry: str | None = Field(
        default=None,
        description=f"registry directory; None = ${REGISTRY_ENV} or ~/.cache/openmedreason/decontam",
    )
    decontam_benchmarks: list[str] | None = Field(
        default=None, description="registered benchmarks to apply; None = every registered one, [] = none"
    )
    decontam_question_threshold: float = Field(
        default=0.8,
        gt=0.0,
        le=1.0,
        description="MinHash Jaccard (word set of the normalised stem) at or above which a question matches a benchmark question",
    )
    decontam_min_tokens: int = Field(
        default=10,
        ge=1,
        description="a question matches a benchmark question by text only when both stems have at least this many "
        "distinct words (short generic stems such as 'What modality is shown?' are not evidence of contamination)",
    )

    # --- parquet ---
    rows_per_file: int = Field(default=5000, ge=1, description="rows per Parquet shard file")
    row_group_rows: int = Field(default=100, ge=1, description="rows per Parquet row group (bounds writer memory; small groups suit the Hub viewer)")

    @model_validator(mode="after")
    def _check(self) -> "BuildConfig":
        if self.split_image_hamming < self.image_hamming:
            raise ValueError("split_image_hamming must be >= image_hamming (dedup survivors must still be grouped)")
        return self

    def registry_dir(self) -> Path:
        return Path(self.decontam_registry).expanduser() if self.decontam_registry else default_registry_dir()

    def resolved_seed(self, run_seed: int = 0) -> int:
        return run_seed if self.seed is None else self.seed

    @classmethod
    def from_run(cls, run_config: Any | None, **overrides: Any) -> "BuildConfig":
        """The ``[build]`` table of a :class:`~openmedreason.config.RunConfig` plus non-None overrides."""
        data = dict(getattr(run_config, "build", None) or {})
        for k, v in overrides.items():
            if v is not None:
                data[k] = v
        if overrides.get("test_fraction") is not None and overrides.get("test_size") is None:
            data.pop("test_size", None)
        return cls.model_validate(data)
