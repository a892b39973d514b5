"""The report's sections as Markdown (report.md, leaderboard.md)."""
from __future__ import annotations

from lipbench.report.cells import BoardTable, Cell
from lipbench.report.sections import Section


def markdown_table(headers: list[str], rows: list[list[Cell]], numeric: list[bool]) -> str:
    def text(cell: Cell) -> str:
        value = cell.plain().replace("|", "\\|")
        return f"**{value}**" if cell.bold and value != "-" else value

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("--:" if n else ":--" for n in numeric) + "|"]
    lines += ["| " + " | ".join(text(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def board_markdown(tables: list[BoardTable], level: str = "###") -> str:
    return "\n".join(f"{level} {t.title}\n\n" + (f"{t.caption}.\n\n" if t.caption else "")
                     + markdown_table(t.headers, t.rows, t.numeric) for t in tables)


def render_section(section: Section) -> str:
    heading = f"## {section.title}\n\n" if section.title and section.kind not in ("alerts", "notes") else ""
    if section.kind == "lead":
        return "# lipbench report\n\n" + "\n".join(section.items) + "\n"
    if section.kind == "alerts":
        return f"**{section.title}:**\n\n" + "".join(f"- **{line}**\n" for line in section.items)
    if section.kind == "notes":
        return f"{section.title}:\n\n" + "".join(f"- {line}\n" for line in section.items)
    if section.kind == "definitions":
        return heading + "".join(f"- **{term}**: {text}\n" for term, text in section.items)
    if section.kind == "tables":
        return heading + board_markdown(section.items)
    if section.kind == "figures":
        return heading + "\n".join(
            f"![{plot.caption}]({plot.files[0].name})\n\n{plot.caption} ([SVG]({plot.files[1].name}))\n"
            if not plot.note else f"{plot.caption} Nothing to show: {plot.note}.\n" for plot in section.items)
    if section.kind == "table":
        headers, rows, numeric = section.items
        return heading + markdown_table(headers, rows, numeric)
    return heading + ", ".join(f"[{path.name}]({path.name})" for path in section.items) + "\n"


def markdown_page(sections: list[Section]) -> str:
    return "\n".join(render_section(section) for section in sections)
