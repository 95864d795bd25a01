"""Tables from evaluation records with known values: entries, p-values, missing seeds, rendering,
the paper comparison and `autolora aggregate` end to end."""

from __future__ import annotations

import io
import math
import statistics
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml
from records_factory import metrics_of, read_json, write_cell
from scipy.stats import t as t_distribution

from autolora.cli import main
from autolora.errors import DataError
from autolora.files import write_json
from autolora.planning.grid import expand_grid
from autolora.records import seal
from autolora.reporting.compare import (
    FAILS,
    HOLDS,
    UNKNOWN,
    claims_frame,
    comparison_frame,
    load_paper_results,
)
from autolora.reporting.tables import RATIO_ROW, RATIO_USED_ROW, build_tables, ratio_number

PAPER_CSV = Path(__file__).parents[1] / "config" / "paper_results.csv"
SEEDS = (0, 6, 66)
# (SA, PGD10, AA) per seed 0, 6, 66
VALUES = {
    ("cifar10", "vanilla"): [(81.0, 52.0, 47.0), (81.6, 52.4, 47.5), (80.7, 53.0, 47.3)],
    ("cifar10", "twins"): [(85.0, 53.0, 47.8), (85.4, 53.2, 48.0), (85.3, 52.9, 47.9)],
    ("cifar10", "autolora"): [(84.0, 54.0, 48.9), (84.4, 54.6, 49.1), (84.2, 54.3, 48.8)],
    ("dtd", "vanilla"): [(47.0, 23.0, 20.0), (48.0, 24.0, 20.5), (47.5, 23.5, 20.2)],
    ("dtd", "twins"): [(49.0, 25.0, 21.0), (49.2, 24.6, 20.8), (48.8, 24.9, 20.9)],
    ("dtd", "autolora"): [(48.5, 24.0, 21.5), (48.9, 24.2, 21.9), (48.6, 24.4, 22.0)],
}
CONFIG = {
    "protocol": "paper",
    "seeds": list(SEEDS),
    "datasets": {"cifar10": {"source": "cifar10"}, "dtd": {"source": "dtd"}},
    "tables": {
        "table1": {"arch": "resnet18", "eps_pt": 4, "datasets": ["cifar10", "dtd"]},
        "table8": {"tables": ["table1"]},
    },
}


def values_of(dataset, method, metric):
    column = ("SA", "PGD10", "AA").index(metric)
    return [seed_values[column] for seed_values in VALUES[(dataset, method)]]


@pytest.fixture
def grid():
    return expand_grid(CONFIG)


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def populate(root, grid, skip=()):
    """Write every table1 cell except the (dataset, method, seed) triples in ``skip``."""
    for e in grid.entries:
        if e.table != "table1" or (e.dataset, e.method, e.seed) in skip:
            continue
        write_cell(root, e, metrics_of(*VALUES[(e.dataset, e.method)][SEEDS.index(e.seed)]))


def build(grid, **options):
    entries = [e for e in grid.entries if e.table != "table8"]
    return {
        t.name: t
        for t in build_tables(entries, "results", "best_test", table8_sources=["table1"], **options)
    }


# ---- exact entries ---------------------------------------------------------------------------


