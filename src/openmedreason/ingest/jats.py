"""JATS / PMC ``.nxml`` ingest: one article file in, one :class:`Panel` per figure panel out.

Safety
    The XML is parsed once with a parser that loads no DTD, expands no entity, never touches the
    network (``resolve_entities=False, no_network=True, load_dtd=False``) and has
    ``huge_tree=True`` for very large real articles. Input is streamed from the path or file
    object by libxml2; the file is never read into one Python ``bytes`` object, and files larger
    than ``max_bytes`` are refused before parsing (file objects are counted while read).
    External entities (XXE), external DTDs and network entities stay unexpanded entity
    references and contribute nothing to the text; an entity-expansion bomb is stopped by
    libxml2's amplification limit and reported as ``ingest.xml_error``. Unexpanded references to
    standard named character entities (``&ndash;``, ``&nbsp;``, from the DTD we do not load) are
    mapped to their characters from Python's static HTML table; any other reference is dropped.

One pass
    Figures, figure groups and figure cross-references are collected in one ``iter()`` over the
    tree (tag-filtered in C). Each ``<xref ref-type="fig">`` walks up to its paragraph and
    section (the walk above a paragraph is memoised, so the paragraphs of one section share it);
    there is no per-figure search of the document. Metadata comes from one pass over the
    children of ``<article-meta>``. The rest runs phase by phase (paragraph text, caption
    splitting, image lookup, records), not figure by figure. Every record is validated.

Figures
    Every ``<fig>`` anywhere (body, ``<fig-group>`` members such as eLife figure supplements,
    ``<floats-group>``, ``<boxed-text>``, appendices, back matter, author-response figures in
    ``<sub-article>``), except a ``<fig>`` inside ``<table-wrap>``. Only the figure's own
    ``<graphic>`` (a child, or inside ``<alternatives>``) is used: never ``<inline-graphic>``,
    table graphics or formula images. Caption = title + " " + the caption's paragraphs, without
    embedded ``<supplementary-material>`` blocks (eLife "source data" notes). All text is
    whitespace-normalised (XML whitespace; no-break spaces become spaces; invisible MathML
    operators are dropped); inline formulas keep their MathML text.

Citing paragraphs
    The innermost ``<p>`` holding an ``<xref ref-type="fig">`` whose ``rid`` (space-separated ids)
    names the figure or its ``<fig-group>``. Paragraphs inside any ``<caption>``, ``<fig>``,
    ``<table-wrap>`` (cells and table footnotes) or ``<supplementary-material>`` are not citing
    paragraphs. Paragraph text leaves out nested figures and tables. The mention is the xref's
    text plus panel letters glued to its end ("Figure 2</xref>B–D)" → "Figure 2B–D"), with the
    word "Figure"/"Fig." taken from just before the xref when the xref holds only the number (BMC
    "Figure <xref>3A</xref>" → "Figure 3A"); several mentions of one figure in one paragraph are
    joined with " | " and give one CitingParagraph. A figure's paragraphs are in document order.
    ``panels`` lists the letters named (via :func:`~openmedreason.ingest.panels.mention_panels`),
    and is empty when any mention of the figure in that paragraph names no letter (the paragraph
    is about the whole figure). ``section`` is the title of the nearest ``<sec>``, ``<app>``,
    ``<boxed-text>``, ``<ack>`` or ``<abstract>``; for author responses the sub-article's title.

Panels and routing
    :func:`~openmedreason.ingest.panels.split_caption` decides whether a figure is compound. A
    compound figure gives one record per panel letter (``panel``, ``sub_caption``,
    ``panel_count``); a citing paragraph goes to the panels it names, to all panels when it names
    none, and also to all panels when none of its letters is a panel the caption labels (the
    caption split missed a letter: keeping the paragraph is better than losing it). A figure that
    is not compound gives one record with ``panel=None``. JATS has no per-panel image, so
    ``image_path`` and ``full_image_path`` are both the figure's image.

Images
    The graphic's ``xlink:href`` is looked up in ``image_root`` (default: the XML's folder),
    case-insensitively, with or without extension: ``pone.0046493.g001`` →
    ``pone.0046493.g001.jpg``; ``info:doi/10.1371/journal.pone.0056489.g001`` →
    ``pone.0056489.g001.tif`` (with or without the ``journal.`` prefix); ``elife-19405-fig1-v1``
    → ``.tif``; an href naming one extension also finds the same stem with another. When
    several image files share the stem (PMC ships a full ``.jpg`` and a thumbnail ``.gif``),
    the one with the most pixels wins, read from the file header by Pillow without decoding
    (ties: the larger file). Paths are absolute; nothing outside ``image_root`` is returned
    (``..`` and symlinks leading out are refused).

Ids and rejects
    ``article_id`` is ``PMC…`` (normalised) when the article has a PMCID, else ``doi:<doi>``,
    else ``file:<file stem>``; panel ids are :func:`make_panel_id`. Rejects: ``ingest.xml_error``
    (missing, unreadable, malformed, oversize or non-article XML; article-level record),
    ``ingest.no_figures`` (article-level record, ``figure_id=None``) and ``ingest.image_missing``
    (per panel record, every field filled, ``image_path=None``). Bad input never raises.
"""

