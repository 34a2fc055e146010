"""The self-contained ``report.html``: inputs and warnings, slice figures with the label overlay, a 3D rendering,
probability and uncertainty maps, volumes and ratios, predictions with probability bars, models and checksums, the
automatic narrative and the research-use disclaimer; each prediction with its evidence level. Every number shown
carries the ``report.json`` path it comes from (``data-json``) and its full-precision value (``data-value``), so tests
and readers can check it; the text shows it rounded for reading (:data:`DECIMALS`)."""
from __future__ import annotations

import base64
import html
import json
from typing import Callable, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from ..io.geometry import lps_array
from ..models.evidence import NOT_ASSESSABLE, RULE
from .figures import (LABEL_COLOURS, LABEL_NAMES, css_gradient, map_figure, overlay_figure, probability_bars,
                      tumor_centre, window)
from .narrative import AUTOMATIC_NOTICE, build_narrative
from .render3d import RenderError, start_render
from ..pipeline.result import RESEARCH_USE, AnalysisResult

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:1.5em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}
.disclaimer{background:#fde8e8;border:1px solid #e0a0a0;padding:8px}.auto{background:#f3f3f8;padding:8px}
figure{margin:.5em 0}img{max-width:100%}figcaption{font-size:.85em;color:#555}.warn{color:#a15c00}
.swatch{display:inline-block;width:1.6em;height:.9em;margin:0 .3em 0 .9em;vertical-align:middle}
.colourbar{display:inline-block;width:12em;height:.9em;margin:0 .4em;vertical-align:middle;border:1px solid #999}"""


def _img(png: bytes, caption: str, figure_id: str, key: str = "") -> str:
    """A <figure> with the PNG embedded, its caption and ``key`` (HTML: legend or colour bar) under it."""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="{figure_id}"><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}{key}</figcaption></figure>")


def _svg(svg: str, caption: str, figure_id: str) -> str:
    return f'<figure id="{figure_id}">{svg}<figcaption>{html.escape(caption)}</figcaption></figure>'


def _legend() -> str:
    """The label colours as HTML swatches."""
    return "<br>" + "".join(f'<span class="swatch" style="background:rgb'
                            f'{tuple(round(255 * c) for c in LABEL_COLOURS[label])}"></span>{name}'
                            for label, name in LABEL_NAMES.items())


def _colour_bar(cmap: str, vmax: float = 1.0) -> str:
    """An HTML colour bar of ``cmap`` from 0 to ``vmax``."""
    return (f'<br>0<span class="colourbar" data-cmap="{cmap}" style="background:{css_gradient(cmap)}"></span>'
            f"{vmax:g}")


DECIMALS = {"probability": 2, "volume": 1, "fraction": 2, "seconds": 2}
"""Decimals shown per kind of number; report.json keeps full precision (data-value holds it in the page)."""


def rounded(value, kind: str) -> str:
    """``value`` as shown to a reader: integers as such, None as n/a, else ``DECIMALS[kind]`` decimals."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{float(value):.{DECIMALS[kind]}f}"


def _num(value, path: str, kind: str = "probability") -> str:
    return (f'<td data-json="{path}" data-value="{html.escape(json.dumps(value))}">'
            f"{html.escape(rounded(value, kind))}</td>")


def _evidence_cells(entry: Dict, path: str) -> str:
    """The evidence level and its real-data figure (AUC, 95% interval, n, source in the tooltip)."""
    level = entry.get("evidence") or NOT_ASSESSABLE
    detail = entry.get("evidence_detail") or {}
    if detail.get("value") is None:
        figure = html.escape(detail.get("reason") or "no real-data figure")
    else:
        interval = (f"{detail['ci95']['lower']:.2f}-{detail['ci95']['upper']:.2f}" if detail.get("ci95")
                    else "interval unknown")
        figure = html.escape(f"AUC {detail['value']:.2f} ({interval}, n {detail.get('n') or 'unknown'})")
    title = html.escape(f"{detail.get('source', '')}. Rule: {detail.get('rule', '')}")
    return (f'<td class="evidence" data-json="{path}.evidence" data-evidence="{html.escape(level)}">'
            f'{html.escape(level)}</td><td title="{title}">{figure}</td>')


def _oriented(image: sitk.Image) -> np.ndarray:
    return lps_array(image)[0]  # a view: the figures read three slices of each volume


def _backgrounds(result: AnalysisResult) -> Dict[str, np.ndarray]:
    """LPS views of the images behind the figures: T1CE and FLAIR, else the first image."""
    backgrounds = {m: _oriented(result.images[m]) for m in ("t1ce", "flair") if m in result.images}
    if not backgrounds and result.images:
        first = next(iter(result.images))
        backgrounds = {first: _oriented(result.images[first])}
    return backgrounds


def start_tumor_view(result: AnalysisResult) -> Callable[[], bytes]:
    """Start the report's 3D view of ``result`` (render3d.start_render: in a child process on Linux, so it overlaps
    the writing of the other outputs); returns the function that waits for its PNG bytes."""
    labels, spacing = lps_array(result.labels)
    backgrounds = _backgrounds(result)
    brain = next(iter(backgrounds.values())) > 0 if backgrounds else None
    try:
        return start_render(labels, spacing, brain)
    except Exception as exc:  # no VTK, or no process could be started: reported where the figure would be
        error = exc

        def failed() -> bytes:
            raise error

        return failed


def _figures(result: AnalysisResult, warnings: List[str], tumor_view: Callable[[], bytes]) -> List[str]:
    labels, spacing = lps_array(result.labels)
    backgrounds = _backgrounds(result)
    parts = []
    if backgrounds:
        rows = ", ".join(name.upper() for name in backgrounds)
        centre = tumor_centre(labels)  # the three figures cut through it, over the same grey windows
        windows = {name: window(image) for name, image in backgrounds.items()}
        parts.append(_img(overlay_figure(backgrounds, labels, spacing, centre, windows),
                          f"Slices through the tumor centre: columns axial (anterior at the top), coronal and sagittal "
                          f"(superior at the top); rows {rows}. Label overlay:", "fig-overlay", _legend()))
        background_name, background = next(iter(backgrounds.items()))
        maps = {f"P({name.upper()})": _oriented(image) for name, image in result.probabilities.items()}
        frame = {"centre": centre, "background_window": windows[background_name]}
        parts.append(_img(map_figure(background, maps, labels, spacing, **frame),
                          f"Class probability heat maps over {background_name.upper()}: rows {', '.join(maps)}; "
                          f"columns axial, coronal, sagittal. Probability:", "fig-probability", _colour_bar("hot")))
        parts.append(_img(map_figure(background, {"uncertainty": _oriented(result.uncertainty)}, labels, spacing,
                                     cmap="viridis", **frame),
                          "Voxel uncertainty (normalised predictive entropy of the TTA / MC-dropout passes); columns "
                          "axial, coronal, sagittal. Uncertainty:", "fig-uncertainty", _colour_bar("viridis")))
    try:
        parts.append(_img(tumor_view(), "3D rendering of the subregions "
                          "(translucent edema around the core) inside the brain surface", "fig-3d"))
    except Exception as exc:  # rendering needs OpenGL (EGL or a display); the report stays useful without it
        reason = str(exc) if isinstance(exc, RenderError) else f"{type(exc).__name__}: {exc}"
        warnings.append(f"3D rendering unavailable ({reason[:100]})")
    return parts


_EVIDENCE_NOTE = (f"Evidence: the level of each task on real cases, from its model card's real-data AUC and 95% "
                  f"interval ({RULE}). The integrated impression names only supported findings of at least "
                  f"moderate confidence.")


def _prediction_section(report: Dict) -> str:
    rows, bars = [], []
    for task, value in report["predictions"].items():
        if value is None:
            rows.append(f"<tr><th>{task}</th><td colspan=6>not available in this version</td></tr>")
            continue
        rows.append(f"<tr><th>{task}</th><td>{html.escape(value['label'])}</td>"
                    f"{_num(value['probability'], f'predictions.{task}.probability')}"
                    f"{_num(value['uncertainty'], f'predictions.{task}.uncertainty')}"
                    f"{_evidence_cells(value, f'predictions.{task}')}"
                    f"<td>{html.escape(str(value.get('basis') or value.get('model', 'multi-task network')))}</td></tr>")
        bars.append((task, value["probability"], value["uncertainty"]))
    out = ["<h2>Predictions (multi-task network)</h2>", f"<p>{html.escape(_EVIDENCE_NOTE)}</p>",
           "<table><tr><th>task</th><th>label</th><th>probability</th><th>uncertainty</th><th>evidence</th>"
           "<th>real-data figure</th><th>model</th></tr>", *rows, "</table>"]
    if bars:
        out.append(_svg(probability_bars(bars, "multi-task heads"), "Predicted probabilities with their "
                        "uncertainty (whiskers: +- uncertainty; dotted line: 0.5)", "fig-predictions"))
    fusion = report.get("mgmt_late_fusion")
    if fusion:
        per, weights = fusion["per_modality"], fusion.get("weights", {})
        out += ["<h3>MGMT late fusion (per-modality CNN + LSTM)</h3>",
                "<table><tr><th>modality</th><th>P(methylated)</th><th>weight</th></tr>",
                *[f"<tr><th>{m}</th>{_num(p, f'mgmt_late_fusion.per_modality.{m}')}"
                  f"{_num(weights.get(m), f'mgmt_late_fusion.weights.{m}')}</tr>" for m, p in per.items()],
                f"<tr><th>fused</th>{_num(fusion['fused'], 'mgmt_late_fusion.fused')}<td></td></tr></table>",
                f"<table><tr><th>evidence</th>{_evidence_cells(fusion, 'mgmt_late_fusion')}</tr></table>",
                _svg(probability_bars([(m, p, None) for m, p in per.items() if p is not None]
                                      + [("fused", fusion["fused"], fusion.get("uncertainty"))],
                                      "MGMT methylation probability"), "MGMT late fusion", "fig-mgmt")]
    grade = report.get("slice_grade")
    if grade:
        out += ["<h3>Slice-based grade (probability of HGG)</h3><table>",
                *[f"<tr><th>{k}</th>{_num(grade[k], f'slice_grade.{k}')}</tr>"
                  for k in ("majority", "soft", "attention", "n_slices")],
                f"<tr><th>evidence</th>{_evidence_cells(grade, 'slice_grade')}</tr></table>"]
    return "\n".join(out)


def _location_section(report: Dict) -> str:
    location = report.get("location")
    if not location:
        return ""
    position = "".join(f"<tr><th>{k.replace('_', ' ')}</th>{_num(v, f'location.position.{k}', 'fraction')}</tr>"
                       for k, v in location["position"].items())
    return (f"<h3>Location (approximate)</h3><table><tr><th>hemisphere</th><td>{html.escape(location['hemisphere'])}"
            f"</td></tr><tr><th>region</th><td>{html.escape(location['region'])}</td></tr>"
            f"<tr><th>tumor fraction in the left hemisphere</th>"
            f"{_num(location['left_fraction'], 'location.left_fraction', 'fraction')}</tr>{position}</table>"
            f"<p>{html.escape(location['method'])}; centroid position as fractions of the brain's extent "
            f"(right to left, anterior to posterior, inferior to superior). Midline shift is not measured.</p>")


def render_report(result: AnalysisResult, report: Dict, figures: bool = True,
                  tumor_view: Optional[Callable[[], bytes]] = None) -> str:
    """The HTML page for ``report`` (the dict written as report.json) and the images of ``result``; ``tumor_view``:
    the 3D view started earlier by :func:`start_tumor_view` (started here when None)."""
    warnings = list(report["warnings"])
    figure_html = []
    if figures and result.images:
        figure_html = _figures(result, warnings, tumor_view or start_tumor_view(result))
    inputs = "".join(f"<tr><th>{html.escape(f['modality'])}</th><td>{html.escape(f['path'])}</td></tr>"
                     for f in report["inputs"]["files"])
    missing = ", ".join(report["inputs"]["missing"]) or "none"
    volumes = "".join(f"<tr><th>{k.upper()}</th>{_num(v, f'volumes_ml.{k}', 'volume')}"
                      f"{_num(report['ratios'][k], f'ratios.{k}', 'fraction') if k in report['ratios'] else '<td></td>'}"
                      f"</tr>" for k, v in report["volumes_ml"].items())
    statements = "".join(
        f"<p class=\"statement\" data-layer=\"{s.layer}\" data-values='{html.escape(json.dumps(s.values))}'>"
        f"{html.escape(s.text)}</p>" for s in build_narrative(report))
    models = "".join(f"<tr><th>{html.escape(m['name'])}</th><td>{html.escape(m.get('task', ''))}</td>"
                     f"<td>{html.escape(m['version'])}</td><td><code>{m['sha256']}</code></td></tr>"
                     for m in report["models"])
    warning_items = "".join(f"<li class='warn'>{html.escape(w)}</li>" for w in warnings) or "<li>none</li>"
    timings = "".join(f"<tr><th>{k}</th>{_num(v, f'timings_s.{k}', 'seconds')}</tr>"
                      for k, v in report["timings_s"].items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>GliomaAnalysis report: {html.escape(report['case_id'])}</title>
<style>{_STYLE}</style></head><body>
<h1>GliomaAnalysis report: {html.escape(report['case_id'])}</h1>
<p class="disclaimer" id="disclaimer"><strong>{html.escape(RESEARCH_USE)}</strong></p>
<h2>Inputs</h2><table>{inputs}<tr><th>missing</th><td>{html.escape(missing)}</td></tr>
<tr><th>reference grid</th><td>{html.escape(report['inputs']['reference'])}</td></tr></table>
<h2>Warnings</h2><ul>{warning_items}</ul>
<h2>Summary (automatic text)</h2><div class="auto" id="narrative"><p><em>{html.escape(AUTOMATIC_NOTICE)}</em></p>
{statements}</div>
<h2>Volumes and fractions of the whole tumor</h2>
<table><tr><th>region</th><th>volume (mL)</th><th>fraction of WT</th></tr>{volumes}</table>
{_location_section(report)}
<h2>Figures</h2>{''.join(figure_html) or '<p>no figures</p>'}
{_prediction_section(report)}
<h2>Models</h2><table><tr><th>name</th><th>task</th><th>version</th><th>sha256</th></tr>{models}</table>
<h2>Timings (s)</h2><table>{timings}</table>
<p class="disclaimer">{html.escape(RESEARCH_USE)}</p>
</body></html>
"""
