"""`autolora audit`: the chain of a number in plain language, and re-verification of every hash."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from records_factory import metrics_of, read_json, write_cell

from autolora.autoattack_variants import configured_variant
from autolora.cli import main
from autolora.commands.aggregate import table8_sources
from autolora.planning.grid import expand_grid, load_config
from autolora.reporting.tables import build_tables

ROOT = Path(__file__).resolve().parents[1]
PAPER_CSV = ROOT / "config" / "paper_results.csv"
CONFIG = {
    "protocol": "paper",
    "seeds": [0, 6, 66],
    "datasets": {"cifar10": {"source": "cifar10"}},
    "tables": {
        "table1": {"arch": "resnet18", "eps_pt": 4, "datasets": ["cifar10"]},
        "table3": {"arch": "resnet18", "eps_pt": 4, "datasets": ["cifar10"], "ranks": [8]},
        "table8": {"tables": ["table1"]},
    },
}
BASE = {"vanilla": 52.0, "twins": 53.0, "autolora": 54.0}
AUTOLORA_SEED6 = "results/paper/runs/resnet18-eps4/cifar10/autolora/seed6"


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def aggregated(tmp_path, monkeypatch):
    """Records of every cell, aggregated into ./report; the working directory is the root."""
    monkeypatch.chdir(tmp_path)
    grid = expand_grid(CONFIG)
    for e in {e.cell_id: e for e in grid.entries}.values():
        pgd = BASE[e.method] + e.seed / 100
        write_cell(tmp_path, e, metrics_of(80 + e.seed / 10, pgd, pgd - 5))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    assert (
        main(["aggregate", "--config", "config.yaml", "--out", "report", "--paper", str(PAPER_CSV)])
        == 0
    )
    return tmp_path


def audit(capsys, *args):
    status = main(["audit", "--index", "report", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_audit_describes_the_chain_and_passes_on_intact_records(aggregated, capsys):
    status, out, err = audit(capsys, "table1", "cifar10/autolora", "PGD10")
    assert status == 0, err
    # (54.00 + 54.06 + 54.66) / 3 = 54.24
    assert "table1 · row cifar10/autolora · column PGD10 = 54.24 ± " in out
    for seed in (0, 6, 66):
        assert f"seed {seed}: PGD10 = " in out
    assert f"{AUTOLORA_SEED6}/best_test.safetensors: sha256" in out
    assert "checkpoint 'best_test': epoch 3, selected by best_test" in out
    assert "protocol paper" in out and "code 0123456789abcdef" in out
    assert "SLURM job 4242 on node node07" in out and "device NVIDIA H100" in out
    assert "split_manifest resources/data/cifar10/splits/paper.csv" in out
    assert "weights resources/weights/resnet18-eps4.safetensors" in out
    assert "recomputed from the per-seed values: matches" in out
    assert "audit passed" in out and "PROBLEM" not in out


def test_one_changed_byte_in_a_checkpoint_fails_naming_the_file(aggregated, capsys):
    flip_one_byte(aggregated / AUTOLORA_SEED6 / "best_test.safetensors")
    status, out, err = audit(capsys, "table1", "cifar10/autolora", "PGD10")
    assert status != 0
    assert f"{AUTOLORA_SEED6}/best_test.safetensors: sha256 mismatch" in err
    assert "PROBLEM" in out
    # numbers that do not rest on that checkpoint still pass
    assert audit(capsys, "table1", "cifar10/vanilla", "PGD10")[0] == 0
    # the p-values comparing AutoLoRa rest on it
    status, _, err = audit(capsys, "table8", "table1/cifar10", "twins/AA")
    assert status != 0 and "best_test.safetensors" in err


def test_all_checks_every_number_and_every_input(aggregated, capsys):
    status, out, err = audit(capsys, "--all")
    assert status == 0, err
    assert "== table1" in out and "== table3" in out and "== table8" in out
    assert "report/tables/table1.md: sha256" in out
    assert "table3 · row param_ratio · column r8/ratio" in out
    assert "table3 · row param_ratio_used · column r8/ratio" in out  # paper: lora_blocks last
    assert "recomputed: matches (parameters recounted on the built model)" in out
    index = read_json(aggregated / "report" / "provenance" / "table1.json")
    assert len(index["numbers"]) == 9 and len(index["cells"]) == 9

    flip_one_byte(aggregated / "resources" / "weights" / "resnet18-eps4.safetensors")
    status, _, err = audit(capsys, "--all")
    assert status != 0 and "resources/weights/resnet18-eps4.safetensors: sha256 mismatch" in err


def test_a_ratio_whose_counts_are_not_the_built_model_s_fails(aggregated, capsys):
    path = aggregated / "report" / "provenance" / "table3.json"
    index = read_json(path)
    ratio = next(n for n in index["numbers"] if n["row"] == "param_ratio")
    assert ratio["parameters"]["lora_created"] == 520_704
    assert ratio["value"] == pytest.approx(100 * 520_704 / 11_176_512)
    # counts and value edited consistently: only recounting on the built model notices
    ratio["parameters"]["lora_created"] = 600_000
    ratio["value"] = 100 * 600_000 / 11_176_512
    path.write_text(json.dumps(index))
    status, _, err = audit(capsys, "table3", "param_ratio", "r8/ratio")
    assert status != 0 and "lora_created 520704 (recorded 600000)" in err


def test_all_fails_on_a_missing_split_manifest_or_an_edited_record(aggregated, capsys):
    (aggregated / "resources" / "data" / "cifar10" / "splits" / "paper.csv").unlink()
    status, _, err = audit(capsys, "--all")
    assert status != 0 and "resources/data/cifar10/splits/paper.csv: missing" in err

    record = aggregated / AUTOLORA_SEED6 / "eval-best_test.json"
    record.write_text(record.read_text().replace('"PGD10": 54.06', '"PGD10": 64.06'))
    status, _, err = audit(capsys, "table1", "cifar10/autolora", "PGD10")
    assert status != 0 and f"{AUTOLORA_SEED6}/eval-best_test.json: sha256 mismatch" in err


def test_edited_table_file_fails_all(aggregated, capsys):
    table = aggregated / "report" / "tables" / "table1.csv"
    table.write_text(table.read_text().replace("54.24", "55.24"))
    status, _, err = audit(capsys, "--all")
    assert status != 0 and "report/tables/table1.csv" in err


def test_default_index_is_the_workflow_report_folder(aggregated, capsys):
    # the workflow aggregates into results/<protocol>; audit finds that index by itself
    args = ["--config", "config.yaml", "--results", "results", "--paper", str(PAPER_CSV)]
    assert main(["aggregate", *args, "--out", "results/paper"]) == 0
    status = main(["audit", "--all", "--quiet"])
    out = capsys.readouterr().out
    assert status == 0 and "audit passed" in out and "PROBLEM" not in out


def test_unknown_number_and_bad_arguments_are_user_errors(aggregated, capsys):
    status, _, err = audit(capsys, "table1", "cifar10/nothing", "PGD10")
    assert status == 2 and "rows: cifar10/vanilla" in err
    status, _, err = audit(capsys, "table1")
    assert status == 2 and "--all" in err


def report_audit_commands(report: Path) -> list[list[str]]:
    """The `autolora audit` command lines of the report's Provenance section."""
    section = report.read_text().split("## Provenance", 1)[1]
    return [shlex.split(line) for line in section.splitlines() if line.startswith("autolora audit")]