from __future__ import annotations

import html.entities
import os
import re
import threading
import warnings
from collections.abc import Iterable
from typing import IO, Any

from lxml import etree

from openmedreason.ingest.license import normalize_license
from openmedreason.ingest.panels import mention_panels, split_caption, tail_letters
from openmedreason.ingest import IMAGE_MISSING
from openmedreason.reasons import reason
from openmedreason.records import CitingParagraph, Panel
from openmedreason.run.steps import Rejected

__all__ = [
    "XML_ERROR",
    "NO_FIGURES",
    "IMAGE_MISSING",
    "DEFAULT_MAX_BYTES",
    "IMAGE_EXTENSIONS",
    "make_panel_id",
    "make_parser",
    "ingest_jats_file",
    "ImageIndex",
]


XML_ERROR = reason(
    "ingest.xml_error", "the article XML could not be read: missing, malformed, over the size limit or not a JATS article"
)
NO_FIGURES = reason("ingest.no_figures", "the article has no <fig> with which to make a panel")

DEFAULT_MAX_BYTES = 256 << 20
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".gif", ".bmp", ".webp")

XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
ALI_LICENSE_REF = "{http://www.niso.org/schemas/ali/1.0/}license_ref"

_ENTITY = etree.Entity
_COMMENT = etree.Comment
_PI = etree.PI
#: subtrees left out of paragraph and caption text
_SKIP_TEXT = frozenset({"fig", "fig-group", "table-wrap", "table-wrap-group", "supplementary-material", "graphic",
                        "inline-graphic", "media", "alternatives", "object-id"})
#: a paragraph under one of these is not a citing paragraph
_NOT_CITING = frozenset({"caption", "fig", "fig-group", "table-wrap", "table-wrap-group", "supplementary-material",
                         "table-wrap-foot", "ref-list", "front", "front-stub"})
_SECTION = frozenset({"sec", "app", "boxed-text", "ack", "abstract", "trans-abstract", "notes", "glossary", "bio"})
_INVISIBLE = re.compile("[\u2061\u2062\u2063\u2064\u200b\u00ad]")
_PMC = re.compile(r"(?i)^\s*(?:pmc)?\s*(\d+)\s*$")
_LOCAL = threading.local()
_FIG_WORD = re.compile(r"\b((?:[Ff]ig(?:ure)?s?|FIG(?:URE)?S?)\.?)[ \u00a0]*$")


def make_panel_id(article_id: str, figure_id: str | None, panel: str | None) -> str:
    """Deterministic record id: ``<article_id>|<figure_id or ->|<panel or ->``."""
    return f"{article_id}|{figure_id or '-'}|{panel or '-'}"


def _parser(recover: bool) -> etree.XMLParser:
    """One parser per thread and mode (lxml parsers are reusable, not thread-safe)."""
    cache = getattr(_LOCAL, "parsers", None)
    if cache is None:
        cache = _LOCAL.parsers = {}
    p = cache.get(recover)
    if p is None:
        p = cache[recover] = make_parser(recover)
    return p


