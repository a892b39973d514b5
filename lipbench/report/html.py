"""The report's sections as one self-contained HTML page (report.html)."""
from __future__ import annotations

import html

from lipbench.report.cells import Cell
from lipbench.report.sections import Section

def html_table(headers: list[str], rows: list[list[Cell]], numeric: list[bool],
               row_classes: list[str] | None = None) -> str:
    def cell_html(cell: Cell, is_numeric: bool) -> str:
        text = html.escape(cell.plain())
        text = f"<strong>{text}</strong>" if cell.bold else text
        classes = " ".join(c for c, on in (("num", is_numeric), ("alert", cell.alert)) if on)
        return f'<td class="{classes}">{text}</td>' if classes else f"<td>{text}</td>"

    head = "".join(f'<th class="{"num" if n else ""}">{html.escape(h)}</th>' for h, n in zip(headers, numeric))
    body = []
    for index, row in enumerate(rows):
        css = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        body.append(f"<tr{css}>" + "".join(cell_html(c, n) for c, n in zip(row, numeric)) + "</tr>")
    return (f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "\n</tbody>\n</table></div>\n")


PAGE_STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th { border-bottom: 2px solid #444; text-align: left; padding: 0.25em 0.6em; white-space: nowrap; }
td { border-bottom: 1px solid #ddd; padding: 0.2em 0.6em; white-space: nowrap; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { color: #888; }
tr.violated td { background: #fde8e8; }
.scroll { overflow-x: auto; }
td.alert, .alert { color: #c00; font-weight: bold; }
.box { border-left: 4px solid #c00; background: #fff3f3; padding: 0.5em 1em; }
.note { border-left: 4px solid #c90; background: #fffbe8; padding: 0.5em 1em; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; } figcaption { font-size: 0.9em; color: #444; }
dt { font-weight: bold; } dd { margin: 0 0 0.6em 1.5em; }
"""


def render_section(section: Section) -> str:
    heading = f"<h2>{html.escape(section.title)}</h2>\n" if section.title else ""
    if section.kind == "lead":
        return "<h1>lipbench report</h1>\n" + "".join(f"<p>{html.escape(line)}</p>" for line in section.items)
    if section.kind in ("alerts", "notes"):
        box, label = ("box", ' class="alert"') if section.kind == "alerts" else ("note", "")
        return (f'<div class="{box}"><p{label}>{html.escape(section.title)}:</p><ul>'
                + "".join(f"<li>{html.escape(line)}</li>" for line in section.items) + "</ul></div>")
    if section.kind == "definitions":
        return heading + "<dl>" + "".join(f"<dt>{html.escape(term)}</dt><dd>{html.escape(text)}</dd>"
                                          for term, text in section.items) + "</dl>"
    if section.kind == "tables":
        parts = [heading]
        for table in section.items:
            classes = ["violated" if v else "failed" if f else "" for f, v in zip(table.failed, table.violated)]
            parts += [f"<h3>{html.escape(table.title)}</h3>"]
            parts += [f"<p>{html.escape(table.caption)}.</p>"] if table.caption else []
            parts += [html_table(table.headers, table.rows, table.numeric, classes)]
        return "\n".join(parts)
    if section.kind == "figures":
        return heading + "\n".join(
            f'<figure><img src="{plot.files[0].name}" alt="{html.escape(plot.caption)}"><figcaption>'
            f'{html.escape(plot.caption)} <a href="{plot.files[1].name}">SVG</a></figcaption></figure>'
            if not plot.note else
            f'<p class="note">{html.escape(plot.caption)} Nothing to show: {html.escape(plot.note)}.</p>'
            for plot in section.items)
    if section.kind == "table":
        headers, rows, numeric = section.items
        return heading + html_table(headers, rows, numeric)
    return f"<p>{html.escape(section.title)}: " + ", ".join(
        f'<a href="{path.name}">{html.escape(path.name)}</a>' for path in section.items) + "</p>"


def html_page(sections: list[Section]) -> str:
    head = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>lipbench report</title>\n'
            f"<style>{PAGE_STYLE}</style>\n</head>\n<body>")
    return "\n".join([head, *(render_section(section) for section in sections), "</body>\n</html>\n"])
