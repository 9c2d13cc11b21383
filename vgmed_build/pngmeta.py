"""PNG chunk handling: strip metadata from released images and read it back for validation.

A PNG can carry free text (tEXt, zTXt, iTXt), EXIF, ICC profile names and timestamps. Released
images must carry none of it, whatever wrote them, so the release keeps only the chunks needed to
decode the pixels and :func:`metadata_text` lets the validator scan what a file does carry.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

from vgmed_build.errors import VgmedError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Chunks that describe pixels only; everything else (text, time, EXIF, ICC, private chunks) is dropped.
PIXEL_CHUNKS = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"sBIT"})


class PNGError(VgmedError, ValueError):
    """Bytes that are not a well-formed PNG."""


def iter_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield (type, payload) for each chunk, checking signature, lengths and CRCs."""
    if not data.startswith(PNG_SIGNATURE):
        raise PNGError("not a PNG file (bad signature)")
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise PNGError(f"truncated chunk header at byte {pos}")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise PNGError(f"truncated {ctype.decode('latin-1')} chunk at byte {pos}")
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : end])
        if zlib.crc32(ctype + payload) != crc:
            raise PNGError(f"bad CRC in {ctype.decode('latin-1')} chunk at byte {pos}")
        yield ctype, payload
        pos = end
        if ctype == b"IEND":
            return
    raise PNGError("no IEND chunk (truncated file)")


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk."""
    ctype, payload = next(iter_chunks(data))
    if ctype != b"IHDR":
        raise PNGError("first chunk is not IHDR")
    width, height = struct.unpack(">II", payload[:8])
    return width, height


def strip_metadata(data: bytes) -> bytes:
    """The same PNG with only pixel-describing chunks (pixels untouched, output deterministic)."""
    out = [PNG_SIGNATURE]
    for ctype, payload in iter_chunks(data):
        if ctype in PIXEL_CHUNKS:
            out.append(struct.pack(">I", len(payload)) + ctype + payload)
            out.append(struct.pack(">I", zlib.crc32(ctype + payload)))
    return b"".join(out)


def metadata_chunks(data: bytes) -> list[tuple[str, str]]:
    """(chunk type, readable text) of every non-pixel chunk; compressed text is inflated."""
    found = []
    for ctype, payload in iter_chunks(data):
        if ctype in PIXEL_CHUNKS:
            continue
        text = payload
        if ctype == b"zTXt" and b"\0" in payload:
            key, _, rest = payload.partition(b"\0")
            text = key + b" " + _inflate(rest[1:])
        elif ctype == b"iTXt" and b"\0" in payload:
            key, _, rest = payload.partition(b"\0")
            compressed, rest = rest[:1] == b"\1", rest[2:]
            lang, _, rest = rest.partition(b"\0")
            tkey, _, body = rest.partition(b"\0")
            text = b" ".join([key, lang, tkey, _inflate(body) if compressed else body])
        found.append((ctype.decode("latin-1"), text.decode("utf-8", errors="replace")))
    return found


def _inflate(data: bytes) -> bytes:
    try:
        return zlib.decompress(data)
    except zlib.error:
        return data