def make_parser(recover: bool = False) -> etree.XMLParser:
    """The safe parser: no DTD, no entity expansion, no network, no size limits on text nodes."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        attribute_defaults=False,
        huge_tree=True,
        recover=recover,
    )


# --------------------------------------------------------------------------- text


def _entity_text(node: Any) -> str:
    name = node.name or ""
    cp = html.entities.name2codepoint.get(name)
    if cp is not None:
        return chr(cp)
    return html.entities.html5.get(name + ";", "")


def _walk(el: Any, parts: list[str]) -> None:
    """Text of ``el`` (without its tail) into ``parts``, leaving out :data:`_SKIP_TEXT` subtrees;
    iterative, so that a very deep tree cannot exhaust the recursion limit."""
    if el.text:
        parts.append(el.text)
    stack: list[tuple[Any, Any]] = [(None, iter(el))]
    while stack:
        owner, it = stack[-1]
        ch = next(it, None)
        if ch is None:
            stack.pop()
            if owner is not None and owner.tail:
                parts.append(owner.tail)
            continue
        tag = ch.tag
        if tag is _ENTITY:
            parts.append(_entity_text(ch))
        elif tag is _COMMENT or tag is _PI or tag in _SKIP_TEXT:
            pass
        else:
            if ch.text:
                parts.append(ch.text)
            stack.append((ch, iter(ch)))
            continue  # its tail follows its subtree
        if ch.tail:
            parts.append(ch.tail)


_XML_SPACE = re.compile(r"[ \t\r\n]+")


def _collapse(s: str) -> str:
    """``_XML_SPACE.sub(" ", s).strip(" ")`` (runs of XML whitespace become one space, no space at
    either end), with str methods instead of a regex scan: several times faster on real text."""
    if "\n" in s or "\t" in s or "\r" in s:
        s = s.replace("\n", " ").replace("\t", " ").replace("\r", " ")
    elif "  " not in s:
        return s.strip(" ")
    return " ".join(filter(None, s.split(" ")))


def _norm(s: str) -> str:
    if not s.isascii():
        if _INVISIBLE.search(s):
            s = _INVISIBLE.sub("", s)
        s = s.replace("\xa0", " ")
    return _collapse(s)


MML_MATH = "{http://www.w3.org/1998/Math/MathML}math"
#: elements whose presence sends text extraction down the careful (Python) path
_SLOW_ITER = tuple(_SKIP_TEXT) + (_ENTITY,)
_CHECK_ITER = _SLOW_ITER + (MML_MATH,)


def _normalize_space() -> etree.XPath:
    """libxml2's ``normalize-space()`` as a compiled XPath (one per thread), returning plain
    ``str`` (``smart_strings=False``: no result object that remembers its parent; ``regexp=False``:
    no EXSLT functions registered on every call)."""
    try:
        return _LOCAL.normalize_space
    except AttributeError:
        xp = _LOCAL.normalize_space = etree.XPath("normalize-space()", smart_strings=False, regexp=False)
        return xp


def _nbsp(t: str) -> str:
    """No-break spaces become plain spaces (``t`` is already whitespace-normalised)."""
    if "\xa0" in t:
        t = _collapse(t.replace("\xa0", " "))
    return t


def _leaf_text(t: str | None) -> str:
    """Normalised text of an element without children (its ``.text``)."""
    if not t:
        return ""
    t = _collapse(t)
    return t if t.isascii() else _nbsp(t)


def text_of(el: Any) -> str:
    """Whitespace-normalised text of an element without its tail, nested floats left out.

    Fast path (no nested float, entity reference or MathML): XPath ``normalize-space()`` in
    libxml2. Otherwise a Python walk that leaves out nested floats and maps entity references.
    Invisible MathML operators (U+2061-2064), zero-width spaces and soft hyphens are dropped
    where MathML or entities occur; no-break spaces become spaces; whitespace is XML
    whitespace (space, tab, CR, LF).
    """
    if el is None:
        return ""
    if not len(el):
        return _leaf_text(el.text)
    hits = el.iter(*_CHECK_ITER)
    hit = next(hits, None)
    if hit is None:
        t = _normalize_space()(el)
        return t if t.isascii() else _nbsp(t)
    # MathML only (the same traversal goes on past the formulas): libxml2's text, minus the
    # invisible operators
    if hit.tag == MML_MATH and all(h.tag == MML_MATH for h in hits):
        t = _normalize_space()(el)
        if t.isascii():
            return t
        if _INVISIBLE.search(t):
            t = _INVISIBLE.sub("", t)
            if "  " in t:
                t = _XML_SPACE.sub(" ", t)
        return _nbsp(t)
    parts: list[str] = []
    _walk(el, parts)
    return _norm("".join(parts))


# --------------------------------------------------------------------------- images


class ImageIndex:
    """Case-insensitive lookup of figure files in one folder (listed once, lazily).

    Regular files listed in the folder itself are returned as ``<root>/<name>``; a symlink, or an
    href with a sub-path, is followed and accepted only when its real path stays inside the
    folder's real path.
    """

    def __init__(self, root: str | os.PathLike[str], read_headers: bool = True) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.read_headers = read_headers
        self._real: str | None = None
        self._names: dict[str, str] | None = None
        self._stems: dict[str, list[str]] = {}
        self._plain: set[str] = set()

    def _load(self) -> None:
        names: dict[str, str] = {}
        stems: dict[str, list[str]] = {}
        plain: set[str] = set()
        exts = IMAGE_EXTENSIONS
        try:
            with os.scandir(self.root) as it:
                for entry in it:
                    try:
                        if entry.is_symlink():
                            if not entry.is_file():
                                continue
                        elif entry.is_file():
                            plain.add(entry.name)
                        else:
                            continue
                    except OSError:
                        continue
                    name = entry.name
                    low = name.lower()
                    names.setdefault(low, name)
                    dot = low.rfind(".")
                    if dot > 0 and low[dot:] in exts:
                        stems.setdefault(low[:dot], []).append(name)
        except OSError:
            pass
        self._names = names
        self._stems = stems
        self._plain = plain

    def _inside(self, path: str) -> str | None:
        if self._real is None:
            self._real = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if real.startswith(self._real + os.sep) and os.path.isfile(real):
            return real
        return None

    def _path(self, name: str) -> str | None:
        if name in self._plain:  # a regular file listed in root itself: no link to follow
            return self.root + os.sep + name
        return self._inside(os.path.join(self.root, name))  # a symlink: must stay inside root

    def _pick(self, names: list[str]) -> str | None:
        if len(names) == 1:
            return self._path(names[0])
        paths = [p for p in (self._path(n) for n in sorted(set(names))) if p]
        if len(paths) <= 1:
            return paths[0] if paths else None
        if not self.read_headers:
            order = {e: i for i, e in enumerate(IMAGE_EXTENSIONS)}
            return min(paths, key=lambda p: (order.get(os.path.splitext(p)[1].lower(), 99), p))
        return max(paths, key=_image_rank)

    def _lookup(self, base: str) -> list[str]:
        assert self._names is not None
        low = base.lower()
        found: list[str] = []
        exact = self._names.get(low)
        # os.path.splitext of a name without "/": the extension starts at the last dot, unless
        # only dots precede it
        dot = low.rfind(".")
        is_image = dot > 0 and low[dot:] in IMAGE_EXTENSIONS and bool(low[:dot].lstrip("."))
        if exact is not None and is_image:
            found.append(exact)
        found.extend(self._stems.get(low, ()))
        if is_image:
            found.extend(self._stems.get(low[:dot], ()))
        if not found and exact is not None:
            found.append(exact)  # an href naming a non-image extension we do not know
        return found

    def resolve(self, href: str | None) -> str | None:
        """Absolute path of the image named by ``href``, or None."""
        if not href or not href.strip():
            return None
        if self._names is None:
            self._load()
        ref = href.strip().split("#", 1)[0].split("?", 1)[0].replace("\\", "/")
        if "/" in ref and ":" not in ref and not ref.startswith("/"):
            direct = self._inside(os.path.normpath(os.path.join(self.root, ref)))
            if direct:
                return direct
        base = ref.rstrip("/").rsplit("/", 1)[-1]
        if not base or base in (".", ".."):
            return None
        variants = [base]
        if base.lower().startswith("journal."):
            variants.append(base[len("journal."):])
        else:
            variants.append("journal." + base)
        for v in variants:
            found = self._lookup(v)
            if found:
                return self._pick(found)
        return None


def _image_rank(path: str) -> tuple[float, int]:
    size = 0
    try:
        size = os.path.getsize(path)
    except OSError:
        pass
    try:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:  # reads the header only
                w, h = im.size
        return float(w) * float(h), size
    except Exception as exc:  # noqa: BLE001 - an unreadable candidate ranks last
        if type(exc).__name__ == "DecompressionBombError":
            return float("inf"), size
        return -1.0, size


# --------------------------------------------------------------------------- metadata


def _child(el: Any, tag: str) -> Any:
    """``el.find(tag)`` for a plain tag name: the first child with that tag, or None."""
    for ch in el:
        if ch.tag == tag:
            return ch
    return None


def _grandchild(el: Any, tag: str, sub: str) -> Any:
    """``el.find("tag/sub")``: the first ``sub`` child of any ``tag`` child, in document order."""
    for ch in el:
        if ch.tag == tag:
            for g in ch:
                if g.tag == sub:
                    return g
    return None


def _year(dates: Iterable[Any]) -> int | None:
    best: tuple[int, int] | None = None
    for d in dates:
        ye = _child(d, "year")  # d.findtext("year")
        y = ((ye.text or "") if ye is not None else "").strip()[:4]
        if len(y) != 4 or not y.isdigit() or not 1500 <= int(y) <= 2200:
            continue
        pt = d.get("pub-type")
        if pt is not None:
            pt = pt.lower()
            rank = 0 if pt == "epub" else 1 if pt == "ppub" else 2 if pt == "collection" else 3
        else:
            dt = (d.get("date-type") or "").lower()
            fmt = (d.get("publication-format") or "").lower()
            if dt in ("pub", "publication"):
                rank = 0 if fmt == "electronic" else 1 if fmt == "print" else 3
            else:
                rank = 2 if dt == "collection" else 3
        if best is None or (rank, int(y)) < best:
            best = (rank, int(y))
    return best[1] if best else None


def _joined_text(els: list[Any]) -> str:
    """``_norm(" ".join(text_of(e) for e in els))`` without the second pass in the common case
    (ASCII texts that are all non-empty are already normalised, and so is their join)."""
    texts = [text_of(e) for e in els]
    t = " ".join(texts)
    if t.isascii() and all(texts):
        return t
    return _norm(t)


def _license(perm: Any, am_lics: list[Any], am_cs: Any) -> tuple[str, str | None, str | None]:
    """Licence of the article: the first ``<license>`` scope among ``<permissions>`` (``perm``)
    and ``<article-meta>`` itself (``am_lics``: its ``<license>`` children), preferring English;
    else the first ``<copyright-statement>`` of the same scopes (``am_cs``: article-meta's)."""
    lics = [c for c in perm if c.tag == "license"] if perm is not None else []
    if not lics:
        lics = am_lics
    if lics:
        lic = next((x for x in lics if (x.get("{http://www.w3.org/XML/1998/namespace}lang") or "en") == "en"), lics[0])
        ref = _child(lic, ALI_LICENSE_REF)  # lic.findtext(ALI_LICENSE_REF)
        ali = ((ref.text or "") if ref is not None else "").strip() or None
        href = (lic.get(XLINK_HREF) or "").strip() or None
        url = ali or href
        paras = [c for c in lic if c.tag in ("license-p", "p")]
        text = _joined_text(paras) if paras else text_of(lic)
        if url is None:
            for link in lic.iter("ext-link", "uri"):
                h = link.get(XLINK_HREF) or link.text or ""
                if "creativecommons.org" in h:
                    url = h.strip()
                    break
        code = normalize_license(url=url, text=text or None, license_type=lic.get("license-type"))
        return code, url, text or None
    cs = _child(perm, "copyright-statement") if perm is not None else None
    if cs is None:
        cs = am_cs
    if cs is not None:
        text = text_of(cs)
        return normalize_license(text=text or None), None, text or None
    return "unknown", None, None


def _article_meta(root: Any, stem: str) -> dict[str, Any]:
    """Article metadata from ``<front>``: one pass over the children of ``<article-meta>``
    instead of one path search per field."""
    pmcid = doi = title = journal = None
    year = None
    lic: tuple[str, str | None, str | None] = ("unknown", None, None)
    front = _child(root, "front")
    if front is not None:
        am = jm = None
        for ch in front:
            tag = ch.tag
            if tag == "article-meta":
                if am is None:
                    am = ch
            elif tag == "journal-meta":
                if jm is None:
                    jm = ch
        if am is not None:
            title_el = perm = am_cs = None
            dates: list[Any] = []
            am_lics: list[Any] = []
            for ch in am:
                tag = ch.tag
                if tag == "article-id":
                    val = (ch.text or "").strip()
                    if not val:
                        continue
                    kind = (ch.get("pub-id-type") or "").lower()
                    if kind in ("pmc", "pmcid") and pmcid is None:
                        m = _PMC.match(val)
                        if m:
                            pmcid = f"PMC{int(m.group(1))}"
                    elif kind == "doi" and doi is None:
                        doi = val
                elif tag == "title-group":
                    if title_el is None:
                        title_el = _child(ch, "article-title")
                elif tag == "pub-date":
                    dates.append(ch)
                elif tag == "permissions":
                    if perm is None:
                        perm = ch
                elif tag == "license":
                    am_lics.append(ch)
                elif tag == "copyright-statement":
                    if am_cs is None:
                        am_cs = ch
            title = text_of(title_el) or None
            year = _year(dates)
            lic = _license(perm, am_lics, am_cs)
        if jm is not None:
            jt = _grandchild(jm, "journal-title-group", "journal-title")
            if jt is None:
                jt = _child(jm, "journal-title")
            journal = text_of(jt) or None
    article_id = pmcid or (f"doi:{doi}" if doi else f"file:{stem}")
    return dict(
        article_id=article_id, pmcid=pmcid, doi=doi, title=title, journal=journal, year=year,
        article_type=root.get("article-type") or None, license=lic[0], license_url=lic[1], license_text=lic[2],
    )


# --------------------------------------------------------------------------- figures and citations


def _short_text(el: Any) -> str:
    """text_of for small elements (labels, xrefs): skips the serialiser when there are no children."""
    if len(el):
        return text_of(el)
    return _leaf_text(el.text)


class _Fig:
    __slots__ = ("el", "id", "label", "title", "caption", "href", "group", "mentions")

    def __init__(self, el: Any, fid: str, group: str | None) -> None:
        self.el = el
        self.id = fid
        self.group = group
        # one pass over the figure's children: its first <label>, first <caption>, and its own
        # <graphic> (the first child <graphic>, or one inside the first <alternatives> holding one)
        lab = cap = None
        href = None
        found = False
        for ch in el:
            tag = ch.tag
            if tag == "label":
                if lab is None:
                    lab = ch
            elif tag == "caption":
                if cap is None:
                    cap = ch
            elif found:
                continue
            elif tag == "graphic":
                href = ch.get(XLINK_HREF)
                found = True
            elif tag == "alternatives":
                g = _child(ch, "graphic")
                if g is not None:
                    href = g.get(XLINK_HREF)
                    found = True
        self.label = (_short_text(lab) or None) if lab is not None else None
        title = None
        rest: list[str] = []
        if cap is not None:
            for ch in cap:
                tag = ch.tag
                if tag == "title":
                    title = text_of(ch) or None
                elif isinstance(tag, str) and tag not in _SKIP_TEXT:
                    t = text_of(ch)
                    if t:
                        rest.append(t)
        self.title = title
        if title:
            rest.insert(0, title)
        self.caption = " ".join(rest)
        self.href = href if found else _nested_graphic_href(el)
        # paragraph element -> [mention texts, named letters, some mention names no letter]
        self.mentions: dict[Any, list[Any]] = {}


def _nested_graphic_href(fig: Any) -> str | None:
    """The figure's graphic when it is not a child (nor in a child <alternatives>): the first
    descendant <graphic> outside any <caption>."""
    for g in fig.iter("graphic"):
        if not any(True for _ in g.iterancestors("caption")):
            return g.get(XLINK_HREF)
    return None


class _Paragraphs:
    """Where a citing paragraph sits, and its text and section title, each computed once."""

    def __init__(self) -> None:
        self.located: dict[Any, Any] = {}
        self.texts: dict[Any, str] = {}
        self.titles: dict[Any, str | None] = {}
        self.container: dict[Any, Any] = {}
        # element above a paragraph -> (it or an ancestor is a non-citing block, nearest section
        # container at or above it); shared by all the paragraphs of a section
        self.above: dict[Any, tuple[bool, Any]] = {}

    def locate(self, start: Any) -> Any:
        """The innermost <p> at or above ``start``, or None when there is none or it is not a
        citing paragraph (inside a caption, figure, table or supplementary material)."""
        located = self.located
        hit = located.get(start, _MISSING)
        if hit is not _MISSING:
            return hit
        el = start
        while el is not None:
            tag = el.tag
            if tag == "p":
                break
            if tag in _NOT_CITING:
                el = None
                break
            el = el.getparent()
        para = el
        if para is not None:
            blocked, container = self._above(para.getparent())
            if blocked:
                para = None
            else:
                self.container[para] = container
        located[start] = para
        return para

    def _above(self, el: Any) -> tuple[bool, Any]:
        """(blocked, container) of ``el``: whether ``el`` or an ancestor is in
        :data:`_NOT_CITING`, and the nearest section, appendix, box, abstract (…) with a title,
        or sub-article, at or above ``el``. Memoised; iterative (deep trees)."""
        above = self.above
        chain: list[Any] = []
        state: tuple[bool, Any] = (False, None)
        while el is not None:
            known = above.get(el)
            if known is not None:
                state = known
                break
            chain.append(el)
            el = el.getparent()
        for el in reversed(chain):
            if not state[0]:
                tag = el.tag
                if tag in _NOT_CITING:
                    state = (True, None)
                elif tag == "sub-article":
                    state = (False, el)
                elif tag in _SECTION and (tag in ("abstract", "trans-abstract") or _child(el, "title") is not None):
                    state = (False, el)
            above[el] = state
        return state

    def text(self, para: Any) -> str:
        t = self.texts.get(para)
        if t is None:
            t = self.texts[para] = text_of(para)
        return t

    def section(self, para: Any) -> str | None:
        c = self.container.get(para)
        if c is None:
            return None
        titles = self.titles
        if c in titles:
            return titles[c]
        if c.tag == "sub-article":
            t = c.find("front-stub/title-group/article-title")
            if t is None:
                t = c.find("front/article-meta/title-group/article-title")
            value = text_of(t) or c.get("article-type") or None
        else:
            value = text_of(_child(c, "title")) or None
            if value is None and c.tag in ("abstract", "trans-abstract"):
                value = "Abstract"
        titles[c] = value
        return value


_MISSING = object()
_ASCII_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _collect(root: Any) -> tuple[list[_Fig], list[Any]]:
    """One pass over the tree: every <fig> and every figure <xref>, in document order."""
    figs: list[Any] = []
    xrefs: list[Any] = []
    for el in root.iter("fig", "xref"):
        if el.tag == "fig":
            figs.append(el)
        elif el.get("ref-type") == "fig":
            xrefs.append(el)
    out: list[_Fig] = []
    seen: dict[str, int] = {}
    for i, el in enumerate(figs):
        if next(el.iterancestors("table-wrap"), None) is not None:
            continue
        fid = (el.get("id") or "").strip() or f"fig-{i + 1}"
        n = seen.get(fid, 0)
        seen[fid] = n + 1
        if n:
            fid = f"{fid}~{n + 1}"
        parent = el.getparent()
        group = None
        if parent is not None and parent.tag == "fig-group":
            group = (parent.get("id") or "").strip() or None
        out.append(_Fig(el, fid, group))
    return out, xrefs


def _cite(figs: list[_Fig], xrefs: list[Any]) -> _Paragraphs:
    by_id: dict[str, _Fig] = {}
    groups: dict[str, list[_Fig]] = {}
    for f in figs:
        f.mentions = {}
        raw = (f.el.get("id") or "").strip()
        if raw and raw not in by_id:
            by_id[raw] = f
        if f.group:
            groups.setdefault(f.group, []).append(f)
    paras = _Paragraphs()
    locate = paras.locate
    seen: dict[tuple[str, str | None], list[str]] = {}
    for x in xrefs:
        rids = (x.get("rid") or "").split()
        if not rids:
            continue
        if len(rids) == 1 and rids[0] in by_id:
            targets = [by_id[rids[0]]]
        else:
            targets = []
            for rid in rids:
                for f in ([by_id[rid]] if rid in by_id else groups.get(rid, ())):
                    if f not in targets:
                        targets.append(f)
            if not targets:
                continue
        parent = x.getparent()
        para = locate(parent)
        if para is None:
            continue
        mention = text_of(x) if len(x) else _leaf_text(x.text)
        if mention and mention[0].isdigit():
            # BMC style "Figure <xref>3A</xref>": take the word before the xref into the mention
            prev = x.getprevious()
            before = prev.tail if prev is not None else parent.text
            if before:
                m = _FIG_WORD.search(before)
                if m:
                    mention = f"{m.group(1)} {mention}"
        if mention and mention[-1].isdigit():
            tail = x.tail
            if tail and tail[0] in _ASCII_LETTERS:  # tail_letters needs a letter first
                glued = tail_letters(tail)
                if glued:
                    mention += glued
        for f in targets:
            key = (mention, f.label)
            letters = seen.get(key)
            if letters is None:
                letters = seen[key] = mention_panels(mention, f.label)
            entry = f.mentions.get(para)
            if entry is None:
                entry = f.mentions[para] = [[], [], False]
            entry[0].append(mention)
            if letters:
                named = entry[1]
                for ltr in letters:
                    if ltr not in named:
                        named.append(ltr)
            else:
                entry[2] = True
    return paras


# --------------------------------------------------------------------------- entry point


class _Counted:
    """File-object wrapper that refuses to deliver more than ``limit`` bytes."""

    def __init__(self, f: IO[bytes], limit: int) -> None:
        self.f, self.limit, self.n = f, limit, 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size if size is not None and size >= 0 else self.limit + 1 - self.n)
        self.n += len(data)
        if self.n > self.limit:
            raise ValueError(f"XML larger than {self.limit} bytes")
        return data