def test_table1_entries_are_mean_and_sample_std_of_the_seeds(root, grid):
    populate(root, grid)
    table = build(grid)["table1"]
    assert table.rows == [
        f"{d}/{m}" for d in ("cifar10", "dtd") for m in ("vanilla", "twins", "autolora")
    ]
    assert table.columns == ["SA", "PGD10", "AA"]
    # 54.0, 54.6, 54.3: mean 54.3; deviations -0.3, 0.3, 0 -> var 0.18 / 2 = 0.09 -> std 0.3
    assert table.number("cifar10/autolora", "PGD10").display() == "54.30 ± 0.30 (3)"
    # 81.0, 81.6, 80.7: mean 81.1; squares 0.01 + 0.25 + 0.16 = 0.42 / 2 = 0.21 -> std 0.458
    number = table.number("cifar10/vanilla", "SA")
    assert number.value == pytest.approx(81.1) and number.std == pytest.approx(math.sqrt(0.21))
    assert number.display() == "81.10 ± 0.46 (3)"
    for (dataset, method), _ in VALUES.items():
        for metric in ("SA", "PGD10", "AA"):
            values = values_of(dataset, method, metric)
            n = table.number(f"{dataset}/{method}", metric)
            assert n.value == pytest.approx(statistics.mean(values), abs=1e-12)
            assert n.std == pytest.approx(statistics.stdev(values), abs=1e-12)
            assert (n.n, n.expected, n.complete) == (3, 3, True)
    assert table.complete and not table.missing_cells
    assert any("ddof = 1" in note for note in table.footnotes())


def test_values_csv_keeps_full_precision_and_per_seed_values(root, grid):
    populate(root, grid)
    frame = pd.read_csv(pd.io.common.StringIO(build(grid)["table1"].values_csv()))
    line = frame[(frame.row == "dtd/twins") & (frame.column == "AA")].iloc[0]
    assert line.value == pytest.approx(20.9) and line.n == 3 and line.expected == 3
    assert line.seeds == "0=21.0;6=20.8;66=20.9"


# ---- missing cells ---------------------------------------------------------------------------


def test_missing_seed_is_marked_incomplete_with_footnote_and_command(root, grid):
    populate(
        root,
        grid,
        skip={
            ("cifar10", "autolora", 66),
            ("dtd", "twins", 0),
            ("dtd", "twins", 6),
            ("dtd", "twins", 66),
        },
    )
    table = build(grid)["table1"]
    number = table.number("cifar10/autolora", "PGD10")
    # seeds 0 and 6 only: 54.0, 54.6 -> mean 54.3, std sqrt(0.18) = 0.424
    assert number.display() == "54.30 ± 0.42 (2/3)†"
    assert not number.complete and number.n == 2 and number.expected == 3
    assert table.number("dtd/twins", "SA").display() == "—"
    missing = "paper/runs/resnet18-eps4/cifar10/autolora/seed66"
    assert missing in table.missing_cells and not table.complete
    assert table.eval_target(missing) == f"results/{missing}/eval-best_test.json"
    # one footnote for the four missing cells, with the count; the cells are in missing.txt
    (note,) = [n for n in table.footnotes() if "no evaluation record" in n]
    assert note.startswith("—: no evaluation record yet for 4 of 18 cells")
    assert "`snakemake`" in note and "missing.txt" in note and "seed" not in note
    markdown = table.to_markdown()
    assert "54.30 ± 0.42 (2/3)†" in markdown and "fewer seeds than configured" in markdown
    assert missing not in markdown and missing not in table.to_latex()


def test_metric_not_computed_reads_na(root, grid):
    populate(root, grid)
    for e in grid.entries:
        if e.table == "table1" and e.dataset == "cifar10" and e.method == "vanilla":
            write_cell(root, e, metrics_of(80.0, 50.0, None))
    tables = build(grid)
    number = tables["table1"].number("cifar10/vanilla", "AA")
    assert number.display() == "n/a" and len(number.not_computed_cells) == 3
    # no reason from the config: the records themselves lack AA
    for table in tables.values():
        (note,) = [n for n in table.footnotes() if n.startswith("n/a")]
        assert note.startswith("n/a: AA not computed for 3 of 18 cells: their evaluation records")
    assert tables["table8"].number("table1/cifar10", "vanilla/AA").display() == "n/a"


def wrapped_lines(note: str, width: int = 100) -> int:
    return len(textwrap.wrap(note, width))


