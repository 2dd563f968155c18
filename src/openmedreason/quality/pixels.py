"""A1 visual usability: pixel checks without a model (METHOD §3, A1).

Checks run in order and the first failure rejects, recording the reason code and the measured
value: decode (``a1.image_missing``, ``a1.empty_file``, ``a1.too_many_pixels``,
``a1.decode_error``, ``a1.truncated``), resolution (``a1.too_small``), aspect ratio
(``a1.aspect_ratio``), white border (``a1.white_border``), clarity (``a1.low_detail``,
``a1.blurry``), compression (``a1.compressed``). Size and aspect come from the header, so
images rejected there are never decoded.

Public API: :func:`load_image` (robust decode), :func:`measure` (one file → :class:`ImageCheck`),
:func:`check_images` (JSON-able dicts for ``omr check-image``), :func:`jpeg_quality`,
:func:`get_preset`, the presets :class:`DefaultPreset` / :class:`PaperPreset`, and the pipeline
step :class:`A1Pixels` (config :class:`A1PixelsConfig`).

Presets
-------
``paper`` reproduces the published reference exactly, at full resolution on the gray image
(Pillow ``convert("L")``): min side >= 224; aspect <= 3.0; in a border strip of width
max(5, 0.15·min(H, W)) the share of gray >= 150 must be <= 0.35 (the release's value);
var(Laplacian) >= 60 (``cv2.Laplacian``, 3x3 aperture); effective detail
W·H·mean(|Sobel|)/255 >= 224² (3x3 Sobel magnitude); mean variance of the 8x8 blocks < 20
over more than 10 blocks rejects as compressed.

``default`` is modality-robust:

* resolution / aspect: the published 224 px and 3.0.
* white border: the *blank white frame* around the content. On a small copy, rows and columns
  with fewer than 1 % of pixels below 235 are blank; the value is the share of the area outside
  the bounding box of the non-blank ones; reject above 0.40. (A strip-share rule cannot be used:
  charts, diagrams and tables sit on white, so even with 235 it rejects 68 of the 90 real
  figures and medical images here; with the release's 150 it rejects 84.)
* clarity, measured at *native* resolution (a blur of sigma 3 px on a 3000 px radiograph is
  invisible on a 1024 px copy, so a downscale cannot see it) on at most ``detail_budget_px``
  (128 Ki) pixels: the whole image when small enough, else up to 8 native tiles of 128x128
  (the tile grid is split into up to 8 regions and each gives its most detailed tile, judged
  on the small copy; tile origins stay on the 8-px grid):

  - ``contrast`` = p99.9 - p0.1 of gray < 16 → ``a1.low_detail``;
  - ``blur_effect``: the Crete et al. (2007) no-reference blur measure, computed exactly as
    ``skimage.measure.blur_effect`` (identical value on a whole image; integer arithmetic),
    0 sharp .. 1 blurred; > 0.725 → ``a1.blurry``;
  - line-art (charts, diagrams, tables: share of flat pure-white background ``flat_white``
    >= 0.15): ``edge_width``, the 5th percentile over gradient maxima of local contrast (15x15
    max - min) ÷ local peak step, i.e. how many pixels the sharpest edges take (1 for a crisp
    edge or line; a Gaussian blur of sigma gives ~2.5 sigma for edges, ~1.7 sigma for lines);
    > 4.4 px → ``a1.blurry``, and > 2.75 px when ``flat_white`` >= 0.45 (clearly line-art).
    Line-art needs this because the blur effect under-rates blurred thin lines (a sigma-4
    blurred chart can score 0.63, below sharp soft photographs).
* compression: JPEG quality estimated from the luminance quantisation table (IJG scaling,
  nearest of the 100 IJG tables; exact for libjpeg/Pillow/OpenCV files; needs no pixels) < 25,
  or an 8x8 blockiness ratio > 3.0 (mean |difference| across 8-px block boundaries ÷
  elsewhere; JPEGs at the known grid phase, other files at the strongest of 8 phases, so a
  JPEG re-saved as PNG and cropped is still seen) → ``a1.compressed``.

Evidence for the default thresholds (``full=True`` metrics; 90 real images that pass the size
and aspect checks: 19 medical images of ``examples/corpus/medical`` minus the 102 px
microaneurysms crop, the 66 figure JPEG/PNG/TIFF/GIF files of ``examples/corpus/articles``
that are large enough, skimage ``retina``/``ihc``/``cell`` and pydicom-data RG1 (chest CR
1955x1841, MONOCHROME1), MR2 and US1 converted to 8-bit PNG; degraded copies of each:
Gaussian blur at full resolution saved as PNG, JPEG quality 10, the same re-saved as PNG,
a white frame of 20 % of the longest side on every side, a downscale to 160 px short side):

===================  ==========================================  ==============================
metric               real images (90, all kept)                  degraded copies
===================  ==========================================  ==============================
white_margin         max 0.175 (Reed-Sternberg annotated          padded: min 0.483 (90/90)
                     micrograph), median 0.01
blur_effect          max 0.697 (skimage ``cell``, a smooth         sigma 4: continuous-tone min
                     phase image), 0.639 schistocytes, 0.611 RG1   0.750; 90/90 rejected
edge_width (line-    max 2.03 px (flat_white 0.81); blood smears  sigma 4: min 4.80 px;
art only)            with white background 3.30 (fw 0.21) and      sigma 3: min 3.38 px
                     3.88 (fw 0.27) stay under 4.4
jpeg_quality         min 40 (schistocytes), elife 90, others      quality 10: 10 (90/90)
                     78-99
blockiness           max 2.07 (a PNG chart)                        q10 re-saved as PNG: 15/90
                                                                   over 3.0 (smooth content:
                                                                   radiographs, fundus, MR, cell)
contrast             min 121                                       -
===================  ==========================================  ==============================

Gaussian sigma 3 at full resolution is rejected for 80/90; the 10 kept are continuous-tone
images whose blurred blur effect stays at 0.65-0.72 (e.g. histology, ultrasound, the COPD
radiograph) and two tables. They cannot be rejected without also rejecting skimage ``cell``
(0.697), whose own edges are as soft as a sigma-3 blur of a sharp radiograph; keeping every
real modality was preferred. Sigma 4 is rejected for all 90.

The ``paper`` preset on the same 90 real images keeps 3 (the CT, MR2 and US1): 84 fail the
white-border rule (gray >= 150 is "white": radiographs, histology, smears and every chart) and
3 fail the Laplacian: the fundus photograph ``retina.jpg`` (var 8.8, in the corpus and in
skimage) and skimage ``cell`` (1.9), which are sharp; this is why ``default`` exists. Even with
white = 235, ``paper`` keeps 11/90 (it rejects RG1 at var 27.1, schistocytes at 24.5, and five
small radiographs for effective detail < 224²).

Decode and speed
----------------
For colour JPEGs the default preset asks libjpeg for the luma plane only (``Image.draft("L")``):
no colour conversion or chroma upsampling; Y is the ITU-R 601 luma that ``convert("L")``
computes, and every default metric is a luma metric, so nothing measured changes. The DCT
is not scaled (the native pixels and the 8x8 grid are needed). Layout statistics use a
bilinear copy with the longest side <= 256; clarity and blockiness use the native tiles above.

:func:`measure` decodes into numpy without intermediate copies: a gray or luma-only JPEG and a
gray PNG or TIFF are decoded straight into the array (Pillow's loader fills image memory set up
over it; when a loader does not, which is detected, the usual copy is made); RGB, palette,
1-bit, RGBA and LA images run Pillow's own ``convert("L")`` conversion into it (alpha is then
composited on white with the same integer formula as :func:`load_image`); other modes go through
:func:`load_image`'s conversion. The analysis computes shared intermediates once (the stacked
tiles and their neighbour differences serve edge width and blockiness), works in 8/16-bit
integers with OpenCV primitives, and gives bit-identical values to the straightforward
formulations: the blur effect is computed from the [1, 2, 1]-smoothed image P, S(y) = P(y+1) -
P(y-1) and the telescoped box derivative B(y) = Q(y+5) - Q(y-6), Q = P(y) + P(y+1), and equals
``skimage.measure.blur_effect`` (tests compare them, per axis, on real and synthetic images and
on tile stacks); every keep/reject decision and every metric of the 90 real images, of 630
degraded copies and of the corpus files were compared before and after (identical), and
``tests/fixtures/a1_golden.json`` pins them. ``full=False`` (the pipeline step) stops at the first
failing check.

``bench/bench_a1.py`` prints A1 time ÷ plain Pillow decode time (``Image.open(p).load()``, the
same file, the same rounds) per image and the median over the 103 corpus and skimage images:
1.13-1.29 from run to run on a shared 2-core machine, typically 1.2 (1.65-1.87 before the
changes above; total time of all images 1.06-1.11, before 1.46-1.52). Large files cost less than
a plain decode (COPD radiograph 2957x2729: ~0.78; fundus 1411x1411: ~0.72; 898x898 radiograph:
~0.8; gray 4103x4151 TIFF: ~1.07). Small files do not reach 1.2: A1 needs ~1 ms of analysis for a
128 Ki-pixel sample plus ~0.1 ms of header work, while a whole 600x500 chart JPEG decodes in
~1 ms (eLife figures: 1.0-2.1, typically 1.2-1.3); smaller budgets were measured and lose the
separation between the soft skimage ``cell`` and sigma-4 blurred copies (``cell`` rejected at
64 Ki with 128 px tiles, a blurred table kept at 64 Ki with 64 px tiles). ``docs/quality.md`` has
the figures.

Known limits: a brightfield micrograph with >= 15 % flat clipped-white background and no
edge sharper than 4.4 px (>= 45 %: 2.75 px) is judged as line-art; images that are
legitimately soft at native size (upsampled by the publisher) can be rejected as blurry.
"""

