"""A built table and its renderings: Markdown, LaTeX, the values CSV and the footnotes."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from autolora.autoattack_variants import (
    STANDARD,
    AutoAttackVariant,
    autoattack_variant,
)
from autolora.planning import layout
from autolora.planning.vocabulary import (
    DATASETS,
    METHOD_LABELS,
    dataset_label,
)
from autolora.reporting.tables.numbers import (
    INCOMPLETE_MARK,
    MISSING,
    NOT_COMPUTED,
    Number,
    ordered,
)

ARITHMETIC_LABELS = {"bf16": "bf16 autocast", "fp32": "fp32", "bf16+fp32": "bf16 and fp32 attempts"}
ARITHMETIC_CELLS_LISTED = 6  # cells named per kind in the arithmetic note; more are counted
AUTOATTACK_METRIC = "AA"
NO_AA_IN_RECORD = (
    "their evaluation records have no AA (evaluated with `--no-autoattack`); delete them and "
    "rerun `snakemake`"
)

METRIC_LABELS = {"SA": "SA", "PGD10": "PGD-10", "AA": "AA", "ratio": "ratio (%)"}


# --------------------------------------------------------------------------------------------
# Tables


@dataclass
class Table:
    name: str
    title: str
    numbers: list[Number]
    notes: list[str] = field(default_factory=list)
    results_root: str = "results"
    checkpoint: str = "best_test"
    arch: str = ""
    autoattack: AutoAttackVariant = field(default_factory=lambda: autoattack_variant(STANDARD))
    # cell id -> the config keys that leave it without AA (autolora.planning.grid.autoattack_skip_reasons)
    not_computed_reasons: dict[str, str] = field(default_factory=dict)
    arithmetic: dict[str, str] = field(default_factory=dict)  # evaluated cell -> how it trained

    @property
    def rows(self) -> list[str]:
        return ordered(n.row for n in self.numbers)

    @property
    def columns(self) -> list[str]:
        return ordered(n.column for n in self.numbers)

    def number(self, row: str, column: str) -> Number | None:
        return next((n for n in self.numbers if n.row == row and n.column == column), None)

    @property
    def missing_cells(self) -> list[str]:
        return sorted({c for n in self.numbers for c in n.missing_cells})

    @property
    def not_computed_cells(self) -> list[str]:
        return sorted({c for n in self.numbers for c in n.not_computed_cells})

    @property
    def cells(self) -> list[str]:
        """Every cell behind a number of this table."""
        return sorted({s.cell_id for n in self.numbers for s in n.seeds})

    @property
    def autoattack_cells(self) -> list[str]:
        """The cells behind this table's AA numbers (none: the table reports no AA)."""
        return sorted(
            {s.cell_id for n in self.numbers if n.metric == AUTOATTACK_METRIC for s in n.seeds}
        )

    def not_computed_by_reason(self) -> dict[str, list[str]]:
        """The cells without AA, grouped by what explains it (a config key, or the record)."""
        groups: dict[str, list[str]] = {}
        for cell in self.not_computed_cells:
            reason = self.not_computed_reasons.get(cell) or NO_AA_IN_RECORD
            groups.setdefault(reason, []).append(cell)
        return groups

    @property
    def full_title(self) -> str:
        """The title, naming the AutoAttack variant when the table reports AA."""
        if not self.autoattack_cells:
            return self.title
        return f"{self.title}; AA: {self.autoattack.label}"

    @property
    def complete(self) -> bool:
        return all(n.complete for n in self.numbers if n.kind != "ratio")

    def display_frame(self) -> pd.DataFrame:
        """Rows × columns of display strings; absent combinations are empty."""
        frame = pd.DataFrame("", index=pd.Index(self.rows, name="row"), columns=self.columns)
        for number in self.numbers:
            frame.loc[number.row, number.column] = number.display()
        return frame

    def values_frame(self) -> pd.DataFrame:
        """One line per number: value, std, n, expected seeds, completeness, per-seed values."""
        lines = []
        for n in self.numbers:
            lines.append(
                {
                    "table": self.name,
                    "row": n.row,
                    "column": n.column,
                    "kind": n.kind,
                    "metric": n.metric,
                    "value": n.value,
                    "std": n.std,
                    "n": n.n,
                    "expected": n.expected,
                    "complete": n.complete if n.kind != "ratio" else True,
                    "test": n.test or "",
                    "seeds": ";".join(
                        f"{s.group + ':' if s.group else ''}{s.seed}="
                        f"{'' if s.value is None else repr(s.value)}"
                        for s in n.seeds
                    ),
                    "missing_cells": ";".join(n.missing_cells),
                    "not_computed_cells": ";".join(n.not_computed_cells),
                    "autoattack": self.autoattack.name if n.metric == AUTOATTACK_METRIC else "",
                }
            )
        return pd.DataFrame(lines)

    @property
    def evaluated_values(self) -> int:
        """How many per-seed values from evaluation records the table's numbers use."""
        return sum(1 for n in self.numbers for s in n.seeds if s.status == "ok")

    def eval_target(self, cell_id: str) -> str:
        return (
            f"{self.results_root.rstrip('/')}/{cell_id}/{layout.evaluation_record(self.checkpoint)}"
        )

    def footnotes(self) -> list[str]:
        """Notes printed under the table: conventions first, then each gap once, by cause, with
        a count and the config key or command that explains it (cells: ``missing.txt``)."""
        notes = list(self.notes)
        if self.autoattack_cells:
            notes.append(self.autoattack.footnote())
        if any(n.kind == "mean" and n.n and n.n < n.expected for n in self.numbers):
            notes.append(
                f"{INCOMPLETE_MARK} mean over fewer seeds than configured (n/N): "
                "incomplete, not comparable with complete cells."
            )
        if any(n.kind == "p_value" and n.n and not n.complete for n in self.numbers):
            notes.append(f"{INCOMPLETE_MARK} p-value from fewer seeds than configured.")
        aa_cells = len(self.autoattack_cells)
        for reason, cells in self.not_computed_by_reason().items():
            notes.append(
                f"{NOT_COMPUTED}: AA not computed for {len(cells)} of {aa_cells} cells: {reason} "
                f"(the cells: {layout.MISSING_CELLS})."
            )
        notes += sorted(
            {
                f"{MISSING} (ratio): {n.formula}"
                for n in self.numbers
                if n.kind == "ratio" and math.isnan(n.value)
            }
        )
        if any(n.kind == "p_value" and n.n and math.isnan(n.value) for n in self.numbers):
            notes.append(f"{NOT_COMPUTED} (p-value): undefined, both groups have zero variance.")
        arithmetic_note = self.arithmetic_note()
        if arithmetic_note:
            notes.append(arithmetic_note)
        if self.missing_cells:
            notes.append(
                f"{MISSING}: no evaluation record yet for {len(self.missing_cells)} of "
                f"{len(self.cells)} cells; `snakemake` produces them (each cell and its command: "
                f"{layout.MISSING_CELLS})."
            )
        return notes

    def arithmetic_note(self) -> str | None:
        """A note when the table's cells were trained under different arithmetic (bf16 autocast
        and fp32, ``training.runtime.bf16``): their numbers are not strictly comparable."""
        groups: dict[str, list[str]] = {}
        for cell, kind in sorted(self.arithmetic.items()):
            groups.setdefault(kind, []).append(cell)
        if len(groups) < 2:
            return None
        parts = []
        for kind, cells in sorted(groups.items()):
            listed = f" ({', '.join(cells)})" if len(cells) <= ARITHMETIC_CELLS_LISTED else ""
            parts.append(f"{ARITHMETIC_LABELS.get(kind, kind)}: {len(cells)} cell(s){listed}")
        return (
            "Cells trained under different arithmetic (training.runtime.bf16), not strictly "
            "comparable: " + "; ".join(parts) + "."
        )

    # ---- rendering

    def to_csv(self) -> str:
        return self.display_frame().to_csv()

    def values_csv(self) -> str:
        return self.values_frame().to_csv(index=False)

    def to_markdown(self) -> str:
        frame = self.display_frame()
        header = ["row", *frame.columns]
        lines = [
            f"**{self.full_title}**",
            "",
            _md_row(header),
            _md_row(["---"] + ["--:"] * len(frame.columns)),
            *(_md_row([row, *frame.loc[row]]) for row in frame.index),
            "",  # Markdown needs a blank line before the notes' paragraph
            *(note + "  " for note in self.footnotes()),  # two trailing spaces: a line break
        ]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        frame = self.display_frame()
        spec = "l" + "r" * len(frame.columns)
        header = [""] + [_latex_column(c) for c in frame.columns]
        lines = [
            "% " + self.full_title,
            f"\\begin{{tabular}}{{{spec}}}",
            "\\toprule",
            " & ".join(header) + r" \\",
            "\\midrule",
        ]
        for row in frame.index:
            cells = [_latex_row_label(row)] + [_latex_cell(v) for v in frame.loc[row]]
            lines.append(" & ".join(cells) + r" \\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        notes = [latex_escape(note.replace("`", "")) + "\\par" for note in self.footnotes()]
        if notes:  # paragraphs under the table, which wrap (a table cell would not)
            lines += ["\\par\\smallskip", "{\\footnotesize", *notes, "}"]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Rendering helpers


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


LATEX_ESCAPES = {"_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#"}


def latex_escape(text: str) -> str:
    text = "".join(LATEX_ESCAPES.get(ch, ch) for ch in text)
    return (
        text.replace("±", r"$\pm$")
        .replace(MISSING, "---")
        .replace(INCOMPLETE_MARK, r"$^\dagger$")
        .replace("ε", r"$\varepsilon$")
        .replace("α", r"$\alpha$")
    )


def _latex_cell(value: str) -> str:
    return latex_escape(value)


def _latex_row_label(row: str) -> str:
    parts = row.split("/")
    labels = [dataset_label(p) if p in DATASETS else METHOD_LABELS.get(p, p) for p in parts]
    if parts[0].startswith("table"):
        labels[0] = "Table " + parts[0][len("table") :]
    return latex_escape(" / ".join(labels))


def _latex_column(column: str) -> str:
    factor, _, metric = column.rpartition("/")
    label = METRIC_LABELS.get(metric, metric)
    if not factor:
        return latex_escape(label)
    for prefix, symbol in (("alpha", r"$\alpha$="), ("eps", r"$\varepsilon_{pt}$="), ("r", "$r$=")):
        if re.fullmatch(rf"{prefix}[0-9.]+", factor):
            return symbol + factor[len(prefix) :] + " " + latex_escape(label)
    return latex_escape(METHOD_LABELS.get(factor, factor) + " " + label)