def test_footnotes_group_gaps_by_cause_with_counts_and_config_keys(root, grid):
    """AA left out by seed and by dataset, one seed without any record: one short footnote per
    cause, each naming its config key; no cell list in any table footnote."""
    config = {
        **CONFIG,
        "evaluation": {"autoattack_seeds": [0, 6], "autoattack_datasets": ["cifar10"]},
    }
    aa_cells = grid.autoattack_cells(config)
    for e in grid.entries:
        if e.table != "table1" or (e.dataset, e.method, e.seed) == ("cifar10", "twins", 6):
            continue
        sa, pgd, aa = VALUES[(e.dataset, e.method)][SEEDS.index(e.seed)]
        write_cell(root, e, metrics_of(sa, pgd, aa if e.cell_id in aa_cells else None))
    tables = build(grid, not_computed_reasons=grid.autoattack_skip_reasons(config))
    seeds, datasets = (
        "`evaluation.autoattack_seeds` = [0, 6]",
        "`evaluation.autoattack_datasets` = [cifar10]",
    )
    for table in tables.values():
        notes = table.footnotes()
        assert f"n/a: AA not computed for 3 of 18 cells: {seeds} (the cells: missing.txt)." in notes
        assert (
            f"n/a: AA not computed for 6 of 18 cells: {datasets} (the cells: missing.txt)." in notes
        )
        assert (
            f"n/a: AA not computed for 3 of 18 cells: {seeds} and {datasets} (the cells: missing.txt)."
            in notes
        )
        assert any(n.startswith("—: no evaluation record yet for 1 of 18 cells") for n in notes)
        assert all(wrapped_lines(n) <= 3 for n in notes), [n for n in notes if wrapped_lines(n) > 3]
        assert not any("paper/runs/" in n for n in notes)
    assert tables["table1"].number("dtd/autolora", "AA").display() == "n/a"
    assert tables["table1"].number("cifar10/autolora", "AA").display().endswith("(2/3)†")
    frame = pd.read_csv(io.StringIO(tables["table1"].values_csv()), keep_default_na=False)
    line = frame[(frame.row == "dtd/vanilla") & (frame.column == "AA")].iloc[0]
    assert line.not_computed_cells.split(";") == [
        f"paper/runs/resnet18-eps4/dtd/vanilla/seed{seed}" for seed in SEEDS
    ]
    assert line.autoattack == "standard"
    assert frame[frame.column == "SA"].autoattack.eq("").all()


@pytest.mark.parametrize("version", ["standard", "apgd-ce+apgd-t"])
def test_every_table_with_aa_names_the_autoattack_variant(root, grid, version):
    for e in grid.entries:
        if e.table == "table1":
            values = VALUES[(e.dataset, e.method)][SEEDS.index(e.seed)]
            write_cell(root, e, metrics_of(*values), autoattack_version=version)
    tables = build(grid, autoattack_version=version)
    name = (
        "reduced AutoAttack (APGD-CE + APGD-T)" if version != "standard" else "standard AutoAttack"
    )
    for table in tables.values():
        assert table.full_title.endswith(f"; AA: {name}")
        assert f"**{table.full_title}**" in table.to_markdown()
        assert f"% {table.full_title}" in table.to_latex()
        (note,) = [n for n in table.footnotes() if n.startswith("AA: ")]
        assert f"`evaluation.autoattack_version` = {version}" in note
        assert ("not comparable with the paper" in note) == (version != "standard")
        assert wrapped_lines(note) <= 3
        assert table.complete


def test_aa_from_another_autoattack_variant_is_refused(root, grid):
    populate(root, grid)  # standard AutoAttack records
    with pytest.raises(DataError, match=r"AutoAttack 'standard'.*evaluation\.autoattack_version"):
        build(grid, autoattack_version="apgd-ce+apgd-t")