from __future__ import annotations

import functools
import math
import os
import stat
import warnings
from dataclasses import dataclass, field
from typing import Annotated, Any, Iterable, Iterator, Literal, Sequence, Union

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from openmedreason.reasons import reason
from openmedreason.records import Panel
from openmedreason.run.steps import Rejected, Step, StepConfig, StepResult

__all__ = [
    "A1Pixels",
    "A1PixelsConfig",
    "DEFAULT_MAX_PIXELS",
    "DefaultPreset",
    "ImageCheck",
    "LoadedImage",
    "PaperPreset",
    "Preset",
    "check_images",
    "get_preset",
    "jpeg_quality",
    "load_image",
    "measure",
]

# --------------------------------------------------------------------------------------------
# reason codes
# --------------------------------------------------------------------------------------------

IMAGE_MISSING = reason("a1.image_missing", "image file not found, or the panel has no image path")
EMPTY_FILE = reason("a1.empty_file", "image file is zero bytes")
DECODE_ERROR = reason("a1.decode_error", "image cannot be decoded (unknown format, corrupt data, unreadable path)")
TRUNCATED = reason("a1.truncated", "image file is truncated: the data ends before the image is complete")
TOO_MANY_PIXELS = reason(
    "a1.too_many_pixels", "width x height above the per-call pixel cap (decompression-bomb guard); value = pixels"
)
TOO_SMALL = reason("a1.too_small", "shorter image side below the minimum resolution; value = min(W, H) in px")
ASPECT_RATIO = reason("a1.aspect_ratio", "aspect ratio max(W/H, H/W) above the maximum; value = the ratio")
WHITE_BORDER = reason(
    "a1.white_border",
    "too much white border; value = near-white share of the border strip (paper) or blank white margin share "
    "of the image area (default)",
)
BLURRY = reason(
    "a1.blurry",
    "image is blurred; value = Laplacian variance (paper), normalised blur effect or edge width in px (default)",
)
LOW_DETAIL = reason(
    "a1.low_detail",
    "too little visual detail; value = effective Sobel detail (paper), or p0.1-p99.9 gray contrast or the "
    "number of edge points (default)",
)
COMPRESSED = reason(
    "a1.compressed",
    "heavy lossy compression; value = mean 8x8 block variance (paper), JPEG quality estimated from the "
    "quantisation tables or 8x8 blockiness ratio (default)",
)

#: Default per-call pixel cap. Pillow's own global guard warns above ~89.5 MP and refuses above
#: twice that; we never rely on it: the cap below is checked from the header before any decode.
DEFAULT_MAX_PIXELS = 80_000_000


# --------------------------------------------------------------------------------------------
# presets
# --------------------------------------------------------------------------------------------


class _PresetBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_side: int = Field(224, description="reject when min(W, H) is below this (px)")
    max_aspect_ratio: float = Field(3.0, description="reject when max(W/H, H/W) is above this")
    white_level: int = Field(description="a gray value >= this counts as white")


class PaperPreset(_PresetBase):
    """The published reference thresholds (METHOD §3 A1), computed at full resolution."""

    kind: Literal["paper"] = "paper"
    white_level: int = Field(150, description="release value: gray >= 150 is 'near-white' (aggressive)")
    border_strip_fraction: float = Field(0.15, description="border strip width = max(min_px, fraction * min(H, W))")
    border_strip_min_px: int = 5
    max_border_white_share: float = Field(0.35, description="reject when the strip's near-white share is above this")
    min_laplacian_var: float = Field(60.0, description="reject as blurry when var(Laplacian) is below this")
    min_effective_detail: float = Field(224.0 * 224.0, description="reject when W*H*mean(|Sobel|)/255 is below this")
    min_block_variance: float = Field(20.0, description="reject as compressed when mean 8x8-block variance is below")
    min_blocks: int = Field(10, description="the block-variance rule applies only over more than this many blocks")


