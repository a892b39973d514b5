"""Leaderboards as booktabs tabulars, ready to paste into a paper (needs \\usepackage{booktabs})."""
from __future__ import annotations

import itertools

from lipbench.report.cells import BoardTable, Cell, Column

LATEX_PREAMBLE = ("% lipbench leaderboards, one tabular per dataset and budget. Needs \\usepackage{booktabs}.\n"
                  "% Every column, with units, is in leaderboard.csv.\n\n")


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$",
                  "≥": r"$\geq$", "ε": r"$\varepsilon$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(character, character) for character in text)


def latex_cell(cell: Cell, numeric: bool) -> str:
    if cell.text == "-":
        return "--"
    if not numeric:
        return rf"\textbf{{{latex_escape(cell.text)}}}" if cell.bold else latex_escape(cell.text)
    number = cell.text.replace(",", "{,}")
    body = rf"{number} \pm {cell.spread.replace(',', '{,}')}" if cell.spread else number
    body = rf"\mathbf{{{body}}}" if cell.bold else body
    if cell.interval:  # compact: the interval in small type after the value
        low, high = (end.replace(",", "{,}") for end in cell.interval)
        body += rf"\,{{\scriptstyle[{low},\,{high}]}}"
    return f"${body}$"


def latex_keeps(column: Column, cells: list[Cell]) -> bool:
    """A paper table drops the rank where it is a strict order (rows are in order; a group such as "1-3" stays),
    and status and seeds where every row has the same."""
    if column.header == "#":
        return any(len(cell.text) > 1 and "-" in cell.text for cell in cells)
    if column.header == "status":
        return any(cell.alert for cell in cells)
    if column.header == "seeds":
        return len({cell.text for cell in cells}) > 1
    return True


def latex_header(columns: list[Column]) -> list[str]:
    """One header row, or two where columns share a group (e.g. CRA at each radius), with booktabs rules."""
    if not any(column.latex_group for column in columns):
        return [" & ".join(column.latex for column in columns) + r" \\"]
    groups, rules, position = [], [], 1
    for group, members in itertools.groupby(columns, key=lambda column: column.latex_group):
        width = len(list(members))
        if group:
            groups.append(rf"\multicolumn{{{width}}}{{c}}{{{group}}}")
            rules.append(rf"\cmidrule(lr){{{position}-{position + width - 1}}}")
        else:
            groups += [""] * width
        position += width
    return [" & ".join(groups) + r" \\", " ".join(rules),
            " & ".join(column.latex for column in columns) + r" \\"]


def latex_table(table: BoardTable) -> str:
    """A booktabs tabular of one leaderboard, ready to paste (needs \\usepackage{booktabs})."""
    keep = [i for i, column in enumerate(table.columns) if latex_keeps(column, [row[i] for row in table.rows])]
    columns = [table.columns[i] for i in keep]
    lines = [f"% {latex_escape(table.dataset)}, budget {latex_escape(table.budget)}: "
             "mean over seeds with its 95\\% interval in brackets (accuracies; throughput and memory: "
             "the range over seeds), best per column in bold (CRA 36: tied with the best)"
             + (f"; {latex_escape(table.caption)}" if table.caption else ""),
             f"\\begin{{tabular}}{{{''.join('r' if c.numeric else 'l' for c in columns)}}}", r"\toprule",
             *latex_header(columns), r"\midrule"]
    lines += [" & ".join(latex_cell(row[i], table.columns[i].numeric) for i in keep) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
