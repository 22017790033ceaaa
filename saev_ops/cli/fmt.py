"""Output formatting for the CLI: aligned text tables, CSV and JSON. No third-party imports (start-up time)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from collections.abc import Sequence
from typing import Any

FORMATS = ("table", "csv", "json")


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.6g}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


def jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return value


def render(columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> str:
    """Render rows in ``fmt`` (table, csv or json)."""
    if fmt == "json":
        records = [{c: jsonable(v) for c, v in zip(columns, r, strict=True)} for r in rows]
        return json.dumps(records, indent=2, default=str)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([cell(v) for v in r])
        return buf.getvalue().rstrip("\n")
    texts = [[cell(v) for v in r] for r in rows]
    widths = [len(c) for c in columns]
    for r in texts:
        for i, v in enumerate(r):
            widths[i] = max(widths[i], len(v))
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in texts:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def render_within(columns: Sequence[str], rows: Sequence[Sequence[Any]], width: int) -> tuple[str, list[str]]:
    """A text table of as many leading columns as fit in ``width`` characters (at least the first); returns the
    table and the names of the columns left out."""
    texts = [[cell(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in texts]) for i, c in enumerate(columns)]
    keep, used = 0, -2
    for w in widths:
        if keep and used + 2 + w > width:
            break
        used += 2 + w
        keep += 1
    return render(columns[:keep], [r[:keep] for r in rows], "table"), list(columns[keep:])


def render_mapping(pairs: Sequence[tuple[str, Any]]) -> str:
    """Key: value lines, keys aligned."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k.ljust(width)}  {cell(v)}" for k, v in pairs)


def metrics_line(metrics: dict[str, Any]) -> str:
    """``key value`` pairs on one line, missing values left out."""
    return ", ".join(f"{k} {cell(v)}" for k, v in metrics.items() if v is not None)