def test_tables_without_aa_name_no_variant(root):
    config = {
        **CONFIG,
        "tables": {"table3": {"arch": "resnet18", "datasets": ["cifar10"], "ranks": [8]}},
    }
    grid = expand_grid(config)
    for e in grid.entries:
        write_cell(root, e, metrics_of(80.0, 50.0, None))
    (table,) = build_tables(
        grid.entries, "results", "best_test", autoattack_version="apgd-ce+apgd-t"
    )
    assert "AutoAttack" not in table.full_title
    assert not any("AutoAttack" in n or n.startswith("n/a") for n in table.footnotes())


def test_a_broken_record_names_the_file(root, grid):
    populate(root, grid)
    bad = root / "results" / grid.entries[0].cell_id / "eval-best_test.json"
    bad.write_text('{"kind": "evaluation", "cell_id": "elsewhere"}')
    with pytest.raises(DataError, match="eval-best_test.json"):
        build(grid)


# ---- Table 8 ---------------------------------------------------------------------------------


def hand_student_p(a, b):
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    ss = sum((x - mean_a) ** 2 for x in a) + sum((x - mean_b) ** 2 for x in b)
    df = len(a) + len(b) - 2
    statistic = (mean_a - mean_b) / math.sqrt(ss / df * (1 / len(a) + 1 / len(b)))
    return 2 * t_distribution.sf(abs(statistic), df)


def hand_welch_p(a, b):
    var_a, var_b = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    statistic = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(var_a + var_b)
    df = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    return 2 * t_distribution.sf(abs(statistic), df)


@pytest.mark.parametrize("welch", [False, True])
def test_table8_p_values_equal_independent_computation(root, grid, welch):
    populate(root, grid)
    table = build(grid, welch=welch)["table8"]
    assert table.rows == ["table1/cifar10", "table1/dtd"]
    assert table.columns == [
        f"{b}/{m}" for b in ("vanilla", "twins") for m in ("SA", "PGD10", "AA")
    ]
    hand = hand_welch_p if welch else hand_student_p
    for dataset in ("cifar10", "dtd"):
        for baseline in ("vanilla", "twins"):
            for metric in ("SA", "PGD10", "AA"):
                expected = hand(
                    values_of(dataset, "autolora", metric), values_of(dataset, baseline, metric)
                )
                number = table.number(f"table1/{dataset}", f"{baseline}/{metric}")
                assert number.value == pytest.approx(expected, rel=1e-9)
    note = "Welch" if welch else "Student"
    assert any(note in line for line in table.footnotes())
    assert note in table.to_markdown() and note in table.to_latex()


def test_table8_needs_two_seeds_per_group(root, grid):
    populate(root, grid, skip={("dtd", "autolora", 0), ("dtd", "autolora", 6)})
    table = build(grid)["table8"]
    assert table.number("table1/dtd", "vanilla/PGD10").display() == "—"
    assert table.number("table1/cifar10", "twins/SA").complete


# ---- ablation tables and the parameter ratio ----------------------------------------------------


def counts_of(arch: str, rank: int, lora_blocks: str) -> dict:
    """Counted on the built model (torch; the tables module itself never imports it)."""
    from autolora.models import parameter_counts

    return parameter_counts(arch, rank, lora_blocks)


@pytest.mark.parametrize(
    ("arch", "created_pct", "used_pct"),
    [
        # torchvision totals minus the 1000-way head: 11,176,512 / 23,508,032 FE parameters
        ("resnet18", 100 * 520_704 / 11_176_512, 100 * 276_480 / 11_176_512),
        ("resnet50", 100 * 829_952 / 23_508_032, 100 * 215_040 / 23_508_032),
        ("tiny", 100 * 30_528 / 77_352, 100 * 30_528 / 77_352),  # one block per stage
    ],
)
def test_table3_ratio_from_the_built_model_created_and_used(arch, created_pct, used_pct):
    counts = counts_of(arch, 8, "last")
    created = ratio_number("table3", RATIO_ROW, "r8/ratio", arch, 8, counts, None)
    used = ratio_number("table3", RATIO_USED_ROW, "r8/ratio", arch, 8, counts, None, used=True)
    assert created.value == pytest.approx(created_pct, rel=1e-12)
    assert used.value == pytest.approx(used_pct, rel=1e-12)
    assert str(counts["lora_created"]) in created.formula
    assert str(counts["lora_used"]) in used.formula and "lora_blocks=last" in used.formula
    assert created.parameters["counted"] == "lora_created"
    missing = ratio_number("table3", RATIO_ROW, "r8/ratio", arch, 8, None, None)
    assert math.isnan(missing.value) and missing.display() == "—"


