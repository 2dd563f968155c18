"""Licence normalisation: JATS ``<license>`` URL / type / text to a short code.

Codes: ``cc0``, ``public-domain``, ``cc-by``, ``cc-by-sa``, ``cc-by-nc``, ``cc-by-nc-sa``,
``cc-by-nd``, ``cc-by-nc-nd``, ``unknown``. Unknown stays unknown: we never guess a licence.
"""

from __future__ import annotations

import re

LICENSE_CODES = (
    "cc0", "public-domain", "cc-by", "cc-by-sa", "cc-by-nc", "cc-by-nc-sa", "cc-by-nd", "cc-by-nc-nd", "unknown",
)

#: Licences excluded by default: no derivatives allowed, or nothing known.
DEFAULT_DENIED = frozenset({"cc-by-nd", "cc-by-nc-nd", "unknown"})

_URL = re.compile(r"creativecommons\.org/(licenses|publicdomain)/([a-z\-]+)", re.I)
_CODE = re.compile(r"\bCC[\s\-_]?(BY(?:[\s\-_](?:NC|SA|ND)){0,2}|0|ZERO)\b", re.I)


def _from_parts(parts: list[str]) -> str:
    p = [x.lower() for x in parts]
    nc, sa, nd = "nc" in p, "sa" in p, "nd" in p
    if nd:
        return "cc-by-nc-nd" if nc else "cc-by-nd"
    if nc:
        return "cc-by-nc-sa" if sa else "cc-by-nc"
    return "cc-by-sa" if sa else "cc-by"


def normalize_license(url: str | None = None, text: str | None = None, license_type: str | None = None) -> str:
    """Map what an article says about its licence to one code; ``unknown`` when nothing matches."""
    for candidate in (url, license_type):
        if not candidate:
            continue
        m = _URL.search(candidate)
        if m:
            kind, name = m.group(1).lower(), m.group(2).lower()
            if kind == "publicdomain":
                return "cc0" if name.startswith("zero") else "public-domain"
            return _from_parts(name.split("-")[1:]) if name.startswith("by") else "unknown"
    blob = " ".join(x for x in (license_type, url, text) if x)
    if not blob.strip():
        return "unknown"
    m = _CODE.search(blob)
    if m:
        tag = m.group(1).upper().replace("_", "-").replace(" ", "-")
        if tag in ("0", "ZERO"):
            return "cc0"
        return _from_parts(tag.split("-")[1:])
    low = " ".join(blob.lower().split())
    if "public domain" in low:
        return "public-domain"
    if "creative commons" in low and ("zero" in low or "cc0" in low):
        return "cc0"
    if "creative commons" in low and "attribution" in low:
        parts = []
        if "noncommercial" in low or "non-commercial" in low:
            parts.append("nc")
        if "noderivatives" in low or "no derivatives" in low or "noderivs" in low or "no-derivatives" in low:
            parts.append("nd")
        if "sharealike" in low or "share alike" in low or "share-alike" in low:
            parts.append("sa")
        return _from_parts(parts)
    if license_type:
        lt = license_type.lower()
        if lt in LICENSE_CODES:
            return lt
    return "unknown"


def parse_allow(spec: str | None) -> frozenset[str]:
    """``--allow-license`` value: comma-separated codes to admit on top of the default policy, or ``all``."""
    if not spec:
        return frozenset()
    items = {s.strip().lower() for s in spec.split(",") if s.strip()}
    if "all" in items:
        return frozenset(LICENSE_CODES)
    bad = items - set(LICENSE_CODES)
    if bad:
        raise ValueError(f"unknown licence code(s) {sorted(bad)}; known: {', '.join(LICENSE_CODES)}")
    return frozenset(items)
