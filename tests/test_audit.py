"""`autolora audit`: the chain of a number in plain language, and re-verification of every hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from records_factory import metrics_of, read_json, write_cell

from autolora.cli import main
from autolora.grid import expand_grid

PAPER_CSV = Path(__file__).parents[1] / "config" / "paper_results.csv"
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