class DefaultPreset(_PresetBase):
    """Modality-robust measures; thresholds chosen from real images and degraded copies (module docstring)."""

    kind: Literal["default"] = "default"
    white_level: int = Field(235, description="gray >= 235 is white")
    # layout
    max_white_margin: float = Field(
        0.40, description="reject when the blank white frame around the content covers more than this share of the area"
    )
    margin_row_ink: float = Field(
        0.01, description="a row/column is blank when fewer than this share of its pixels are below white_level"
    )
    # clarity
    min_contrast: float = Field(16.0, description="reject as low_detail when p99.9 - p0.1 of gray is below this")
    min_edge_points: int = Field(50, description="reject as low_detail with fewer edge points than this")
    max_blur_effect: float = Field(0.725, description="reject when the Crete blur effect (0 sharp .. 1 blurred) is above")
    lineart_min_flat_white: float = Field(
        0.15, description="line-art (charts, diagrams, tables): flat white background share at least this"
    )
    max_edge_width: float = Field(4.4, description="line-art: reject when the p5 edge width (px) is above this")
    lineart_strict_flat_white: float = Field(0.45, description="clearly line-art: flat white share at least this")
    max_edge_width_strict: float = Field(2.75, description="clearly line-art: reject when p5 edge width is above this")
    edge_width_percentile: float = Field(5.0, description="edge width statistic: this percentile (the sharpest edges)")
    # compression
    min_jpeg_quality: float = Field(25.0, description="reject JPEGs whose IJG-equivalent quality is below this")
    max_blockiness: float = Field(3.0, description="reject when the 8x8 blockiness ratio is above this")
    # speed / sampling
    fast_decode: bool = Field(True, description="JPEG: let libjpeg output luma only (draft 'L'); metrics use luma")
    coarse_max_side: int = Field(256, description="longest side of the coarse copy used for layout statistics")
    detail_budget_px: int = Field(
        128 * 1024, description="native-resolution pixels analysed for clarity/blockiness (whole image if smaller)"
    )
    detail_tile_px: int = Field(128, description="native tile size when sampling (multiple of 8)")

    @field_validator("detail_tile_px")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v < 32 or v % 8:
            raise ValueError("detail_tile_px must be a multiple of 8 and >= 32")
        return v


Preset = Annotated[Union[PaperPreset, DefaultPreset], Field(discriminator="kind")]
_PRESETS: dict[str, type[PaperPreset] | type[DefaultPreset]] = {"paper": PaperPreset, "default": DefaultPreset}


def get_preset(preset: str | PaperPreset | DefaultPreset = "default", **overrides: Any) -> PaperPreset | DefaultPreset:
    """A preset by name (``"default"`` or ``"paper"``) or as given, with individual thresholds overridden."""
    if isinstance(preset, str):
        try:
            cls = _PRESETS[preset]
        except KeyError:
            raise ValueError(f"unknown A1 preset {preset!r}; expected one of {sorted(_PRESETS)}") from None
        return cls(**overrides)
    if overrides:
        return preset.model_validate({**preset.model_dump(), **overrides})
    return preset


# --------------------------------------------------------------------------------------------
# robust decode
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedImage:
    """Outcome of :func:`load_image`: an 8-bit image, or a reject reason. Never an exception."""

    path: str
    image: Image.Image | None = None
    reason: str | None = None
    value: float | None = None
    detail: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None  # the file's mode, before normalisation
    frames: int | None = None
    quantization: dict[int, list[int]] | None = None
    luma_decode: bool = False  # JPEG decoded straight to luma by libjpeg
    file_size: int | None = None

    @property
    def ok(self) -> bool:
        return self.image is not None


class _Fail(Exception):
    def __init__(self, code: str, value: float | None = None, detail: str | None = None) -> None:
        super().__init__(detail or code)
        self.code, self.value, self.detail = code, value, detail


def _open(path: str | os.PathLike[str] | None, max_pixels: int, out: LoadedImage) -> Image.Image:
    """Open and read the header only; fill ``out``'s header fields; raise :class:`_Fail`."""
    if path is None:
        raise _Fail(IMAGE_MISSING, detail="no image path")
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise _Fail(IMAGE_MISSING, detail=f"not found: {p}") from None
    except OSError as e:
        raise _Fail(DECODE_ERROR, detail=f"cannot stat: {e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _Fail(DECODE_ERROR, detail="not a regular file")
    out.file_size = int(st.st_size)
    if st.st_size == 0:
        raise _Fail(EMPTY_FILE, value=0)
    try:
        with warnings.catch_warnings():
            # our own per-call cap (below) decides; Pillow's global guard only backs it up;
            # Pillow's UserWarnings (corrupt EXIF, ...) are not ours to print
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)
            im = Image.open(p)
    except Image.DecompressionBombError as e:
        raise _Fail(TOO_MANY_PIXELS, detail=f"Pillow refused: {e}") from None
    except UnidentifiedImageError:
        raise _Fail(DECODE_ERROR, detail="unidentified image format") from None
    except Exception as e:  # any parser failure on arbitrary bytes is a reason, not a crash
        raise _Fail(DECODE_ERROR, detail=f"{type(e).__name__}: {e}") from None
    out.width, out.height = im.size
    out.format, out.mode = im.format, im.mode
    try:
        out.frames = int(getattr(im, "n_frames", 1) or 1)  # GIF: scans the frames, keeps frame 0
    except Exception:
        out.frames = None
    try:
        q = getattr(im, "quantization", None)
        if q:
            out.quantization = {int(k): list(v) for k, v in q.items()}
    except Exception:
        out.quantization = None
    w, h = im.size
    if w <= 0 or h <= 0:
        im.close()
        raise _Fail(DECODE_ERROR, detail=f"invalid size {w}x{h}")
    if w * h > max_pixels:
        im.close()
        raise _Fail(TOO_MANY_PIXELS, value=float(w * h), detail=f"{w}x{h} > cap {max_pixels}")
    return im


def _load(
    im: Image.Image, target: Literal["L", "RGB"], fast: bool, out: LoadedImage, *, into_array: bool = False
) -> np.ndarray | None:
    """Decode the first frame (``im.load()``), mapping decoder failures to reasons.

    With ``into_array``, a JPEG, PNG or TIFF whose decoded mode is L (luma-only JPEG or a gray
    file) is decoded straight into a new numpy array, which is returned (no intermediate image and
    no copy); otherwise, or when Pillow does not decode into it, None."""
    arr: np.ndarray | None = None
    try:
        if im.tell() != 0:
            im.seek(0)  # multi-frame (GIF, TIFF): the first frame
        if fast and target == "L" and im.format == "JPEG" and im.mode == "RGB":
            # libjpeg writes the Y (luma) plane directly: no colour conversion, no chroma upsampling.
            # Y is the ITU-R 601 luma that convert("L") would compute (up to rounding).
            if im.draft("L", None) is not None and im.mode == "L":
                out.luma_decode = True
        core = None
        if into_array and im.mode == "L" and _decodes_in_place(im):
            arr, core = _gray_buffer(im.size)
            if core is not None:
                im.im = core  # ImageFile.load_prepare keeps image memory of the right mode and size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            im.load()
        if core is not None and im.im is not core:
            arr = None  # this Pillow allocated its own image memory: the caller converts as usual
    except Image.DecompressionBombError as e:
        raise _Fail(TOO_MANY_PIXELS, detail=str(e)) from None
    except Exception as e:  # corrupt data can surface as almost any exception in a decoder
        msg = f"{type(e).__name__}: {e}"
        if "truncated" in str(e).lower() or _data_past_eof(im, out.file_size):
            raise _Fail(TRUNCATED, detail=msg) from None
        raise _Fail(DECODE_ERROR, detail=msg) from None
    return arr


