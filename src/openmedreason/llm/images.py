"""Images as ``data:`` URLs: downscaled to a maximum side, JPEG or PNG.

The cache key never contains the encoded image: it contains the SHA-256 of the *source* bytes
plus the encoding settings (:func:`image_key`), so a cache hit costs a hash and no decoding.
An image that already fits and is already in the target format is sent byte-for-byte.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from collections import OrderedDict
from typing import Any

from openmedreason.llm.types import ImageInput

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


def sniff(data: bytes) -> str | None:
    if data.startswith(_PNG):
        return "png"
    if data.startswith(_JPEG):
        return "jpeg"
    return None


def image_key(img: ImageInput, data: bytes, max_side: int, fmt: str, quality: int, detail: str | None) -> dict[str, Any]:
    """The cache-key material of one image: source hash and encoding settings."""
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "max_side": max_side,
        "format": fmt,
        "quality": quality if fmt != "png" else None,
        "detail": img.detail or detail,
    }


def _to_8bit(im: Any) -> Any:
    import numpy as np
    from PIL import Image

    arr = np.asarray(im, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def encode_image(data: bytes, max_side: int, fmt: str = "auto", quality: int = 90) -> tuple[bytes, str]:
    """Downscale so the longer side is at most ``max_side``; return (bytes, mime type)."""
    from PIL import Image, ImageOps

    src = sniff(data)
    target = fmt if fmt != "auto" else ("png" if src == "png" else "jpeg")
    with Image.open(io.BytesIO(data)) as im:
        orientation = im.getexif().get(0x0112, 1) if src == "jpeg" else 1
        if max(im.size) <= max_side and src == target and orientation == 1:
            return data, f"image/{target}"
        im = ImageOps.exif_transpose(im)
        im.load()
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        im = _to_8bit(im)
    if max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if target == "png":
        if im.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
            im = im.convert("RGBA" if "A" in im.mode else "RGB")
        im.save(buf, format="PNG", optimize=False)
    else:
        if im.mode in ("RGBA", "LA", "P"):
            rgba = im.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.getchannel("A"))
            im = bg
        elif im.mode not in ("L", "RGB"):
            im = im.convert("RGB")
        im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), f"image/{target}"


_URLS: OrderedDict[tuple, str] = OrderedDict()
_URLS_MAX = 64
_URLS_LOCK = threading.Lock()


def data_url(data: bytes, sha: str, max_side: int, fmt: str = "auto", quality: int = 90) -> str:
    """``data:image/...;base64,...`` for the (downscaled) image; the last 64 are memoised by
    source hash (a repair call or several questions on one panel encode it once)."""
    key = (sha, max_side, fmt, quality)
    with _URLS_LOCK:
        url = _URLS.get(key)
        if url is not None:
            _URLS.move_to_end(key)
            return url
    out, mime = encode_image(data, max_side, fmt, quality)
    url = f"data:{mime};base64,{base64.b64encode(out).decode('ascii')}"
    with _URLS_LOCK:
        _URLS[key] = url
        while len(_URLS) > _URLS_MAX:
            _URLS.popitem(last=False)
    return url
