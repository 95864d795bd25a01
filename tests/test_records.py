"""The typed records (autolora.records): one writer and one reader each, the same bytes as the
dict literals they replace, the seal checked and a missing key named when a record is read."""

from __future__ import annotations

import json

import pytest

from autolora.errors import DataError
from autolora.files import write_json
from autolora.records import BackboneRecord, EvaluationRecord, RunRecord, seal

RUN = {
    "kind": "training_run",
    "cell": {"protocol": "paper", "arch": "tiny", "eps_pt": 4, "dataset": "synth-a"},
    "cell_id": "paper/runs/tiny-eps4/synth-a/autolora/seed0",
    "spec": {"dataset": "synth-a", "method": "autolora"},
    "config": {"epochs": 3, "milestones": [30, 50]},
    "protocol": {"name": "paper", "choices": {"selection": "best_test"}, "defaults": {}},
    "lora": {"rank": 8, "update_blocks": ["layer1.1"]},
    "code": {"commit": "abc", "dirty": False, "version": "0.1.0"},
    "packages": {"torch": "2.4"},
    "python": "CPython 3.11",
    "host": "node1",
    "device": "cpu",
    "threads": {"intra_op": 1, "inter_op": 1, "OMP_NUM_THREADS": "1"},
    "slurm": None,
    "started": "2024-01-01T00:00:00Z",
    "finished": "2024-01-01T00:10:00Z",
    "command": "autolora train",
    "inputs": [{"role": "dataset", "path": "resources/data/x/dataset.json", "sha256": "1" * 64}],
    "verified": {"files": [], "seconds": 0.25},
    "outputs": [{"role": "history", "path": "results/x/history.csv", "sha256": "2" * 64}],
    "checkpoints": {"final": {"epoch": 3, "path": "results/x/final.safetensors"}},
    "attempts": [{"started": "2024-01-01T00:00:00Z", "runtime": {"bf16": False}}],
    "epochs_run": 3,
    "stop_reason": "finished the configured 3 epochs",
    "superseded": [],
    "seconds_this_attempt": 600.5,
}
EVALUATION = {
    "kind": "evaluation",
    "cell": RUN["cell"],
    "cell_id": RUN["cell_id"],
    "checkpoint": {"name": "best_test", "requested": "selected", "path": "p", "sha256": "3" * 64},
    "metrics": {"SA": 80.5, "PGD10": 40.25, "AA": None},
    "n": 200,
    "subset": None,
    "attack": {"eps": 0.0314, "step": 0.00784, "pgd_steps": 10},
    "autoattack": None,
    "run_record": {"path": "results/x/run.json", "sha256": "4" * 64},
    "inputs": [],
    "verified": {"files": [], "seconds": 0.5},
    "code": RUN["code"],
    "packages": RUN["packages"],
    "python": "CPython 3.11",
    "host": "node2",
    "device": "cpu",
    "threads": RUN["threads"],
    "slurm": None,
    "seconds": 12.0,
    "started": "2024-01-01T01:00:00Z",
    "finished": "2024-01-01T01:00:12Z",
    "command": "autolora evaluate",
}


@pytest.mark.parametrize(("cls", "data"), [(RunRecord, RUN), (EvaluationRecord, EVALUATION)])
def test_a_typed_record_writes_the_bytes_of_the_dict_it_replaces(tmp_path, cls, data):
    write_json(tmp_path / "dict.json", seal(data))
    fields = {key: value for key, value in data.items() if key != "kind"}
    written = cls(**fields).write(tmp_path / "typed.json")
    assert (tmp_path / "typed.json").read_bytes() == (tmp_path / "dict.json").read_bytes()
    assert written == json.loads((tmp_path / "dict.json").read_text())
    read = cls.read(tmp_path / "typed.json", "rewrite it")
    assert read.to_json() == written  # read and written again: nothing lost


def test_the_reader_keeps_keys_it_does_not_know_and_refuses_an_edit(tmp_path):
    path = tmp_path / "run.json"
    write_json(path, seal({**RUN, "added_later": {"x": 1}}))
    record = RunRecord.read(path, "fix it")
    assert record.extra == {"added_later": {"x": 1}}
    assert record.to_json() == json.loads(path.read_text())
    edited = json.loads(path.read_text())
    edited["epochs_run"] = 4
    write_json(path, edited)
    with pytest.raises(DataError, match=r"run\.json: its content hashes to .*; fix it"):
        RunRecord.read(path, "fix it")


def test_a_missing_key_or_metric_is_named_with_the_file(tmp_path):
    path = tmp_path / "run.json"
    write_json(path, seal({k: v for k, v in RUN.items() if k != "checkpoints"}))
    with pytest.raises(DataError, match=r"run\.json lacks 'checkpoints', which every run record"):
        RunRecord.read(path, "retrain")
    evaluation = tmp_path / "eval-best_test.json"
    write_json(evaluation, seal({**EVALUATION, "metrics": {"SA": 1.0}}))
    with pytest.raises(DataError, match=r"eval-best_test\.json: record lacks metrics"):
        EvaluationRecord.read(evaluation, "re-evaluate")
    with pytest.raises(DataError, match="is not a evaluation record"):
        EvaluationRecord.read(path, "re-evaluate")


def test_the_evaluation_record_names_its_autoattack_variant():
    fields = {key: value for key, value in EVALUATION.items() if key != "kind"}
    assert EvaluationRecord(**fields).autoattack_version is None  # no AA
    with_aa = {**fields, "metrics": {**fields["metrics"], "AA": 30.0}}
    assert EvaluationRecord(**with_aa).autoattack_version == "standard"  # before variants
    with_aa["autoattack"] = {"version": "apgd-ce+apgd-t"}
    assert EvaluationRecord(**with_aa).autoattack_version == "apgd-ce+apgd-t"


def test_the_backbone_record_keeps_the_producers_keys(tmp_path):
    data = {
        "kind": "backbone_weights",
        "arch": "tiny",
        "eps_pt": 2.0,
        "source": {"pretrained_by": "autolora pretrain"},
        "metrics": {"clean_accuracy": 90.0},
        "file": "tiny-eps2.safetensors",
        "sha256": "5" * 64,
        "num_tensors": 62,
    }
    write_json(tmp_path / "dict.json", data)
    record = BackboneRecord(
        arch="tiny",
        eps_pt=2.0,
        source=data["source"],
        file=data["file"],
        sha256=data["sha256"],
        num_tensors=62,
        extra={"metrics": data["metrics"]},
    )
    record.write(tmp_path / "typed.json")
    assert (tmp_path / "typed.json").read_bytes() == (tmp_path / "dict.json").read_bytes()
    parsed = BackboneRecord.parse((tmp_path / "typed.json").read_bytes(), "typed.json", "redo")
    assert parsed == record
    with pytest.raises(DataError, match="typed.json is not a backbone weights record"):
        BackboneRecord.parse(b'{"kind": "evaluation"}', "typed.json", "redo")
