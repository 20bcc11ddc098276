"""Decoding that survives real photos: one function from a file to a PIL image in RGB or L, or a reason code.

Handled: EXIF orientation; grayscale, CMYK, palette, RGBA/LA (composited on BACKGROUND), 16-bit (scaled, not
clipped), float images; JPEG down-scaling during decode (`Image.draft`) when the caller needs at most half the size.
Refused with a `BadImageError` carrying a reason code: zero-byte, missing or dangling, unreadable, not an image,
truncated, corrupt, and over-size files (checked from the header, before any pixel is decoded).
"""

from __future__ import annotations

import math
import os
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from classicnets.fileio import open_regular

# File name extensions we read (lower-case; matching is case-insensitive).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Reason codes, shared by the training guard, `classicnets scan` and its --json output.
ZERO_BYTES = "ZERO_BYTES"  # the file is empty (interrupted download, sync placeholder)
MISSING = "MISSING"  # listed or linked but not there (dangling symlink, wrong list-file path)
UNREADABLE = "UNREADABLE"  # permission denied, an I/O error, or not a file (a folder, FIFO or device)
NOT_AN_IMAGE = "NOT_AN_IMAGE"  # no image format recognises the bytes (an HTML error page saved as .jpg)
TRUNCATED = "TRUNCATED"  # the header is fine but the pixel data ends early
CORRUPT = "CORRUPT"  # the decoder rejects the pixel data
TOO_LARGE = "TOO_LARGE"  # more pixels than max_pixels: a decompression bomb or a huge scan
REASONS = (ZERO_BYTES, MISSING, UNREADABLE, NOT_AN_IMAGE, TRUNCATED, CORRUPT, TOO_LARGE)

# Pillow itself refuses an image above 2 x Image.MAX_IMAGE_PIXELS (2 x 89,478,485, "a decompression bomb",
# Pillow docs: Image.open). We refuse at the same size, from the header, so a 108-megapixel phone photo still loads
# while a 50,000 x 50,000 PNG of a few kilobytes never allocates 7.5 GB.
MAX_PIXELS = 2 * 89_478_485

# Transparent pixels are composited on white: what image viewers and browsers show for a logo or product shot.
BACKGROUND = (255, 255, 255)

# Magic numbers of the formats above: a file that starts like an image but does not open is TRUNCATED, not
# NOT_AN_IMAGE (the format specifications: JPEG SOI, PNG signature, GIF87a/89a, BMP "BM", RIFF/WEBP, TIFF II*/MM*).
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")


class BadImageError(Exception):
    """A file that cannot be used as an image; `code` is one of REASONS, `detail` says what happened."""

    def __init__(self, path: str | os.PathLike, code: str, detail: str) -> None:
        super().__init__(f"{path}: {code} ({detail})")
        self.path, self.code, self.detail = str(path), code, detail