ABLATIONS = {
    "protocol": "paper",
    "seeds": [0, 6],
    "datasets": {"cifar10": {"source": "cifar10"}, "cifar100": {"source": "cifar100"}},
    "tables": {
        "table3": {"datasets": ["cifar10"], "ranks": [2, 8]},
        "table4": {"datasets": ["cifar100"], "eps_pt": [0, 4], "methods": ["vanilla"]},
        "table5": {"datasets": ["cifar10"]},
        "table6": {"datasets": ["cifar10"], "alphas": [0.5, 1]},
    },
}


def test_ablation_layouts_and_values(root):
    grid = expand_grid(ABLATIONS)
    for e in grid.entries:
        pgd = {"r2": 50.0, "alpha0.5": 51.0, "autolr": 52.0}.get(e.variant, 53.0) + e.seed / 6
        write_cell(root, e, metrics_of(80.0 + e.eps_pt, pgd, 45.0))
    counts = {("resnet18", r): counts_of("resnet18", r, "last") for r in (2, 8)}
    built = build_tables(grid.entries, "results", "best_test", parameter_counts=counts)
    tables = {t.name: t for t in built}
    assert list(tables) == ["table3", "table4", "table5", "table6"]
    t3 = tables["table3"]
    assert t3.rows == ["cifar10", "param_ratio", "param_ratio_used"]
    assert t3.columns == ["r2/SA", "r2/PGD10", "r8/SA", "r8/PGD10", "r2/ratio", "r8/ratio"]
    assert t3.number("cifar10", "r2/PGD10").value == pytest.approx(50.5)  # seeds 0, 6: 50, 51
    assert t3.number("cifar10", "r8/PGD10").value == pytest.approx(53.5)
    assert t3.number("param_ratio", "r8/ratio").display() == f"{100 * 520_704 / 11_176_512:.2f}"
    assert t3.number("param_ratio_used", "r8/ratio").display() == (
        f"{100 * 276_480 / 11_176_512:.2f}"
    )
    assert t3.number("param_ratio_used", "r2/ratio").value == pytest.approx(
        100 * 276_480 / 4 / 11_176_512
    )
    every = {key: counts_of("resnet18", key[1], "all") for key in counts}
    rows = build_tables(grid.entries, "results", "best_test", parameter_counts=every)[0].rows
    assert rows == ["cifar10", "param_ratio"]  # under `all` used = created: one row
    t4 = tables["table4"]
    assert t4.rows == ["cifar100/vanilla"] and t4.columns == [
        "eps0/SA",
        "eps0/PGD10",
        "eps4/SA",
        "eps4/PGD10",
    ]
    assert t4.number("cifar100/vanilla", "eps0/SA").value == pytest.approx(80.0)
    assert t4.number("cifar100/vanilla", "eps4/SA").value == pytest.approx(84.0)
    t5 = tables["table5"]
    assert t5.columns == [
        f"{v}/{m}" for v in ("twins", "twins-autolr") for m in ("SA", "PGD10", "AA")
    ]
    assert t5.number("cifar10", "twins-autolr/PGD10").value == pytest.approx(52.5)
    t6 = tables["table6"]
    assert t6.columns == ["alpha0.5/SA", "alpha0.5/PGD10", "alpha1/SA", "alpha1/PGD10"]
    assert t6.number("cifar10", "alpha0.5/PGD10").value == pytest.approx(51.5)
    comparison = comparison_frame([t3, t6], load_paper_results(PAPER_CSV)).set_index(
        ["row", "column"]
    )
    ratio = comparison.loc[("param_ratio", "r8/ratio")]
    assert ratio.paper == 4.87 and ratio.difference == pytest.approx(
        100 * 520_704 / 11_176_512 - 4.87
    )
    assert comparison.loc[("cifar10", "alpha0.5/PGD10")].paper == 54.35
    assert comparison.loc[("cifar10", "alpha1/SA")].paper == 84.2  # the paper writes alpha 1.0
    latex = t6.to_latex()
    assert r"$\alpha$=0.5 PGD-10" in latex and r"\pm" in latex and "CIFAR-10" in latex


