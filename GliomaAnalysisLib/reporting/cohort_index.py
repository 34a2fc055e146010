"""The cohort page ``results/index.html``: every case of a batch with a thumbnail, volumes, predictions and QC
flags, sortable by any column (click a header, or open ``index.html#sort=wt_ml:desc``), linking each report.

Also the per-case thumbnail (an axial slice through the tumor with the labels over the reference image), written
as a PNG without any plotting library.
"""
from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..io.geometry import lps_array
from ..pipeline.result import AnalysisResult
from .figures import LABEL_ALPHA, LABEL_COLOURS
from .png import encode_png

INDEX_FILE = "index.html"
THUMBNAIL_FILE = "thumbnail.png"
COLUMNS = (("case", "case"), ("status", "status"), ("wt_ml", "WT mL"), ("tc_ml", "TC mL"), ("et_ml", "ET mL"),
           ("ed_ml", "ED mL"), ("ncr_ml", "NCR mL"), ("grade", "grade"), ("idh", "IDH"),
           ("codeletion_1p19q", "1p/19q"), ("mgmt", "MGMT"), ("qc_flags", "QC flags"), ("error", "error"))
_COLOURS = np.array([(0.0, 0.0, 0.0)] + [LABEL_COLOURS[k] for k in (1, 2, 3)], dtype=np.float32) * 255


def thumbnail_png(result: AnalysisResult, size: int = 128) -> bytes:
    """PNG of the axial slice through the tumor's centre (or the middle slice), in LPS orientation (anterior at the
    top, the patient's right on the left as radiologists read): reference image in grey, labels blended in colour,
    about ``size`` pixels wide."""
    labels = lps_array(result.labels)[0]
    image = lps_array(result.images[result.reference])[0] if result.reference in result.images \
        else np.zeros(labels.shape, np.float32)
    per_slice = np.count_nonzero(labels, axis=(1, 2))  # the tumor's mean slice, without its voxels' coordinates
    total = int(per_slice.sum())
    z = int(np.round(float(per_slice @ np.arange(len(per_slice))) / total)) if total else labels.shape[0] // 2
    grey = np.asarray(image[z], dtype=np.float32)
    high = float(np.percentile(grey, 99.5)) or 1.0
    rgb = np.repeat(np.clip(grey / high, 0, 1)[..., None] * 255, 3, axis=2)
    slice_labels = np.asarray(labels[z]).astype(int).clip(0, 3)
    mask = (slice_labels > 0)[..., None]
    rgb = np.where(mask, (1 - LABEL_ALPHA) * rgb + LABEL_ALPHA * _COLOURS[slice_labels], rgb)
    step = max(1, int(np.ceil(max(rgb.shape[:2]) / size)))
    return encode_png(np.round(rgb[::step, ::step]).astype(np.uint8))


def write_index(out: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    """Write ``out/index.html`` (atomically) for the summary ``rows``; returns its path."""
    body = "\n".join(_row(out, row) for row in sorted(rows, key=lambda r: str(r["case"])))
    headers = "".join(f'<th data-key="{key}" onclick="sortBy(\'{key}\')">{html.escape(title)}</th>'
                      for key, title in COLUMNS)
    page = _PAGE.replace("{headers}", "<th>thumbnail</th>" + headers).replace("{rows}", body).replace(
        "{count}", str(len(rows)))
    path = out / INDEX_FILE
    fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".html", dir=out)
    with os.fdopen(fd, "w") as handle:
        handle.write(page)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def _row(out: Path, row: Mapping[str, object]) -> str:
    case = str(row["case"])
    link = html.escape(case, quote=True)
    thumb = (f'<img src="{link}/{THUMBNAIL_FILE}" alt="{link}" onload="this.dataset.loaded=1">'
             if (out / case / THUMBNAIL_FILE).is_file() else "")
    cells = []
    for key, _ in COLUMNS:
        value = "" if row.get(key) is None else str(row.get(key))
        if key == "case" and (out / case / "report.html").is_file():
            text = f'<a href="{link}/report.html">{html.escape(value)}</a>'
        elif key.endswith("_ml") and value:
            text = f"{float(value):.1f}"
        else:
            text = html.escape(value.replace(";", " "))
        cells.append(f'<td data-key="{key}" data-value="{html.escape(value, quote=True)}">{text}</td>')
    flagged = " flagged" if row.get("qc_flags") else ""
    return f'<tr class="case{flagged}" data-case="{link}"><td>{thumb}</td>{"".join(cells)}</tr>'


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>GliomaAnalysis cohort</title>
<style>
body { font-family: sans-serif; margin: 1.5em; } table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; } th { cursor: pointer; background: #eee; }
tr.flagged td { background: #fff4e0; } img { display: block; max-width: 128px; }
.note { color: #a00; }
</style></head><body>
<h1>Cohort: {count} case(s)</h1>
<p class="note">Research use only; not a medical device. QC flags are automatic plausibility checks, not a review.</p>
<table id="cases"><thead><tr>{headers}</tr></thead><tbody>
{rows}
</tbody></table>
<script>
var order = {};
function cellValue(row, key) {
  var cell = row.querySelector('td[data-key="' + key + '"]');
  var text = cell ? cell.dataset.value : "";
  var number = parseFloat(text);
  return (text !== "" && !isNaN(number) && /^[-0-9.eE+]+$/.test(text)) ? number : text.toLowerCase();
}
function sortBy(key, direction) {
  var body = document.querySelector("#cases tbody");
  var rows = Array.prototype.slice.call(body.querySelectorAll("tr.case"));
  var sign = direction || (order[key] === "asc" ? "desc" : "asc");
  order[key] = sign;
  rows.sort(function (a, b) {
    var x = cellValue(a, key), y = cellValue(b, key);
    if (typeof x !== typeof y) { x = String(x); y = String(y); }
    return (x < y ? -1 : x > y ? 1 : 0) * (sign === "asc" ? 1 : -1);
  });
  rows.forEach(function (row) { body.appendChild(row); });
  document.body.dataset.sorted = key + ":" + sign;
}
var wanted = /sort=([a-z0-9_]+)(?::(asc|desc))?/.exec(location.hash);
if (wanted) { sortBy(wanted[1], wanted[2] || "asc"); }
</script>
</body></html>
"""