def is_image_file(name: str) -> bool:
    """True when a file name has one of IMAGE_EXTENSIONS (case-insensitive: `IMG_001.JPG` counts)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def draft_size(size: tuple[int, int], short_side: int | None) -> tuple[int, int] | None:
    """The smallest (w, h) the decoder may scale `size` down to and keep its short side >= `short_side`."""
    if not short_side:
        return None
    scale = short_side / min(size)
    if scale > 0.5:  # JPEG's DCT scaling only gives 1/2, 1/4, 1/8: nothing to gain
        return None
    return math.ceil(size[0] * scale), math.ceil(size[1] * scale)


def decode_image(
    path: str | os.PathLike,
    *,
    mode: str = "RGB",
    draft_short_side: int | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Decode `path` into a loaded PIL image in `mode` ("RGB" or "L"); the file is closed on return.

    `draft_short_side`: the caller resizes the short side to about this size afterwards, so a JPEG may be decoded at
    1/2, 1/4 or 1/8 scale as long as its short side stays at least this large (Pillow's `Image.draft`).
    Raises BadImageError with a reason code for every way a file can fail.
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    try:
        # Pillow's warnings (bomb size, corrupt EXIF, palette transparency) are ours to turn into reason codes
        # our own handle: closed even when Pillow raises; a FIFO or a device (a link to /dev/zero) is refused
        with open_regular(path) as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if os.fstat(f.fileno()).st_size == 0:
                raise BadImageError(path, ZERO_BYTES, "the file is empty")
            img = _open_checked(f, path, max_pixels)
            size = draft_size(img.size, draft_short_side)
            if size and img.format == "JPEG":
                img.draft("L" if mode == "L" else None, size)
            _load(img, f, path)
            try:
                return to_mode(img, mode)
            except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error) as e:
                raise BadImageError(path, CORRUPT, f"cannot convert to {mode}: {e}") from None  # e.g. broken EXIF
    except FileNotFoundError:
        reason = "dangling symlink" if os.path.islink(path) else "no such file"
        raise BadImageError(path, MISSING, reason) from None
    except OSError as e:  # permission denied, a directory, FIFO or device named *.jpg, an I/O error
        raise BadImageError(path, UNREADABLE, e.strerror or str(e)) from None


def _open_checked(f, path, max_pixels: int) -> Image.Image:
    """Image.open (header only) with our own size limit."""
    try:
        img = Image.open(f)
    except Image.DecompressionBombError as e:
        raise BadImageError(path, TOO_LARGE, str(e).split(" could be")[0]) from None
    except UnidentifiedImageError:
        f.seek(0)
        head = f.read(8)
        if head.startswith(_MAGIC):
            raise BadImageError(path, TRUNCATED, "starts like an image but its header is cut off") from None
        raise BadImageError(path, NOT_AN_IMAGE, f"unrecognised content starting {head[:4]!r}") from None
    except (SyntaxError, ValueError, EOFError, OSError) as e:  # a plugin rejecting a malformed header
        code = TRUNCATED if isinstance(e, EOFError) or "truncat" in str(e).lower() or _riff_cut(f) else CORRUPT
        raise BadImageError(path, code, f"bad header: {e}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise BadImageError(path, TOO_LARGE, f"{w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,}")
    if w == 0 or h == 0:
        raise BadImageError(path, CORRUPT, f"size {w}x{h}")
    return img


def _riff_cut(f) -> bool:
    """A RIFF file (WebP) shorter than the size its header declares: WebP decodes at open, so a cut file fails there."""
    f.seek(0)
    head = f.read(8)
    size = os.fstat(f.fileno()).st_size
    return head[:4] == b"RIFF" and len(head) == 8 and size < int.from_bytes(head[4:8], "little") + 8


def _load(img: Image.Image, f, path) -> None:
    """Decode the pixels, sorting the decoder's complaints into TRUNCATED or CORRUPT."""
    try:
        img.load()
    except (OSError, SyntaxError, EOFError, ValueError, IndexError, struct.error) as e:
        message = str(e)
        truncated = isinstance(e, EOFError) or "truncated" in message or "broken data stream" in message
        if not truncated and f.tell() >= os.fstat(f.fileno()).st_size:  # the decoder ran out of bytes
            truncated = "unrecognized data stream" not in message
        raise BadImageError(path, TRUNCATED if truncated else CORRUPT, message or type(e).__name__) from None


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL image to "RGB" or "L": EXIF orientation applied, alpha composited on BACKGROUND,
    16-bit and 32-bit images scaled into 0..255 (Pillow's own convert would clip them)."""
    if not (img.format == "JPEG" and "exif" not in img.info):  # a JPEG keeps its orientation only in EXIF
        img = ImageOps.exif_transpose(img) or img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = _scale_high_depth(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode != mode:
        img = img.convert(mode)  # CMYK, YCbCr, LAB, HSV, 1, L, RGB: Pillow's conversions are exact enough
    return img


def _scale_high_depth(img: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer / float) single-channel image as 8-bit L, scaled over its bit depth."""
    a = np.asarray(img)
    if img.mode == "F":
        full = 1.0 if float(a.max(initial=0.0)) <= 1.0 else 255.0  # floats are either [0, 1] or [0, 255]
    elif img.mode.startswith("I;16") or int(a.max(initial=0)) <= 65535:
        full = 65535.0  # 16-bit PNG/TIFF (Pillow may open them as mode "I")
    else:
        full = float(np.iinfo(np.int32).max)
    scaled = np.clip(np.rint(a.astype(np.float64) * (255.0 / full)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")
