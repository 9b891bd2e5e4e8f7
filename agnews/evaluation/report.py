"""The evaluation report: sections rendered into one self-contained HTML page, a Markdown summary and a JSON file.

Every section builder returns a :class:`Section`; :func:`write_report` writes into ``out_dir``::

    report.html       one page, small inline CSS, a table of contents, every figure embedded as a data: URI
    report.md         the same content in Markdown, figures referenced as files under figures/
    evaluation.json   {key: summary, ..., "meta": {...}}
    figures/*.png     every section's figures (``figures/<name>.png``)

Text taken from data must be escaped by the section (:func:`html_table` and :func:`md_table` do it for cells).
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

REPORT_HTML = "report.html"
REPORT_MD = "report.md"
EVALUATION_JSON = "evaluation.json"
FIGURES_DIR = "figures"

_FIGURE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Section:
    key: str  # "metrics", "calibration", "significance", "errors", "robustness", "attack", "attribution", "ood"
    title: str
    summary: dict  # JSON-able numbers; evaluation.json holds {key: summary}
    markdown: str  # Markdown body (no title line)
    html: str  # HTML body fragment (no title); figures as <img src="data:image/png;base64,...">
    figures: dict[str, bytes] = field(default_factory=dict)  # name -> PNG bytes (also written as figures/<name>.png)


def skipped_section(key: str, title: str, reason: str) -> Section:
    """A section that could not be computed: the report says so and why instead of failing as a whole."""
    return Section(
        key=key,
        title=title,
        summary={"skipped": True, "reason": reason},
        markdown=f"*Skipped:* {reason}\n",
        html=f'<p class="skipped"><strong>Skipped:</strong> {html.escape(reason)}</p>',
    )


def md_image(name: str, alt: str) -> str:
    """Markdown reference to a figure written by :func:`write_report` (``figures/<name>.png``)."""
    return f"![{alt}]({FIGURES_DIR}/{name}.png)"


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table cell: floats rounded, NaN as 'n/a'."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; pipes and newlines in cells are escaped so a text cannot break the table."""

    def cell(v: Any) -> str:
        return fmt(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    """An HTML table with every cell escaped."""
    head = "".join(f"<th>{html.escape(fmt(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    cls_attr = f' class="{html.escape(cls)}"' if cls else ""
    return f"<table{cls_attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444;padding-bottom:.2em}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.text,table.texts td:last-child{max-width:520px}
img{max-width:100%;height:auto;margin:.5em 1em .5em 0;vertical-align:top}
nav ul{columns:2}.meta td:first-child{font-weight:600}.skipped{color:#8a5a00}
.figures{display:flex;flex-wrap:wrap;align-items:flex-start}
"""


def _json_default(obj: Any):
    # numpy scalars/arrays sneak into summaries; evaluation.json must still be written.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean(obj: Any) -> Any:
    """NaN/inf are not JSON: written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    return obj


def write_report(sections: Sequence[Section], out_dir: str | Path, title: str, meta: dict | None = None) -> dict[str, Path]:
    """Write report.html, report.md, evaluation.json and figures/ into ``out_dir``; returns the written paths."""
    meta = dict(meta or {})
    keys = [s.key for s in sections]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"duplicate report section keys: {dupes}")
    if "meta" in keys:
        raise ValueError("'meta' is reserved in evaluation.json and cannot be a section key")
    out = Path(out_dir)
    figures_dir = out / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)

    written_figures: dict[str, str] = {}
    for s in sections:
        for name, data in s.figures.items():
            if not _FIGURE_NAME.match(name):
                raise ValueError(f"figure name {name!r} of section {s.key!r} is not a plain file name")
            if name in written_figures:
                raise ValueError(f"figure {name!r} written by both {written_figures[name]!r} and {s.key!r}")
            written_figures[name] = s.key
            (figures_dir / f"{name}.png").write_bytes(data)

    meta_rows = [(k, v if isinstance(v, (str, int, float)) else json.dumps(_clean(v), default=_json_default)) for k, v in meta.items()]

    # Markdown
    md = [f"# {title}\n"]
    if meta_rows:
        md.append(md_table(["", ""], meta_rows))
    md.append("## Contents\n")
    md += [f"- [{s.title}](#{s.key})" for s in sections]
    md.append("")
    for s in sections:
        md.append(f'<a id="{s.key}"></a>\n\n## {s.title}\n')
        md.append(s.markdown.rstrip() + "\n")
    (out / REPORT_MD).write_text("\n".join(md), encoding="utf-8")

    # HTML
    esc = html.escape
    toc = "".join(f'<li><a href="#{esc(s.key)}">{esc(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{esc(s.key)}"><h2>{esc(s.title)}</h2>\n{s.html}\n</section>\n' for s in sections)
    meta_html = (
        '<table class="meta"><tbody>'
        + "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(fmt(v))}</td></tr>" for k, v in meta_rows)
        + "</tbody></table>"
    ) if meta_rows else ""
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n<h1>{esc(title)}</h1>\n{meta_html}\n"
        f'<nav><h2>Contents</h2><ul>{toc}</ul></nav>\n{body}</body></html>\n'
    )
    (out / REPORT_HTML).write_text(page, encoding="utf-8")

    payload = {s.key: _clean(s.summary) for s in sections}
    payload["meta"] = _clean(meta)
    (out / EVALUATION_JSON).write_text(json.dumps(payload, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return {
        "html": out / REPORT_HTML,
        "markdown": out / REPORT_MD,
        "json": out / EVALUATION_JSON,
        "figures": figures_dir,
    }
