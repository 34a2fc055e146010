"""PNG without a plotting library: an encoder for uint8 RGB arrays and a tiny bitmap font for labels on plots."""
from __future__ import annotations

import struct
import zlib
from typing import Sequence

import numpy as np


def encode_png(rgb: np.ndarray, level: int = 2) -> bytes:
    """An 8-bit RGB PNG of an (h, w, 3) uint8 array; rows use the 'Up' filter, zlib at ``level`` (fast)."""
    height, width = rgb.shape[:2]
    rows = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(height, width * 3)
    up = rows.copy()
    up[1:] -= rows[:-1]  # filter 2 (Up): difference to the row above, modulo 256; the first row is unfiltered
    filters = np.full((height, 1), 2, np.uint8)
    filters[0] = 0
    raw = np.concatenate([filters, up], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, level)) + chunk(b"IEND", b""))


_FONT = {  # 3 x 5 glyphs: one digit per row, bits 4 / 2 / 1 = left / middle / right pixel
    "0": "75557", "1": "26227", "2": "71747", "3": "71317", "4": "55711", "5": "74717", "6": "74757", "7": "71222",
    "8": "75757", "9": "75717", "A": "25755", "B": "65656", "C": "34443", "D": "65556", "E": "74647", "F": "74644",
    "G": "34553", "H": "55755", "I": "72227", "J": "11152", "K": "55655", "L": "44447", "M": "57755", "N": "57775",
    "O": "25552", "P": "65644", "Q": "25573", "R": "65655", "S": "34216", "T": "72222", "U": "55557", "V": "55552",
    "W": "55775", "X": "55255", "Y": "55222", "Z": "71247", " ": "00000", ".": "00002", "-": "00700", ">": "42124",
    "+": "02720", "%": "51245", "^": "25000", "(": "12221", ")": "42224", "/": "11244", ":": "02020", "=": "07070",
}


def text_width(text: str, scale: int = 2) -> int:
    """Width in pixels of ``text`` drawn by :func:`draw_text`."""
    return max(0, 4 * len(text) - 1) * scale


def draw_text(canvas: np.ndarray, text: str, row: int, col: int, colour: Sequence[int] = (0, 0, 0),
              scale: int = 2) -> None:
    """Draw ``text`` (upper-cased; unknown characters as blanks) into ``canvas`` with its top-left at (row, col)."""
    for index, char in enumerate(text.upper()):
        bits = np.array([[int(d) >> s & 1 for s in (2, 1, 0)] for d in _FONT.get(char, "00000")], bool)
        glyph = np.kron(bits, np.ones((scale, scale), bool))
        top, left = row, col + 4 * scale * index
        view = canvas[top:top + glyph.shape[0], left:left + glyph.shape[1]]
        view[glyph[:view.shape[0], :view.shape[1]]] = colour