def test_the_reports_audit_examples_name_its_own_numbers_and_pass(aggregated):
    commands = report_audit_commands(aggregated / "report" / "report.md")
    assert [c[:4] for c in commands] == [["autolora", "audit", "--index", "report"]] * 2
    # a complete AA number of a row this folder has (not a row of another grid)
    assert commands[0][4:] == ["table1", "cifar10/vanilla", "AA"]
    assert commands[1][4:] == ["--all"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    for command in commands:
        run = subprocess.run(
            [sys.executable, "-m", "autolora.cli", *command[1:]],
            cwd=aggregated,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "audit passed" in run.stdout


def readme_audit_numbers() -> list[tuple[str | None, list[str]]]:
    """(--index or None, [table, row, column]) of each README example naming one number."""
    examples = []
    for line in (ROOT / "README.md").read_text().splitlines():
        if not line.startswith("autolora audit"):
            continue
        words = shlex.split(line.split("#", 1)[0])[2:]
        index = words[words.index("--index") + 1] if "--index" in words else None
        positional, skip = [], False
        for word in words:
            if skip:
                skip = False
            elif word.startswith("--"):
                skip = word in OPTIONS_WITH_VALUES
            else:
                positional.append(word)
        if positional:
            examples.append((index, positional))
    return examples


OPTIONS_WITH_VALUES = ("--index", "--root", "--expect-seal", "--device", "--tolerance", "--crate")


def test_readme_audit_examples_name_numbers_of_the_grid_they_audit():
    """Without --index the README's example runs on the demo's folder (the only one after
    `make demo`); with `--index results/paper` on the paper's grid."""
    configs = {None: "demo.yaml", "results/paper": "config.yaml"}
    examples = readme_audit_numbers()
    assert {index for index, _ in examples} == set(configs)
    for index, (table, row, column) in examples:
        config = load_config(ROOT / "config" / configs[index])
        grid = expand_grid(config)
        tables = build_tables(
            [e for e in grid.entries if e.table not in ("table8", "figures")],
            "no-results-needed",
            "best_test",
            table8_sources=table8_sources(config),
            autoattack_version=configured_variant(config).name,
        )
        numbers = {(t.name, n.row, n.column) for t in tables for n in t.numbers}
        assert (table, row, column) in numbers, (index, table, row, column)


def test_the_chain_reaches_the_archive_and_checkpoint_checksums(aggregated, capsys):
    status, out, err = audit(capsys, "table1", "cifar10/autolora", "PGD10")
    assert status == 0, err
    data = "resources/data/cifar10"
    assert f"prepared data file {data}/labels.npy: sha256" in out
    assert "archive cifar-10-python.tar.gz: md5 c58f30108f71 (published)" in out
    archive = "resources/downloads/cifar10/cifar-10-python.tar.gz"
    assert f"archive {archive}: not present (only needed to prepare or convert)" in out
    assert "converted from resnet18_linf_eps4.0.ckpt: sha256 6f8ccef1ae49 (published)" in out
    ckpt = "resources/downloads/weights/resnet18-eps4.ckpt"
    assert f"checkpoint download {ckpt}: not present" in out
    # downloads still present are re-hashed: files other than the published ones fail
    for path in (archive, ckpt):
        (aggregated / path).parent.mkdir(parents=True, exist_ok=True)
        (aggregated / path).write_bytes(b"not the published file")
    status, out, err = audit(capsys, "--all")
    assert status != 0
    assert f"{archive}: md5 mismatch" in err and f"{ckpt}: sha256 mismatch" in err


def test_a_changed_prepared_data_file_or_backbone_record_fails(aggregated, capsys):
    flip_one_byte(aggregated / "resources/data/cifar10/labels.npy")
    record = aggregated / "resources/weights/resnet18-eps4.json"
    record.write_text(record.read_text().replace("6f8ccef1ae49", "6f8ccef1ae40"))
    status, out, err = audit(capsys, "--all")
    assert status != 0
    assert "resources/data/cifar10/labels.npy: sha256 mismatch" in err
    assert "resources/weights/resnet18-eps4.json: sha256 mismatch (weights_record" in err


@pytest.mark.parametrize("version", ["standard", "apgd-ce+apgd-t", None])
def test_recompute_evaluates_aa_again_with_the_variant_it_was_recorded_with(tmp_path, version):
    from autolora.recompute import _evaluation_arguments
    from autolora.records import EvaluationRecord

    (entry,) = [e for e in expand_grid(CONFIG).entries if e.table == "table1"][:1]
    cell = write_cell(tmp_path, entry, metrics_of(80.0, 50.0, 45.0), autoattack_version="x")
    record = read_json(cell / "eval-best_test.json")
    record["inputs"].append({"role": "dataset", "path": "resources/data/cifar10/dataset.json"})
    if version is None:  # written before variants existed: standard AutoAttack
        del record["autoattack"]["version"]
    else:
        record["autoattack"]["version"] = version
    record["autoattack"]["batch_size"] = 37
    record = EvaluationRecord.from_json(record, cell / "eval-best_test.json", "a test record")
    arguments = _evaluation_arguments(record, tmp_path, "AA")
    assert arguments["autoattack"] and arguments["autoattack_version"] == (version or "standard")
    # and with the recorded batch size, which decides which examples share AutoAttack's batches
    assert arguments["autoattack_batch_size"] == record.autoattack["batch_size"]