# ---- paper comparison ----------------------------------------------------------------------------


def test_comparison_differences_and_claims(root, grid):
    populate(root, grid, skip={("dtd", "vanilla", s) for s in SEEDS})
    tables = list(build(grid).values())
    paper = load_paper_results(PAPER_CSV)
    comparison = comparison_frame(tables, paper)
    line = comparison[
        (comparison.table == "table1")
        & (comparison.row == "cifar10/autolora")
        & (comparison.column == "PGD10")
    ].iloc[0]
    assert line.paper == 54.27 and line.ours == pytest.approx(54.3)
    assert line.difference == pytest.approx(54.3 - 54.27)
    p_line = comparison[
        (comparison.table == "table8")
        & (comparison.row == "table1/cifar10")
        & (comparison.column == "vanilla/SA")
    ].iloc[0]
    assert p_line.paper == 0.0001
    claims = claims_frame(tables, paper).set_index(["dataset", "metric"])
    # cifar10 PGD10: autolora 54.3 > twins 53.03 > vanilla 52.47 -> holds; AA 48.93 > 47.9 -> holds
    assert claims.loc[("cifar10", "PGD10"), "ours"] == HOLDS
    assert claims.loc[("cifar10", "AA"), "paper"] == HOLDS
    # dtd without vanilla: a missing number makes the claim unknown
    assert claims.loc[("dtd", "PGD10"), "ours"] == UNKNOWN
    populate(root, grid)
    claims = claims_frame(list(build(grid).values()), paper).set_index(["dataset", "metric"])
    assert claims.loc[("dtd", "PGD10"), "ours"] == FAILS  # autolora 24.2 < twins 24.83
    assert claims.loc[("dtd", "AA"), "ours"] == HOLDS  # 21.8 > 20.9 > 20.23


def test_reduced_autoattack_is_not_set_beside_the_papers_aa(root, grid):
    for e in grid.entries:
        if e.table == "table1":
            values = VALUES[(e.dataset, e.method)][SEEDS.index(e.seed)]
            write_cell(root, e, metrics_of(*values), autoattack_version="apgd-ce+apgd-t")
    tables = list(build(grid, autoattack_version="apgd-ce+apgd-t").values())
    paper = load_paper_results(PAPER_CSV)
    comparison = comparison_frame(tables, paper).set_index(["table", "row", "column"])
    assert comparison.loc[("table1", "cifar10/autolora", "PGD10"), "paper"] == 54.27
    assert math.isnan(comparison.loc[("table1", "cifar10/autolora", "AA"), "paper"])
    assert math.isnan(comparison.loc[("table8", "table1/cifar10", "vanilla/AA"), "paper"])
    claims = claims_frame(tables, paper).set_index(["dataset", "metric"])
    assert "reduced AutoAttack" in claims.loc[("cifar10", "AA"), "note"]
    assert claims.loc[("cifar10", "PGD10"), "note"] == ""


# ---- the command ------------------------------------------------------------------------------


