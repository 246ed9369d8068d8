"""Export one AttributionResult as JSON, CSV and a standalone (offline) HTML report."""

from __future__ import annotations

import csv
import html
import io
import re
from pathlib import Path

from . import figures
from .io import atomic_write_text
from .result import AttributionResult


def to_json(result: AttributionResult) -> str:
    """The result's own JSON (round-trips through ``AttributionResult.from_dict``)."""
    return result.to_json(indent=2)


def _column_name(i: int, token: str) -> str:
    # Raw tokens may hold newlines or control bytes; keep header names on one readable line.
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in token)
    return f"out_{i}:{shown}"


def to_csv(result: AttributionResult) -> str:
    """One row per input token: position, text, offsets, flags, its word, scores per output.

    ``is_special`` marks tokens without a character offset (special tokens); ``is_input`` is
    the flag of the word holding the token (False for template text and special tokens).
    """
    owners = figures.token_words(result)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["index", "token", "start", "end", "is_special", "is_input", "word", "token_score"]
        + [_column_name(i, t) for i, t in enumerate(result.output_tokens)]
    )
    for i, tok in enumerate(result.input_tokens):
        off = result.input_offsets[i]
        word = owners[i]
        w.writerow(
            [
                i,
                tok,
                off[0] if off else "",
                off[1] if off else "",
                off is None,
                bool(word and word.is_input),
                word.text if word else "",
                repr(float(result.token_scores[i])),
            ]
            + [repr(float(row[i])) for row in result.matrix]
        )
    return buf.getvalue()


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(_flatten(v, key + "."))
        else:
            out.append((key, v))
    return out


def _table(rows: list[tuple[str, object]]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    return f'<table class="kd-settings">{cells}</table>'


def _fields_html(result: AttributionResult) -> str:
    rows = []
    for k, v in result.fields.items():
        if isinstance(v, (list, tuple)):
            v = " | ".join(str(x) for x in v)
        rows.append((k, v))
    return _table(rows) if rows else ""


REPORT_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em auto;
max-width:1100px;padding:0 1em;color:#1f2328;line-height:1.5}
h1{font-size:1.4em;margin-bottom:0.2em} h2{font-size:1.1em;margin-top:1.6em}
.kd-meta{color:#57606a;font-size:0.9em}
.kd-answer{font-size:1.15em;padding:0.4em 0.7em;background:#f6f8fa;border-radius:6px;
display:inline-block}
.kd-scroll{overflow-x:auto;border:1px solid #d0d7de;border-radius:6px;padding:4px}
table.kd-settings{border-collapse:collapse;font-size:0.9em}
table.kd-settings th,table.kd-settings td{border:1px solid #d0d7de;padding:3px 8px;
text-align:left;vertical-align:top}
table.kd-settings th{background:#f6f8fa;font-weight:600}
.kd-warn{color:#9a6700}
"""


def to_html(result: AttributionResult) -> str:
    """A standalone report: inputs, answer, rationale, highlighted text, heatmap, settings.

    plotly.js is embedded, so the file works offline (a few MB); fixed div ids make the
    output deterministic.
    """
    heat = figures.heatmap(result).to_html(
        include_plotlyjs=True, full_html=False, div_id="kd-heatmap"
    )
    bar = figures.top_words_bar(result).to_html(
        include_plotlyjs=False, full_html=False, div_id="kd-top-words"
    )
    esc = html.escape
    meta = (
        f"{esc(result.method)} · model {esc(result.model)} · template "
        f"{esc(result.template)} · answer {esc(result.target)} · {result.seconds:.2f} s"
    )
    warnings = "".join(f'<p class="kd-warn">⚠ {esc(w)}</p>' for w in result.warnings)
    settings = _flatten(result.settings) + [(f"extras.{k}", v) for k, v in _flatten(result.extras)]
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>KD-Lens: {esc(result.method)} attribution</title>
<style>{REPORT_CSS}</style>
</head>
<body>
<h1>KD-Lens attribution report</h1>
<p class="kd-meta">{meta}</p>
{warnings}
<h2>Task input</h2>
{_fields_html(result)}
<h2>Answer</h2>
<p class="kd-answer">{esc(result.answer)}</p>
<h2>Rationale (top-{esc(str(result.settings.get("top_k", len(result.rationale))))})</h2>
{figures.rationale_html(result)}
<h2>Highlighted input</h2>
{figures.highlight_html(result)}
<h2>Heatmap</h2>
<div class="kd-scroll">{heat}</div>
<h2>Top words</h2>
<div class="kd-scroll">{bar}</div>
<h2>Settings</h2>
{_table(settings)}
<h2>Prompt as fed to the model</h2>
<pre style="white-space:pre-wrap;background:#f6f8fa;padding:0.6em;border-radius:6px">{
        esc(result.prompt)
    }</pre>
</body>
</html>
"""


def _safe_stem(stem: str) -> str:
    # The stem may come from user text: keep it a plain file name inside out_dir.
    return re.sub(r"[^\w.-]+", "_", stem).strip("._") or "result"


def write_exports(result: AttributionResult, out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Write ``stem.json``, ``stem.csv`` and ``stem.html`` atomically; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = _safe_stem(stem)
    paths = {}
    for kind, make in (("json", to_json), ("csv", to_csv), ("html", to_html)):
        path = out / f"{stem}.{kind}"
        atomic_write_text(path, make(result))
        paths[kind] = path
    return paths