def _source_name(path: Any) -> tuple[str, str, str | None]:
    """(source string, stem, folder) of a path or file object."""
    if isinstance(path, (str, os.PathLike)):
        src = os.fspath(path)
        if isinstance(src, bytes):
            src = os.fsdecode(src)
        name = os.path.basename(src)
        stem = name
        low = name.lower()
        for suf in (".nxml", ".xml"):
            if low.endswith(suf):
                stem = name[: -len(suf)]
                break
        return src, stem or name, os.path.dirname(src) or "."
    name = getattr(path, "name", None)
    if isinstance(name, str) and name:
        return _source_name(name)
    return "<stream>", "stream", None


def _stub(meta: dict[str, Any], source: str, source_kind: str) -> Panel:
    return Panel(id=make_panel_id(meta["article_id"], None, None), source=source, source_kind=source_kind, **meta)


def ingest_jats_file(
    path: str | os.PathLike[str] | IO[bytes],
    image_root: str | os.PathLike[str] | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    read_image_headers: bool = True,
    recover: bool = False,
    source: str | None = None,
    source_kind: str = "jats",
) -> list[Panel | Rejected]:
    """Parse one JATS article and return its panels and rejects (never raises on bad input).

    ``path`` is a file path or a binary file object. ``image_root`` (default: the XML's folder)
    is where figure files are looked up. ``read_image_headers=False`` skips the Pillow header
    reads that pick the full-size file among several with one stem (then the extension order of
    :data:`IMAGE_EXTENSIONS` decides). ``source``/``source_kind`` override what the records say
    (the OA package reader passes the package path).
    """
    src, stem, folder = _source_name(path)
    if source is None:
        source = src

    def xml_error(detail: str, value: float | None = None) -> list[Panel | Rejected]:
        aid = f"file:{stem}"
        rec = Panel(id=make_panel_id(aid, None, None), source=source, source_kind=source_kind, article_id=aid)
        return [Rejected(rec, XML_ERROR, value=value, detail=detail)]

    parser = _parser(recover)
    try:
        if isinstance(path, (str, os.PathLike)):
            fs = os.fspath(path)
            size = os.path.getsize(fs)
            if size > max_bytes:
                return xml_error(f"file is {size} bytes, over the {max_bytes}-byte limit", size)
            if size == 0:
                return xml_error("empty file", 0)
            tree = etree.parse(fs, parser)
        else:
            tree = etree.parse(_Counted(path, max_bytes), parser)
        root = tree.getroot()
    except (etree.XMLSyntaxError, etree.ParseError) as exc:
        return xml_error(f"malformed XML: {exc}")
    except Exception as exc:  # noqa: BLE001 - never crash on bad input
        return xml_error(f"{type(exc).__name__}: {exc}")
    if root is None or not isinstance(root.tag, str):
        return xml_error("no root element")
    if root.tag != "article":
        return xml_error(f"root element is <{root.tag}>, not a JATS <article>")

    try:
        meta = _article_meta(root, stem)
        figs, xrefs = _collect(root)
        if not figs:
            return [Rejected(_stub(meta, source, source_kind), NO_FIGURES, value=0, detail="no <fig> element")]
        paras = _cite(figs, xrefs)
        if image_root is None:
            image_root = folder if folder is not None else os.getcwd()
        images = ImageIndex(image_root, read_headers=read_image_headers)
        aid = meta["article_id"]
        # phase by phase (tree text, then caption splitting, then image lookup, then records)
        # rather than figure by figure: each phase runs with its code and data warm in the cache
        cites = [_citing(f, paras) for f in figs]
        splits = [split_caption(f.caption) for f in figs]
        found = [images.resolve(f.href) for f in figs]
        out: list[Panel | Rejected] = []
        for f, cps, parts, image in zip(figs, cites, splits, found):
            out.extend(_figure_records(f, cps, parts, image, meta, aid, images, source, source_kind))
        return out
    except Exception as exc:  # noqa: BLE001 - a structure we did not foresee must not crash a run
        return xml_error(f"could not read the article structure: {type(exc).__name__}: {exc}")