def test_aggregate_command_writes_every_output(root, grid):
    populate(root, grid, skip={("dtd", "autolora", 66)})
    figures = {
        "arch": "resnet18",
        "eps_pt": 4,
        "datasets": ["cifar10"],
        "methods": ["vanilla", "twins"],
    }
    config = {**CONFIG, "tables": {**CONFIG["tables"], "figures": figures}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    status = main(
        [
            "aggregate",
            "--config",
            "config.yaml",
            "--results",
            "results",
            "--out",
            "report",
            "--paper",
            str(PAPER_CSV),
        ]
    )
    assert status == 0
    out = root / "report"
    for name in ("table1", "table8"):
        for suffix in (".csv", ".md", ".tex", "_values.csv"):
            assert (out / "tables" / f"{name}{suffix}").is_file()
        assert (out / "provenance" / f"{name}.json").is_file()
    # LaTeX: the footnotes are paragraphs under the tabular, so that long ones wrap
    latex = (out / "tables" / "table1.tex").read_text()
    tabular, notes = latex.split("\\end{tabular}\n")
    assert "footnotesize" not in tabular and "multicolumn" not in tabular
    assert notes.startswith("\\par\\smallskip\n{\\footnotesize\n") and notes.endswith("}\n")
    assert "Values in \\%, mean $\\pm$ std (n) over seeds" in notes
    display = pd.read_csv(out / "tables" / "table1.csv", index_col="row")
    assert display.loc["cifar10/autolora", "PGD10"] == "54.30 ± 0.30 (3)"
    assert display.loc["dtd/autolora", "PGD10"].endswith("(2/3)†")
    report = (out / "report.md").read_text()
    assert "paper/runs/resnet18-eps4/dtd/autolora/seed66" in report and "Student" in report
    assert "**incomplete**" in report
    for kind in ("grad_similarity", "test_pgd10"):
        assert (out / "figures" / f"{kind}-resnet18-cifar10.png").stat().st_size > 0
        assert f"](figures/{kind}-resnet18-cifar10.png)" in report
    html = (out / "report.html").read_text()
    assert "<table>" in html and '<img alt="test_pgd10-resnet18-cifar10"' in html
    assert "dtd/autolora/seed66\tsnakemake results/" in (out / "missing.txt").read_text()
    comparison = pd.read_csv(out / "comparison.csv")
    assert {"ours", "paper", "difference"} <= set(comparison.columns)


def test_aggregate_refuses_to_replace_tables_with_fewer_evaluations(root, grid, capsys):
    populate(root, grid)
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    command = ["aggregate", "--config", "config.yaml", "--out", "report", "--paper", str(PAPER_CSV)]
    assert main([*command, "--results", "results"]) == 0
    written = {p: p.read_bytes() for p in sorted((root / "report").rglob("*")) if p.is_file()}

    (root / "elsewhere").mkdir()
    assert main([*command, "--results", "elsewhere"]) == 2
    error = capsys.readouterr().err
    assert "refusing to replace" in error and "(54 evaluated values) with a table of 0" in error
    assert "--allow-fewer" in error
    assert {p: p.read_bytes() for p in written} == written  # nothing replaced

    assert main([*command, "--results", "elsewhere", "--allow-fewer"]) == 0
    display = pd.read_csv(root / "report" / "tables" / "table1.csv", index_col="row")
    assert display.loc["cifar10/autolora", "PGD10"] == "—"


def set_attempts(root, cell_id: str, attempts: list[dict]) -> None:
    path = root / "results" / cell_id / "run.json"
    write_json(path, seal({**read_json(path), "attempts": attempts}))


def test_a_table_of_cells_trained_under_different_arithmetic_says_so(root, grid):
    populate(root, grid)
    assert not any("arithmetic" in note for note in build(grid)["table1"].footnotes())
    cells = sorted({e.cell_id for e in grid.entries if e.table == "table1"})
    set_attempts(root, cells[0], [{"runtime": {"bf16": True}}])
    set_attempts(root, cells[1], [{"runtime": {"bf16": False}}, {"runtime": {"bf16": True}}])
    # An attempt that only restored finished outputs trained nothing: it does not count.
    restored = {"runtime": {"bf16": True}, "restored_outputs": True}
    set_attempts(root, cells[2], [{"runtime": {"bf16": False}}, restored])
    notes = [note for note in build(grid)["table1"].footnotes() if "arithmetic" in note]
    assert notes == [
        "Cells trained under different arithmetic (training.runtime.bf16), not strictly "
        f"comparable: bf16 autocast: 1 cell(s) ({cells[0]}); bf16 and fp32 attempts: 1 cell(s) "
        f"({cells[1]}); fp32: {len(cells) - 2} cell(s)."
    ]
    assert notes[0] in build(grid)["table8"].footnotes()


def aggregate_into(root, config) -> Path:
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    argv = ["aggregate", "--config", "config.yaml", "--out", "report", "--paper", str(PAPER_CSV)]
    assert main(argv) == 0
    return root / "report"


def status_of(report: Path) -> str:
    return report.read_text().split("status: ", 1)[1].split("\n", 1)[0]


def test_report_status_says_what_is_incomplete_and_why_in_one_sentence(root, grid):
    config = {**CONFIG, "evaluation": {"autoattack_seeds": [0, 6]}}
    aa_cells = grid.autoattack_cells(config)
    for e in grid.entries:
        if e.table == "table1" and (e.dataset, e.method, e.seed) != ("dtd", "twins", 0):
            sa, pgd, aa = VALUES[(e.dataset, e.method)][SEEDS.index(e.seed)]
            write_cell(root, e, metrics_of(sa, pgd, aa if e.cell_id in aa_cells else None))
    out = aggregate_into(root, config)
    assert status_of(out / "report.md") == (
        "**incomplete**: AA not computed for 6 of 18 cells (`evaluation.autoattack_seeds` = "
        "[0, 6]); no evaluation record yet for 1 of 18 cells (`snakemake` produces them)."
    )
    lines = (out / "missing.txt").read_text().splitlines()
    assert lines[0].startswith("# cells without an evaluation record")
    assert lines[1] == (
        "paper/runs/resnet18-eps4/dtd/twins/seed0\t"
        "snakemake results/paper/runs/resnet18-eps4/dtd/twins/seed0/eval-best_test.json"
    )
    assert lines[2].startswith("# cells whose evaluation has no AA")
    assert lines[3:] == [
        f"paper/runs/resnet18-eps4/{d}/{m}/seed66\t`evaluation.autoattack_seeds` = [0, 6]"
        for d in ("cifar10", "dtd")
        for m in ("autolora", "twins", "vanilla")
    ]


def test_report_status_is_complete_when_every_number_is(root, grid):
    populate(root, grid)
    out = aggregate_into(root, CONFIG)
    assert status_of(out / "report.md") == "complete."
    assert (out / "missing.txt").read_text() == ""
    report = (out / "report.md").read_text()
    assert "; AA: standard AutoAttack**" in report


def test_the_report_spells_settings_as_the_config_file_does(root, grid):
    populate(root, grid)
    overrides = {"attack": {"train_steps": 3}, "test_each_epoch": True}
    report = (aggregate_into(root, {**CONFIG, "training": overrides}) / "report.md").read_text()
    assert "| test_each_epoch | true |" in report
    assert "- `attack`: `{train_steps: 3}`" in report
    assert "- `test_each_epoch`: `true`" in report


def test_tables_provenance_grid_and_stats_do_not_import_torch():
    """docs/internals.md: Table 3's counts are passed in; these modules never import torch."""
    import subprocess
    import sys

    code = (
        "import sys, autolora.reporting.tables, autolora.reporting.provenance, autolora.planning.grid, autolora.reporting.stats;"
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
