"""PMC Open Access packages (``PMCxxxxxxx.tar.gz``: the article ``.nxml`` plus its figure files).

Reading
    The archive is read as a stream (``tarfile`` mode ``r|*``: gzip, bzip2, xz or plain), one
    member at a time, and is never unpacked with ``extract``/``extractall``. Only regular-file
    members that the ingest needs (``.nxml``/``.xml`` and image files, see
    :data:`~openmedreason.ingest.jats.IMAGE_EXTENSIONS`) are written, flat, into
    ``<work_dir>/<package stem>/`` under a sanitised base name (letters, digits, ``._-``; the
    member's folders are dropped, as JATS hrefs name files without folders). Files are created
    with ``O_EXCL | O_NOFOLLOW`` inside a folder this function has just created, so nothing can
    be written outside ``work_dir``. Other members (PDF, video, data) are skipped unread. The
    folder is emptied first, so a re-run gives the same result.

Refused members and caps
    A member is *unsafe* when its name is absolute (``/…``, ``C:…``) or has a ``..`` part, when
    it is a symbolic or hard link, a device, a FIFO or any other non-regular, non-directory type
    (sparse files included), or when it is larger than ``max_member_bytes``. A genuine PMC
    package never holds such a member, so its presence means the package was tampered with or
    damaged and none of its content is trusted: **the whole package is rejected** with one
    article-level ``ingest.unsafe_member`` record whose ``value`` is the number of refused
    members and whose ``detail`` lists them (name and why); the files already written for it
    are removed. Nothing of an unsafe member is ever written.
    Against decompression bombs, the declared sizes of *all* members (skipped ones included,
    since a stream must decompress them to pass them) count towards ``max_total_bytes`` and the
    number of members towards ``max_members``; going over either stops reading and rejects the
    package as ``ingest.archive_too_large``. A file that is not a readable archive (corrupt,
    truncated, wrong format) is ``ingest.archive_error``; a package without article XML is
    ``ingest.no_article``.

Ingest
    The article XML (the ``.nxml``; else the largest ``.xml`` whose root element is
    ``<article>``) goes through :func:`~openmedreason.ingest.jats.ingest_jats_file` with the
    extracted folder as ``image_root``; records carry ``source`` = the package path and
    ``source_kind="oa_package"``. Article-level rejects of the package use the ``article_id``
    ``PMC…`` when the package stem is a PMCID, else ``file:<package stem>``.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import zlib
from pathlib import Path
from lxml import etree

from openmedreason.ingest.jats import DEFAULT_MAX_BYTES, IMAGE_EXTENSIONS, ingest_jats_file, make_panel_id
from openmedreason.reasons import reason
from openmedreason.records import Panel
from openmedreason.run.steps import Rejected

__all__ = [
    "UNSAFE_MEMBER",
    "ARCHIVE_ERROR",
    "ARCHIVE_TOO_LARGE",
    "NO_ARTICLE",
    "SOURCE_KIND",
    "ingest_oa_package",
    "package_stem",
    "sanitize_name",
    "extracted_folder",
]

UNSAFE_MEMBER = reason(
    "ingest.unsafe_member",
    "the package holds a member that could escape the work folder (absolute path, '..', link, device) "
    "or is over the member size cap; the package is not ingested",
)
ARCHIVE_ERROR = reason("ingest.archive_error", "the package is not a readable tar archive (corrupt, truncated or another format)")
ARCHIVE_TOO_LARGE = reason(
    "ingest.archive_too_large", "the package unpacks to more bytes or members than allowed (decompression-bomb guard)"
)
NO_ARTICLE = reason("ingest.no_article", "the package holds no article XML (.nxml / .xml with an <article> root)")

SOURCE_KIND = "oa_package"
DEFAULT_MAX_MEMBER_BYTES = 256 << 20
DEFAULT_MAX_TOTAL_BYTES = 2 << 30
DEFAULT_MAX_MEMBERS = 20000

_XML_EXT = (".nxml", ".xml")
_NEEDED_EXT = _XML_EXT + IMAGE_EXTENSIONS
_NOT_ARTICLES = frozenset({"manifest.xml", "directives.xml", "transfer.xml", "mimetype.xml"})
_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_PMCID = re.compile(r"PMC\d+")
_CHUNK = 1 << 20
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)


class _TooLarge(Exception):
    pass


def sanitize_name(name: str) -> str:
    """A safe flat file name: runs of characters other than letters, digits, ``._-`` become
    ``_``; no leading dot; never empty, ``.`` or ``..``."""
    base = _SAFE_CHARS.sub("_", name).lstrip(".")
    return base[:200] or "_"


def package_stem(path: str | os.PathLike[str]) -> str:
    """``PMC3460867.tar.gz`` → ``PMC3460867`` (sanitised)."""
    name = os.path.basename(os.fspath(path))
    low = name.lower()
    for suf in (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar"):
        if low.endswith(suf):
            name = name[: -len(suf)]
            break
    return sanitize_name(name) or "package"


def _unsafe(member: tarfile.TarInfo, max_member_bytes: int) -> str | None:
    """Why a member must not be written, or None."""
    name = member.name
    if "\x00" in name:
        return "NUL byte in the name"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "absolute path"
    if ".." in norm.split("/"):
        return "'..' in the path"
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    if member.isdir():
        return None
    if not member.isreg() or member.issparse():
        return f"unsupported member type {member.type!r}"
    if member.size > max_member_bytes:
        return f"{member.size} bytes, over the {max_member_bytes}-byte member cap"
    return None


def _stub(article_id: str, source: str) -> Panel:
    return Panel(id=make_panel_id(article_id, None, None), source=source, source_kind=SOURCE_KIND, article_id=article_id)


def _clear(dest: str) -> None:
    if os.path.islink(dest) or os.path.isfile(dest):
        os.unlink(dest)
    elif os.path.isdir(dest):
        shutil.rmtree(dest)


def _write(tf: tarfile.TarFile, member: tarfile.TarInfo, target: str, limit: int) -> int:
    src = tf.extractfile(member)
    if src is None:
        raise tarfile.ReadError(f"cannot read member {member.name!r}")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_BINARY, 0o644)
    n = 0
    with os.fdopen(fd, "wb") as out:
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                break
            n += len(chunk)
            if n > limit:
                raise _TooLarge(f"member {member.name!r} delivered more than {limit} bytes")
            out.write(chunk)
    return n


def _is_article(path: str) -> bool:
    try:
        for _, el in etree.iterparse(path, events=("start",), resolve_entities=False, no_network=True,
                                     load_dtd=False, huge_tree=True):
            return etree.QName(el).localname == "article"
    except Exception:  # noqa: BLE001 - unreadable: let the JATS ingest report it
        return True
    return False


def _pick_article(dest: str, written: list[str]) -> str | None:
    nxml = [n for n in written if n.lower().endswith(".nxml")]
    if nxml:
        return max(nxml, key=lambda n: (os.path.getsize(os.path.join(dest, n)), n))
    xml = [n for n in written if n.lower().endswith(".xml") and n.lower() not in _NOT_ARTICLES]
    xml.sort(key=lambda n: (-os.path.getsize(os.path.join(dest, n)), n))
    for n in xml:
        if _is_article(os.path.join(dest, n)):
            return n
    return None


def ingest_oa_package(
    path: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    *,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_xml_bytes: int = DEFAULT_MAX_BYTES,
    read_image_headers: bool = True,
) -> list[Panel | Rejected]:
    """Read one PMC OA package safely and ingest its article (see the module docstring).

    Never raises on a bad package; returns the article's panels and rejects, or one
    article-level reject for the package.
    """
    source = os.fspath(path)
    stem = package_stem(source)
    article_id = stem if _PMCID.fullmatch(stem) else f"file:{stem}"

    def reject(code: str, detail: str, value: float | None = None) -> list[Panel | Rejected]:
        return [Rejected(_stub(article_id, source), code, value=value, detail=detail)]

    work = os.path.abspath(os.fspath(work_dir))
    dest = os.path.join(work, stem)
    try:
        os.makedirs(work, exist_ok=True)
        _clear(dest)
        os.mkdir(dest, 0o755)
    except OSError as exc:
        return reject(ARCHIVE_ERROR, f"cannot prepare the work folder {dest!r}: {exc}")

    unsafe: list[str] = []
    written: list[str] = []
    total = 0
    members = 0
    try:
        with open(source, "rb") as fh, tarfile.open(fileobj=fh, mode="r|*") as tf:
            for m in tf:
                members += 1
                if members > max_members:
                    raise _TooLarge(f"more than {max_members} members")
                total += max(int(m.size), 0)
                if total > max_total_bytes:
                    raise _TooLarge(f"members declare more than {max_total_bytes} bytes in all")
                why = _unsafe(m, max_member_bytes)
                if why is not None:
                    unsafe.append(f"{m.name!r} ({why})")
                    continue
                if unsafe or not m.isreg():
                    continue  # the package is already refused: write nothing more
                base = m.name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
                if not base.lower().endswith(_NEEDED_EXT):
                    continue
                target_name = sanitize_name(base)
                if target_name in written:
                    continue  # same base name in another folder: the first one wins
                _write(tf, m, os.path.join(dest, target_name), max_member_bytes)
                written.append(target_name)
    except _TooLarge as exc:
        _clear(dest)
        return reject(ARCHIVE_TOO_LARGE, str(exc), total)
    except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as exc:
        _clear(dest)
        return reject(ARCHIVE_ERROR, f"{type(exc).__name__}: {exc}")

    if unsafe:
        _clear(dest)
        shown = "; ".join(unsafe[:10]) + (f"; … {len(unsafe) - 10} more" if len(unsafe) > 10 else "")
        return reject(UNSAFE_MEMBER, f"refused {len(unsafe)} member(s): {shown}", len(unsafe))

    try:
        xml = _pick_article(dest, written)
    except OSError as exc:
        return reject(ARCHIVE_ERROR, f"cannot read the extracted files: {exc}")
    if xml is None:
        return reject(NO_ARTICLE, f"no article XML among {members} member(s)", 0)

    out = ingest_jats_file(
        os.path.join(dest, xml),
        image_root=dest,
        max_bytes=max_xml_bytes,
        read_image_headers=read_image_headers,
        source=source,
        source_kind=SOURCE_KIND,
    )
    return out


def extracted_folder(work_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Where :func:`ingest_oa_package` puts the files of ``path``."""
    return Path(os.path.abspath(os.fspath(work_dir))) / package_stem(path)