def _citing(f: _Fig, paras: _Paragraphs) -> list[tuple[CitingParagraph, list[str]]]:
    """The figure's citing paragraphs (validated records) with the letters each one names."""
    cps: list[tuple[CitingParagraph, list[str]]] = []
    for para, (mentions, letters, whole) in f.mentions.items():
        panels = [] if whole else letters
        cp = _CITING({"text": paras.text(para), "mention": " | ".join(mentions), "panels": panels,
                      "section": paras.section(para)})
        cps.append((cp, panels))
    return cps


def _figure_records(
    f: _Fig, cps: list[tuple[CitingParagraph, list[str]]], parts: list[tuple[str, str]], image: str | None,
    meta: dict[str, Any], aid: str, images: ImageIndex, source: str, source_kind: str,
) -> list[Panel | Rejected]:
    # every record is validated (a plain dict through the model's validator: the same checks as
    # Panel(**kw), without building keyword arguments)
    common = dict(
        source=source, source_kind=source_kind, figure_id=f.id, figure_label=f.label, caption_title=f.title,
        caption=f.caption, graphic_href=f.href, image_path=image, full_image_path=image, **meta,
    )
    if not parts:
        common["id"] = make_panel_id(aid, f.id, None)
        common["panel"] = common["sub_caption"] = None
        common["panel_count"] = 1
        common["citing_paragraphs"] = [cp for cp, _ in cps]
        recs = [_PANEL(common)]
    else:
        letters = {x for x, _ in parts}
        n = len(parts)
        recs = []
        for letter, sub in parts:
            routed = [cp for cp, named in cps if not named or letter in named or not (letters & set(named))]
            recs.append(_PANEL({**common, "id": make_panel_id(aid, f.id, letter), "panel": letter,
                                "sub_caption": sub or None, "panel_count": n, "citing_paragraphs": routed}))
    if image is None:
        detail = f"graphic {f.href!r} not found in {images.root}" if f.href else "the figure has no <graphic>"
        return [Rejected(r, IMAGE_MISSING, detail=detail) for r in recs]
    return recs


# the models' own validators: exactly Panel.model_validate / CitingParagraph.model_validate (every
# field checked), without that classmethod's Python frame
_PANEL = Panel.__pydantic_validator__.validate_python
_CITING = CitingParagraph.__pydantic_validator__.validate_python