def _decodes_in_place(im: Image.Image) -> bool:
    """Formats whose loader decodes into image memory set before ``load()`` (single frame, not
    yet loaded; a TIFF only when stored upright). Anything else is detected after the load."""
    if not im.tile or getattr(im, "_im", None) is not None:
        return False
    if im.format == "JPEG":
        return True
    if im.format == "PNG":
        return not getattr(im, "is_animated", False)
    if im.format == "TIFF":
        return getattr(im, "_tile_size", None) == im.size and getattr(im, "n_frames", 1) == 1
    return False


def _gray_buffer(size: tuple[int, int]) -> tuple[np.ndarray, Any] | tuple[None, None]:
    """A new (H, W) uint8 array and a Pillow image core ("L") that uses its memory."""
    w, h = size
    arr = np.empty((h, w), np.uint8)
    try:
        return arr, Image.core.map_buffer(arr, (w, h), "raw", 0, ("L", 0, 1))
    except Exception:  # pragma: no cover - a Pillow without buffer mapping
        return None, None


def _decode(im: Image.Image, target: Literal["L", "RGB"], fast: bool, out: LoadedImage) -> Image.Image:
    """Decode the first frame and normalise it to 8-bit ``target``; alpha is composited on white."""
    _load(im, target, fast, out)
    try:
        return to_mode(im, target)
    except Exception as e:
        raise _Fail(DECODE_ERROR, detail=f"cannot convert mode {im.mode}: {type(e).__name__}: {e}") from None


def _decode_gray(im: Image.Image, fast: bool, out: LoadedImage) -> np.ndarray:
    """:func:`_decode` to ``"L"``, as a C-contiguous (H, W) uint8 array, with fewer copies: a
    gray or luma-only JPEG and a gray PNG/TIFF decode straight into the array; RGB, 1-bit,
    palette (without transparency), RGBA and LA images run the C conversion of ``convert("L")``
    into it (RGBA/LA then composited on white as :func:`to_mode` does); other modes go through
    :func:`to_mode`. Every path gives the array :func:`load_image` would (tested)."""
    arr = _load(im, "L", fast, out, into_array=True)
    if arr is not None:
        return arr
    if im.mode in ("RGB", "1", "RGBA", "LA") or (im.mode == "P" and "transparency" not in im.info):
        # the C conversion that convert("L") runs (P: through the palette), into the array
        buf, core = _gray_buffer(im.size)
        if core is not None:
            try:
                if im.mode in ("RGBA", "LA"):
                    im.im.convert_into(core)  # the colour, alpha ignored, as convert("L") does
                    return _on_white(buf, np.asarray(im.getchannel("A")))
                im.im.convert_into(core)
                return buf
            except Exception:  # pragma: no cover - fall back to convert("L") below
                pass
    try:
        gimg = to_mode(im, "L")
    except Exception as e:
        raise _Fail(DECODE_ERROR, detail=f"cannot convert mode {im.mode}: {type(e).__name__}: {e}") from None
    g = np.asarray(gimg)
    if g.ndim != 2 or g.dtype != np.uint8:
        g = np.asarray(gimg.convert("L"))
    if gimg is not im:
        gimg.close()
    return g


def _on_white(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``gray`` composited on white with ``alpha``, in place: the integer formula of
    :func:`to_mode`, ``(c a + 255 (255 - a) + 127) // 255`` = ``255 - round((255 - c) a / 255)``
    (never a tie: ``(255 - c) a / 255`` is at least 0.002 from a half; exact for all 65536 pairs)."""
    t = cv2.multiply(cv2.bitwise_not(gray), alpha, scale=1.0 / 255)
    return cv2.bitwise_not(t, dst=gray)


def _data_past_eof(im: Image.Image, file_size: int | None) -> bool:
    """True when the header points at image data beyond the end of the file (TIFF strips or
    tiles; other formats say "truncated" in their error message)."""
    try:
        tags = getattr(im, "tag_v2", None)
        if tags is None or not file_size:
            return False
        offsets = tags.get(273) or tags.get(324)
        counts = tags.get(279) or tags.get(325)
        if not offsets or not counts:
            return False
        return max(int(o) + int(c) for o, c in zip(offsets, counts)) > file_size
    except Exception:
        return False


def to_mode(im: Image.Image, target: Literal["L", "RGB"]) -> Image.Image:
    """Any decoded image as plain 8-bit ``L`` or ``RGB``: high bit depth stretched to its value
    range, alpha composited on white, CMYK/palette converted. The one conversion A1, the
    exports and training use."""
    mode = im.mode
    if mode == target:
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F") or mode.startswith("I;"):
        # high bit depth: stretch the actual value range to 0..255 (a 12-bit scan in a 16-bit
        # container would otherwise be near-black, and convert("L") would clip it)
        a = np.asarray(im)
        a = a.astype(np.float32, copy=False)
        finite = np.isfinite(a)
        if not finite.all():
            a = np.where(finite, a, 0.0)
        lo, hi = float(a.min()), float(a.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        g = Image.fromarray(((a - lo) * scale + 0.5).astype(np.uint8), "L")
        return g if target == "L" else g.convert("RGB")
    if mode == "P":
        if "transparency" not in im.info:
            return im.convert(target)  # straight through the palette
        im = im.convert("RGBA")
        mode = "RGBA"
    elif mode in ("RGBa", "La"):
        im = im.convert("RGBA")
        mode = "RGBA"
    elif mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA"):
        color = im.convert(target)
        alpha = np.asarray(im.getchannel("A"), dtype=np.uint16)
        c = np.asarray(color, dtype=np.uint16)
        if c.ndim == 3:
            alpha = alpha[:, :, None]
        comp = (c * alpha + 255 * (255 - alpha) + 127) // 255
        return Image.fromarray(comp.astype(np.uint8), target)
    if mode in ("1", "L", "RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return im.convert(target)
    return im.convert("RGB").convert(target) if target == "L" else im.convert("RGB")


def load_image(
    path: str | os.PathLike[str] | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    mode: Literal["L", "RGB"] = "RGB",
    fast: bool = False,
) -> LoadedImage:
    """Decode any image file robustly into an 8-bit ``mode`` image, or a reject reason.

    * per-call decompression-bomb cap: ``width * height > max_pixels`` (from the header, before
      any pixel is decoded) gives ``a1.too_many_pixels``; Pillow's global guard is only a backstop;
    * CMYK, palette, 1-bit and high-bit-depth (``I;16``, ``I``, ``F``: value range stretched to
      0..255) are converted; alpha (``LA``/``RGBA``/``PA``/palette transparency) is composited on
      white; multi-frame files (GIF, TIFF) give their first frame;
    * missing → ``a1.image_missing``, zero bytes → ``a1.empty_file``, truncated data →
      ``a1.truncated``, anything else Pillow cannot read → ``a1.decode_error``.

    ``fast=True`` with ``mode="L"`` lets libjpeg decode only the luma plane of colour JPEGs.
    """
    out = LoadedImage(path="" if path is None else os.fspath(path))
    try:
        im = _open(path, max_pixels, out)
        try:
            out.image = _decode(im, mode, fast, out)
        finally:
            if out.image is not im:
                im.close()
    except _Fail as f:
        out.reason, out.value, out.detail = f.code, f.value, f.detail
    return out


# --------------------------------------------------------------------------------------------
# JPEG quality from the quantisation tables
# --------------------------------------------------------------------------------------------

# IJG (libjpeg) standard luminance quantisation table, natural (row-major) order; Pillow reports
# ``Image.quantization`` tables in this order.
_IJG_LUMA = np.array(
    [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
     14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
     18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
     49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99],
    dtype=np.float64,
)  # fmt: skip


def _ijg_tables() -> np.ndarray:
    qs = np.arange(1, 101, dtype=np.float64)
    scale = np.where(qs < 50, 5000.0 / qs, 200.0 - 2.0 * qs)
    t = np.floor((_IJG_LUMA[None, :] * scale[:, None] + 50.0) / 100.0)
    return np.clip(t, 1, 255)


_IJG_TABLES = _ijg_tables()  # (100, 64): row q-1 is the luma table libjpeg writes at quality q


def jpeg_quality(quantization: dict[int, Sequence[int]] | None) -> float | None:
    """IJG-equivalent quality (1..100) of a JPEG from its luminance quantisation table.

    Exact for files written by libjpeg/Pillow/OpenCV (the table is the IJG table scaled by
    quality); for other encoders the nearest IJG quality (least mean absolute table difference).
    No pixels are needed: the tables are in the header.
    """
    if not quantization:
        return None
    t = quantization.get(0)
    if t is None or len(t) != 64:
        return None
    return _table_quality(tuple(t))


@functools.lru_cache(maxsize=256)
def _table_quality(t: tuple[int, ...]) -> float:
    # a corpus uses few distinct tables (one per encoder setting): remember them
    err = np.abs(_IJG_TABLES - np.asarray(t, dtype=np.float64)[None, :]).mean(axis=1)
    return float(int(np.argmin(err)) + 1)


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


class ImageCheck(BaseModel):
    """A1 result for one image: keep or the first failing check with its measured value."""

    model_config = ConfigDict(extra="forbid")

    path: str
    keep: bool
    reason: str | None = None
    value: float | None = Field(None, description="the measured value that failed the check")
    detail: str | None = None
    preset: str = "default"
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    frames: int | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Flat JSON-able dict: path, keep, reason, value, header fields, then every metric."""
        d: dict[str, Any] = {
            "path": self.path,
            "keep": self.keep,
            "reason": self.reason,
            "value": self.value,
            "detail": self.detail,
            "preset": self.preset,
            "width": self.width,
            "height": self.height,
            "format": self.format,
            "mode": self.mode,
            "frames": self.frames,
        }
        for k, v in self.metrics.items():
            d[k] = None if v is None or not math.isfinite(v) else v
        return d


# --------------------------------------------------------------------------------------------
# measures
# --------------------------------------------------------------------------------------------


def _coarse(g: np.ndarray, max_side: int) -> np.ndarray:
    """Small copy (longest side <= max_side) for layout statistics and tile selection.

    Bilinear sampling (each output pixel blends a 2x2 neighbourhood): far cheaper than area
    averaging and good enough for margins, background share and where the detail is."""
    h, w = g.shape
    f = max(h, w) / max_side
    if f <= 1:
        return g
    size = (max(1, round(w / f)), max(1, round(h / f)))
    return cv2.resize(g, size, interpolation=cv2.INTER_LINEAR)


def _ink(c: np.ndarray, white: int) -> np.ndarray:
    """1 where the gray value is below ``white`` (ink), else 0 (uint8)."""
    if white <= 0:
        return np.zeros_like(c)
    if white > 255:
        return np.ones_like(c)
    return cv2.threshold(c, white - 1, 1, cv2.THRESH_BINARY_INV)[1]


def _white_margin(c: np.ndarray, white: int, row_ink: float, ink: np.ndarray | None = None) -> float:
    """Share of the area outside the bounding box of non-blank rows/columns (1.0: all blank)."""
    if ink is None:
        ink = _ink(c, white)
    h, w = c.shape
    rsum, csum = _axis_sums(ink)
    rows = np.flatnonzero(rsum > row_ink * w)
    cols = np.flatnonzero(csum > row_ink * h)
    if rows.size == 0 or cols.size == 0:
        return 1.0
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    return float(1.0 - box / (h * w))


def _axis_sums(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row sums and column sums of a uint8 image (int64; one integral-image pass, exact)."""
    ii = cv2.integral(a, sdepth=cv2.CV_64F) if a.size * 255 >= 2**31 else cv2.integral(a)
    return np.diff(ii[:, -1]).astype(np.int64), np.diff(ii[-1, :]).astype(np.int64)


_K3 = np.ones((3, 3), np.uint8)
_K15 = np.ones((15, 15), np.uint8)


def _flat_white(c: np.ndarray, white: int, ink: np.ndarray | None = None) -> float:
    """Share of pixels that are white and locally flat (3x3 range <= 2): a line-art background."""
    if ink is None:
        ink = _ink(c, white)
    rng = cv2.morphologyEx(c, cv2.MORPH_GRADIENT, _K3)  # 3x3 range
    flat = cv2.threshold(rng, 2, 1, cv2.THRESH_BINARY_INV)[1]  # 1 where the range is <= 2
    return float((cv2.countNonZero(flat) - cv2.countNonZero(cv2.bitwise_and(flat, ink))) / c.size)


def _percentiles(c: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    hist = cv2.calcHist([c], [0], None, [256], [0, 256]).ravel()
    cdf = np.cumsum(hist) / hist.sum()
    return float(np.searchsorted(cdf, lo / 100.0)), float(np.searchsorted(cdf, hi / 100.0))


def _absdiff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|a - b|`` of two uint8 arrays (cv2.absdiff, which gives None for empty arrays)."""
    return cv2.absdiff(a, b) if a.size else np.zeros(a.shape, np.uint8)


class _Detail:
    """Native-resolution pixels to analyse: the whole image, or a sample of tiles (tile origins
    are multiples of the tile size, so of 8: the JPEG block grid is kept). The stacked layouts
    and the neighbour differences are computed once and shared by the clarity and compression
    measures."""

    def __init__(self, tiles: list[np.ndarray], whole: bool) -> None:
        self.tiles = tiles
        self.whole = whole
        self._vstack: np.ndarray | None = None
        self._hstack: np.ndarray | None = None
        self._diffs: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def pixels(self) -> int:
        return int(sum(t.size for t in self.tiles))

    @property
    def vstack(self) -> np.ndarray:
        """Tiles one above the other (horizontal filters never cross a seam)."""
        if self._vstack is None:
            self._vstack = self.tiles[0] if self.whole else np.concatenate(self.tiles, axis=0)
        return self._vstack

    @property
    def hstack(self) -> np.ndarray:
        """Tiles side by side (vertical filters never cross a seam)."""
        if self._hstack is None:
            self._hstack = self.tiles[0] if self.whole else np.concatenate(self.tiles, axis=1)
        return self._hstack

    @property
    def diffs(self) -> tuple[np.ndarray, np.ndarray]:
        """|horizontal| (h, w-1) and |vertical| (h-1, w) neighbour differences of :attr:`vstack`
        (uint8; the vertical ones across a seam join two tiles: see :meth:`seams`)."""
        if self._diffs is None:
            r = self.vstack
            self._diffs = (_absdiff(r[:, 1:], r[:, :-1]), _absdiff(r[1:, :], r[:-1, :]))
        return self._diffs

    def seams(self) -> list[int]:
        """Rows of :attr:`vstack` where a new tile starts."""
        if self.whole:
            return []
        t = self.tiles[0].shape[0]
        return [j * t for j in range(1, len(self.tiles))]


def _pick_tiles(score: np.ndarray, k: int, *, python: bool | None = None) -> list[int]:
    """Flat indices (ascending) of the tiles to analyse, from the (ny, nx) tile scores: one tile
    per stratum. The tile grid is split into ~k regions (sy x sx) and each region gives its most
    detailed tile (the first of equal scores), so the sample follows the detail but still spans
    the whole image. ``python``: force one of the two equivalent implementations (default: pure
    Python for the usual few dozen tiles, numpy for large grids)."""
    ny, nx = score.shape
    sy = max(1, min(ny, round(math.sqrt(k * ny / nx))))
    sx = max(1, min(nx, k // sy))
    if python is None:
        python = ny * nx <= 256
    if python:
        iy = [(y * sy) // ny for y in range(ny)]
        ix = [(x * sx) // nx for x in range(nx)]
        best: dict[int, tuple[float, int]] = {}
        for i, sc in enumerate(score.ravel().tolist()):
            st = iy[i // nx] * sx + ix[i % nx]
            if st not in best or sc > best[st][0]:
                best[st] = (sc, i)
        return sorted(i for _, i in best.values())
    stratum = (((np.arange(ny) * sy) // ny)[:, None] * sx + ((np.arange(nx) * sx) // nx)[None, :]).ravel()
    flat = score.ravel()
    order = np.lexsort((-flat, stratum))  # by stratum, then by descending score (stable: first index)
    first = np.ones(order.size, bool)
    first[1:] = stratum[order][1:] != stratum[order][:-1]
    return sorted(order[first].tolist())


def _detail(g: np.ndarray, c: np.ndarray, budget: int, tile: int) -> _Detail:
    h, w = g.shape
    ny, nx = h // tile, w // tile
    k = max(1, budget // (tile * tile))
    if h * w <= budget or ny * nx <= k:
        return _Detail([g], True)
    # detail score: |dx| + |dy| (forward differences, 0 past the last row/column; exact small
    # integers in float32) on the part of the coarse copy that the tile grid covers, area-averaged
    # per tile
    ch, cw = c.shape
    sh, sw = max(1, round(ny * tile * ch / h)), max(1, round(nx * tile * cw / w))
    c1 = c[: min(ch, sh + 1), : min(cw, sw + 1)]
    zero = cv2.BORDER_CONSTANT
    dxc = cv2.copyMakeBorder(_absdiff(c1[:, 1:], c1[:, :-1]), 0, 0, 0, 1, zero, value=0)
    dyc = cv2.copyMakeBorder(_absdiff(c1[1:, :], c1[:-1, :]), 0, 1, 0, 0, zero, value=0)
    e = cv2.add(dxc, dyc, dtype=cv2.CV_32F)
    score = cv2.resize(e[:sh, :sw], (nx, ny), interpolation=cv2.INTER_AREA)
    tiles = []
    for i in _pick_tiles(score, k):
        y, x = (i // nx) * tile, (i % nx) * tile
        tiles.append(g[y : y + tile, x : x + tile])
    return _Detail(tiles, False)


_SMOOTH_X = np.array([[1.0, 2.0, 1.0]], np.float32)
_SMOOTH_Y = _SMOOTH_X.T.copy()


def _blur_axis(img: np.ndarray, ax: int) -> float:
    """One axis of :func:`_blur_effect`: ``sum(min(11|S|, |B|)) / sum(11|S|)`` over skimage's
    crop [2:-1] of both axes.

    With P the image smoothed by [1, 2, 1] across ``ax``, skimage's Sobel derivative along ``ax``
    is S(y) = P(y+1) - P(y-1), and the Sobel derivative of the 11-px box filtered image is the
    telescoped sum B(y) = Q(y+5) - Q(y-6), Q(y) = P(y) + P(y+1). Both borders are reflected
    (``mode='reflect'`` in scipy = ``BORDER_REFLECT``), so the image is padded by 4 (before) and
    5 (after) pixels along ``ax`` (and reflected across it by the smoothing): enough for every
    S and B on the crop.
    Exact integers (int16: |P| <= 1020, 11|S| <= 11220, |B| <= 2040)."""
    b4 = cv2.BORDER_REFLECT
    if ax == 0:
        n = img.shape[0]
        p = cv2.filter2D(cv2.copyMakeBorder(img, 4, 5, 0, 0, b4), cv2.CV_16S, _SMOOTH_X, borderType=b4)
        s = cv2.absdiff(p[7 : n + 4, 2:-1], p[5 : n + 2, 2:-1])
        q = cv2.add(p[:-1], p[1:])
        del p
        b = cv2.absdiff(q[11 : n + 8, 2:-1], q[0 : n - 3, 2:-1])
    else:
        n = img.shape[1]
        p = cv2.filter2D(cv2.copyMakeBorder(img, 0, 0, 4, 5, b4), cv2.CV_16S, _SMOOTH_Y, borderType=b4)
        s = cv2.absdiff(p[2:-1, 7 : n + 4], p[2:-1, 5 : n + 2])
        q = cv2.add(p[:, :-1], p[:, 1:])
        del p
        b = cv2.absdiff(q[2:-1, 11 : n + 8], q[2:-1, 0 : n - 3])
    del q
    s *= 11  # |Sobel| of the image, on the box filter's (unnormalised, x11) scale
    m1 = cv2.sumElems(s)[0]  # exact: integer sums far below 2**53
    mn = cv2.sumElems(cv2.min(s, b, dst=b))[0]
    return mn / m1 if m1 > 0 else 1.0


def _blur_effect(d: _Detail) -> float:
    """Crete et al. (2007) blur effect exactly as ``skimage.measure.blur_effect`` (h_size=11,
    max over the two axes; 0 sharp .. 1 blurred), in integer arithmetic: per axis,
    ``sum(min(|S|, |S_b|)) / sum(|S|)`` with S the Sobel derivative along the axis and S_b that of
    the 11-px box re-blurred image (this equals skimage's ``|M1 - M2| / M1``). On tiles, each axis
    runs on the stack whose seams its long filters do not cross."""
    out = []
    for ax in (0, 1):
        img = d.hstack if ax == 0 else d.vstack
        h, w = img.shape
        if h < 5 or w < 5:
            return 1.0
        out.append(_blur_axis(img, ax))
    return float(max(out))


def _edge_widths(d: _Detail) -> np.ndarray:
    """Edge width (px) at gradient maxima: local contrast (15x15 max - min) ÷ the local peak step
    (max of the horizontal and vertical neighbour differences). A sharp step or a 1-px line gives
    ~1; a Gaussian blur of sigma widens edges to ~2.5 sigma and lines to ~1.7 sigma."""
    r = d.vstack
    h, w = r.shape
    dx, dy = d.diffs
    gr = cv2.copyMakeBorder(dx, 0, 0, 0, 1, cv2.BORDER_CONSTANT, value=0)
    if dy.size:
        cv2.max(gr[:-1, :], dy, dst=gr[:-1, :])
    rng = cv2.morphologyEx(r, cv2.MORPH_GRADIENT, _K15)
    sel = gr == cv2.dilate(gr, None)  # None: the 3x3 square
    sel &= gr >= 4
    sel &= rng >= 24
    for s in d.seams():  # near a seam the 15x15 window and the steps reach into the next tile
        sel[max(0, s - 8) : s + 8] = False
    idx = np.flatnonzero(sel)
    return rng.ravel()[idx].astype(np.float32) / gr.ravel()[idx]


def _percentile(a: np.ndarray, q: float) -> float:
    """``float(np.percentile(a, q))`` (linear interpolation) of a non-empty 1-D float32 array
    without NaNs, with the same float32 arithmetic, but one partition and no Python overhead.
    ``a`` is reordered."""
    n = a.size
    v = (n - 1) * (q / 100.0)
    if v >= n - 1:
        return float(a.max())
    lo = max(0, math.floor(v))
    a.partition(lo)
    x0, x1 = a[lo], a[lo + 1 :].min()
    t = v - lo
    diff = x1 - x0
    return float(x1 - diff * (1 - t) if t >= 0.5 else x0 + diff * t)


def _blockiness(d: _Detail, jpeg_grid: bool) -> float | None:
    """Mean |difference| across 8-px block boundaries ÷ elsewhere (1 = no blocking).

    JPEG files decoded at native size: boundaries are at phase 7 (between pixel 8k+7 and 8k+8).
    Other files (a JPEG re-saved as PNG may be cropped): the strongest of the 8 phases per axis."""
    r = d.vstack
    h, w = r.shape
    if h < 16 or w < 16:
        return None
    dx, dy = d.diffs
    seams = [s - 1 for s in d.seams()]  # rows of dy whose difference joins two tiles: left out
    # pixels per phase k (column k + 8j of dx, row k + 8j of dy)
    pcx = [h * len(range(k, w - 1, 8)) for k in range(8)]
    pcy = [w * (len(range(k, h - 1, 8)) - sum(1 for r in seams if r % 8 == k)) for k in range(8)]
    if min(pcx) <= 0 or min(pcy) <= 0:
        return None
    if jpeg_grid:  # phase 7 only: its sums and the totals (exact integers)
        tx, ty = int(cv2.sumElems(dx)[0]), int(cv2.sumElems(dy)[0])
        px7, py7 = int(dx[:, 7::8].sum()), int(cv2.sumElems(dy[7::8])[0])
        for r in seams:
            row = int(cv2.sumElems(dy[r])[0])
            ty -= row
            py7 -= row if r % 8 == 7 else 0
        num, ncnt = float(px7 + py7), float(pcx[7] + pcy[7])
        den, dcnt = float(tx - px7 + ty - py7), float(sum(pcx) - pcx[7] + sum(pcy) - pcy[7])
    else:  # the strongest phase per axis
        depth = cv2.CV_32S if max(h, w) * 255 < 2**31 else cv2.CV_64F  # exact integer sums
        dxs = cv2.reduce(dx, 0, cv2.REDUCE_SUM, dtype=depth).ravel().tolist()  # column sums of |dx|
        dys = cv2.reduce(dy, 1, cv2.REDUCE_SUM, dtype=depth).ravel().tolist()  # row sums of |dy|
        for r in seams:
            dys[r] = 0
        num = den = ncnt = dcnt = 0.0
        for sums, pc in ((dxs, pcx), (dys, pcy)):
            ps = [float(sum(sums[k::8])) for k in range(8)]
            p = max(range(8), key=lambda k: ps[k] / pc[k])  # the first of equal maxima
            num += ps[p]
            ncnt += pc[p]
            den += math.fsum(ps) - ps[p]
            dcnt += sum(pc) - pc[p]
    at, off = num / ncnt, den / dcnt
    if at < 1e-3 and off < 1e-3:  # perfectly flat: nothing to judge
        return None
    return float(at / max(off, 0.1))


# --------------------------------------------------------------------------------------------
# measure
# --------------------------------------------------------------------------------------------


def _preset_name(p: PaperPreset | DefaultPreset) -> str:
    return p.kind


def measure(
    path: str | os.PathLike[str] | None,
    preset: str | PaperPreset | DefaultPreset = "default",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    full: bool = False,
) -> ImageCheck:
    """Run the A1 checks on one image file: resolution, aspect ratio, white border, clarity,
    compression, in that order; reject on the first failure with its reason and measured value.

    ``full=True`` measures every metric even after a failure (for inspection); the verdict is the
    same. Decode failures end in a reason (``a1.image_missing``, ``a1.empty_file``,
    ``a1.decode_error``, ``a1.truncated``, ``a1.too_many_pixels``), never in an exception.
    """
    p = get_preset(preset)
    out = LoadedImage(path="" if path is None else os.fspath(path))
    check = _Result(out.path, _preset_name(p))
    metrics = check.metrics
    fail: list[tuple[str, float | None, str | None]] = []

    def failed(code: str, value: float | None, detail: str | None = None) -> bool:
        """Record a failure; True when measuring should stop."""
        if not fail:
            fail.append((code, value, detail))
        return not full

    try:
        im = _open(path, max_pixels, out)
    except _Fail as f:
        return _finish(check, out, [(f.code, f.value, f.detail)])
    try:
        w, h = im.size
        metrics["min_side"] = float(min(w, h))
        metrics["aspect_ratio"] = float(max(w / h, h / w))
        if min(w, h) < p.min_side and failed(TOO_SMALL, float(min(w, h)), f"{w}x{h}"):
            return _finish(check, out, fail)
        if metrics["aspect_ratio"] > p.max_aspect_ratio and failed(ASPECT_RATIO, metrics["aspect_ratio"]):
            return _finish(check, out, fail)
        fast = isinstance(p, DefaultPreset) and p.fast_decode
        try:
            g = _decode_gray(im, fast, out)
        except _Fail as f:
            return _finish(check, out, fail or [(f.code, f.value, f.detail)])
    finally:
        im.close()
    if isinstance(p, PaperPreset):
        _paper_checks(g, p, metrics, failed)
    else:
        metrics["jpeg_quality"] = jpeg_quality(out.quantization) if out.format in ("JPEG", "MPO") else None
        _default_checks(g, p, metrics, failed, jpeg_grid=out.format in ("JPEG", "MPO"), full=full)
    return _finish(check, out, fail)


@dataclass
class _Result:
    """What :func:`measure` collects before it builds the :class:`ImageCheck`."""

    path: str
    preset: str
    metrics: dict[str, float | None] = field(default_factory=dict)


def _finish(check: _Result, out: LoadedImage, fail: list[tuple[str, float | None, str | None]]) -> ImageCheck:
    reason = value = detail = None
    if fail:
        reason, value, detail = fail[0]
        if value is not None:
            value = float(value)
    return ImageCheck(
        path=check.path,
        keep=not fail,
        reason=reason,
        value=value,
        detail=detail,
        preset=check.preset,
        width=out.width,
        height=out.height,
        format=out.format,
        mode=out.mode,
        frames=out.frames,
        metrics=check.metrics,
    )


def _paper_checks(g: np.ndarray, p: PaperPreset, m: dict[str, float | None], failed: Any) -> None:
    h, w = g.shape
    s = max(p.border_strip_min_px, int(p.border_strip_fraction * min(h, w)))
    s = min(s, (min(h, w) + 1) // 2)
    frame = np.zeros((h, w), bool)
    frame[:s, :] = frame[-s:, :] = True
    frame[:, :s] = frame[:, -s:] = True
    share = float(np.count_nonzero(g[frame] >= p.white_level) / np.count_nonzero(frame))
    m["border_white_share"] = share
    if share > p.max_border_white_share and failed(WHITE_BORDER, share):
        return
    lap = float(cv2.Laplacian(g, cv2.CV_64F).var())
    m["laplacian_var"] = lap
    if lap < p.min_laplacian_var and failed(BLURRY, lap):
        return
    gx = cv2.Sobel(g, cv2.CV_64F, 1, 0, ksize=3)
    gy = cv2.Sobel(g, cv2.CV_64F, 0, 1, ksize=3)
    detail = float(w * h * np.sqrt(gx * gx + gy * gy).mean() / 255.0)
    m["effective_detail"] = detail
    if detail < p.min_effective_detail and failed(LOW_DETAIL, detail):
        return
    hb, wb = h // 8, w // 8
    n = hb * wb
    m["blocks"] = float(n)
    if n:
        blocks = g[: hb * 8, : wb * 8].astype(np.float64).reshape(hb, 8, wb, 8)
        bv = float(blocks.var(axis=(1, 3)).mean())
    else:
        bv = None
    m["block_variance"] = bv
    if bv is not None and n > p.min_blocks and bv < p.min_block_variance and failed(COMPRESSED, bv):
        return


def _default_checks(
    g: np.ndarray, p: DefaultPreset, m: dict[str, float | None], failed: Any, *, jpeg_grid: bool, full: bool
) -> None:
    c = _coarse(g, p.coarse_max_side)
    ink = _ink(c, p.white_level)
    # layout: blank white frame around the content
    margin = _white_margin(c, p.white_level, p.margin_row_ink, ink)
    m["white_margin"] = margin
    if margin > p.max_white_margin and failed(WHITE_BORDER, margin):
        return
    # clarity
    lo, hi = _percentiles(c, 0.1, 99.9)
    contrast = hi - lo
    m["contrast"] = contrast
    if contrast < p.min_contrast and failed(LOW_DETAIL, contrast, "contrast"):
        return
    fw = _flat_white(c, p.white_level, ink)
    m["flat_white"] = fw
    if fw >= p.lineart_strict_flat_white:
        ew_max: float | None = p.max_edge_width_strict
    elif fw >= p.lineart_min_flat_white:
        ew_max = p.max_edge_width
    else:
        ew_max = None  # continuous tone: the blur effect alone decides
    m["edge_width_max"] = ew_max
    d = _detail(g, c, p.detail_budget_px, p.detail_tile_px)
    m["analysed_px"] = float(d.pixels)
    blur = _blur_effect(d)
    m["blur_effect"] = blur
    ew: float | None = None
    if ew_max is not None or full:
        widths = _edge_widths(d)
        m["edge_points"] = float(widths.size)
        if widths.size >= p.min_edge_points and widths.size:
            ew = _percentile(widths, p.edge_width_percentile)
        m["edge_width"] = ew
        if (
            ew_max is not None
            and widths.size < p.min_edge_points
            and failed(LOW_DETAIL, float(widths.size), "edge points")
        ):
            return
    if blur > p.max_blur_effect and failed(BLURRY, blur, "blur_effect"):
        return
    if ew_max is not None and ew is not None and ew > ew_max and failed(BLURRY, ew, "edge_width (line-art)"):
        return
    # compression
    q = m.get("jpeg_quality")
    if q is not None and q < p.min_jpeg_quality and failed(COMPRESSED, q, "jpeg_quality"):
        return
    bk = _blockiness(d, jpeg_grid)
    m["blockiness"] = bk
    if bk is not None and bk > p.max_blockiness and failed(COMPRESSED, bk, "blockiness"):
        return


# --------------------------------------------------------------------------------------------
# batch helpers and the pipeline step
# --------------------------------------------------------------------------------------------


def check_images(
    paths: Iterable[str | os.PathLike[str]],
    preset: str | PaperPreset | DefaultPreset = "default",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    full: bool = True,
) -> Iterator[dict[str, Any]]:
    """One JSON-able dict per path (``path``, ``keep``, ``reason``, ``value``, every metric)."""
    p = get_preset(preset)
    for path in paths:
        yield measure(path, p, max_pixels=max_pixels, full=full).as_dict()


class A1PixelsConfig(StepConfig):
    preset: Literal["default", "paper"] = "default"
    overrides: dict[str, float | int | bool] = Field(default_factory=dict)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)

    @model_validator(mode="after")
    def _check_overrides(self) -> "A1PixelsConfig":
        get_preset(self.preset, **self.overrides)  # unknown or invalid threshold names fail here
        return self

    def resolved(self) -> PaperPreset | DefaultPreset:
        return get_preset(self.preset, **self.overrides)


class A1Pixels(Step[Panel, Panel]):
    """A1 pixel checks on ``panel.image_path``; kept panels get ``image_width``/``image_height``."""

    name = "a1_pixels"
    version = "1"
    Config = A1PixelsConfig
    output = Panel

    def process(self, batch: Sequence[Panel]) -> StepResult[Panel]:
        cfg: A1PixelsConfig = self.config  # type: ignore[assignment]
        preset = cfg.resolved()
        result: StepResult[Panel] = StepResult()
        # the panels of a compound figure without panel images share the figure's file:
        # decode and measure it once per batch
        checks: dict[str | None, ImageCheck] = {}
        for panel in batch:
            chk = checks.get(panel.image_path)
            if chk is None:
                chk = checks[panel.image_path] = measure(panel.image_path, preset, max_pixels=cfg.max_pixels)
            rec = panel
            if chk.width is not None and chk.height is not None:
                rec = panel.model_copy(update={"image_width": chk.width, "image_height": chk.height})
            if chk.keep:
                result.kept.append(rec)
            else:
                assert chk.reason is not None
                result.rejected.append(Rejected(record=rec, reason=chk.reason, value=chk.value, detail=chk.detail))
        return result
