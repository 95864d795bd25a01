"""Nothing silently wrong: one changed byte (or a truncation) in any file behind a number is refused
where the file is used and named by `autolora audit --all`; a consistent rewrite, which the audit
cannot see, is caught by `audit --recompute` and by a published seal.

One small real results folder (a pre-trained tiny backbone, a synthetic dataset, a trained and
evaluated cell, the real aggregation) is built once per module; each case works on a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from autolora.cli import main
from autolora.data.synthetic import write_synthetic_dataset
from autolora.evaluate import evaluate_run
from autolora.files import read_json, write_json
from autolora.planning.grid import expand_grid, reported_checkpoint
from autolora.pretrain import PretrainSettings, pretrain_to_file
from autolora.records import seal
from autolora.train import train_cell

REPO = Path(__file__).resolve().parents[1]
PAPER_CSV = REPO / "config" / "paper_results.csv"
DATA = Path("resources/data/synth-a")
WEIGHTS = Path("resources/weights/tiny-eps4.safetensors")
CELL = Path("results/paper/runs/tiny-eps4/synth-a/vanilla/seed0")
REPORT = Path("results/paper")
CONFIG = {
    "protocol": "paper",
    "seeds": [0],
    "results": "results",
    "resources": "resources",
    "datasets": {
        "synth-a": {
            "source": "synthetic",
            "num_classes": 4,
            "train": 64,
            "test": 24,
            "image_size": 16,
            "seed": 11,
            "hyper": {"vanilla": {"lr": 0.01, "weight_decay": 1.0e-4}},
        }
    },
    "weights": {"source": "pretrain"},
    "training": {
        "epochs": 2,
        "batch_size": 32,
        "attack": {"train_steps": 1, "eval_steps": 2},
        "runtime": {"device": "cpu", "deterministic": True},
    },
    "evaluation": {"autoattack": False},
    "tables": {
        "table1": {"arch": "tiny", "eps_pt": 4, "datasets": ["synth-a"], "methods": ["vanilla"]},
        "figures": {
            "arch": "tiny",
            "eps_pt": 4,
            "datasets": ["synth-a"],
            "methods": ["vanilla"],
            "grad_similarity_batches": 1,
        },
    },
}


def synthesize(root: Path, name: str, seed: int) -> Path:
    spec = CONFIG["datasets"]["synth-a"]
    return write_synthetic_dataset(
        root / "resources" / "data" / name,
        name=name,
        num_classes=spec["num_classes"],
        train_size=spec["train"],
        test_size=spec["test"],
        image_size=spec["image_size"],
        seed=seed,
    )


def cell_spec() -> dict:
    grid = expand_grid(CONFIG)
    (cell_id,) = grid.cells
    return grid.cells[cell_id]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The results folder of a one-cell grid, as the workflow would leave it."""
    root = tmp_path_factory.mktemp("integrity-base")
    previous = Path.cwd()
    os.chdir(root)
    try:
        settings = PretrainSettings(
            eps_255=4, epochs=1, train_size=64, test_size=16, image_size=16, attack_steps=1
        )
        pretrain_to_file(settings, WEIGHTS)
        synthesize(root, "synth-a", 11)
        write_json("config.yaml", CONFIG)  # JSON is YAML
        train_cell(cell_spec(), data_dir=DATA, weights=WEIGHTS, out_dir=CELL)
        checkpoint = reported_checkpoint(CONFIG)
        evaluate_run(
            CELL,
            DATA,
            checkpoint=checkpoint,
            out=CELL / f"eval-{checkpoint}.json",
            autoattack=False,  # the workflow's --no-autoattack: `evaluation.autoattack: false`
        )
        assert aggregate() == 0
    finally:
        os.chdir(previous)
    return root


def aggregate() -> int:
    return main(
        ["aggregate", "--config", "config.yaml", "--results", "results", "--out", str(REPORT)]
        + ["--paper", str(PAPER_CSV)]
    )


@pytest.fixture
def folder(built, tmp_path, monkeypatch):
    """A copy of the built folder as the working directory."""
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    monkeypatch.chdir(copy)
    return copy


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def train_fresh(
    capsys, data: Path = DATA, weights: Path = WEIGHTS, out: str = "fresh", spec: dict | None = None
):
    return run_cli(
        capsys,
        "train",
        "--spec",
        json.dumps(spec or cell_spec()),
        "--data",
        str(data),
        "--weights",
        str(weights),
        "--out",
        out,
    )


def train_again(capsys):
    """The finished cell's own command (what a rerun of the workflow does)."""
    return train_fresh(capsys, out=str(CELL))


def evaluate(capsys, out: str = "again.json"):
    return run_cli(
        capsys,
        "evaluate",
        "--run",
        str(CELL),
        "--data",
        str(DATA),
        "--checkpoint",
        "best_test",
        "--no-autoattack",
        "--out",
        out,
    )


def audit_all(capsys, *extra: str):
    return run_cli(capsys, "audit", "--index", str(REPORT), "--all", "--quiet", *extra)


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Change one byte (the middle one unless ``offset``)."""
    data = bytearray(path.read_bytes())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def change_text_byte(path: Path, old: str, new: str) -> None:
    """Change one character of a text file, keeping it well-formed (a plausible edit)."""
    assert len(old) == len(new) and sum(a != b for a, b in zip(old, new, strict=True)) == 1
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def refused(status: int, err: str, named: Path | str) -> bool:
    """Exit status 2 with one line naming the file (no traceback)."""
    lines = err.strip().splitlines()
    return status == 2 and len(lines) == 1 and str(named) in lines[0] and "Traceback" not in err


def test_the_intact_folder_passes_and_records_what_was_verified(folder, capsys):
    status, out, err = audit_all(capsys)
    assert status == 0, err
    assert "file(s) re-hashed" in out
    rehashed = int(out.split("audit passed: ")[1].split(" ")[0])
    # records, checkpoint, history, every prepared data file, weights + record, derived files
    assert rehashed >= 25
    run = read_json(CELL / "run.json")
    verified = {Path(item["path"]).name for item in run["verified"]["files"]}
    assert {"images.u8", "labels.npy", "images_index.npy", "paper.csv", "paper.json"} <= verified
    assert {"tiny-eps4.safetensors", "tiny-eps4.json"} <= verified
    assert run["verified"]["seconds"] >= 0
    evaluation = read_json(CELL / "eval-best_test.json")
    names = {Path(item["path"]).name for item in evaluation["verified"]["files"]}
    assert {"best_test.safetensors", "dataset.json", "images.u8", "labels.npy"} <= names
    assert run["attempts"][0]["threads"]["intra_op"] >= 1
    status, out, _ = run_cli(capsys, "audit", "--index", str(REPORT), "--all")
    assert f"prepared data file {DATA}/images.u8: sha256" in out
    assert f"prepared data file {DATA}/labels.npy: sha256" in out
    assert "backbone record resources/weights/tiny-eps4.json: agrees" in out
    assert f"history {CELL}/history.csv: sha256" in out
    assert f"report {REPORT}/report.md: sha256" in out
    assert f"comparison {REPORT}/comparison.csv: sha256" in out


# (file, how to change it, does `train` refuse, does `evaluate` refuse, does `aggregate` refuse)
CASES = {
    "dataset.json": (DATA / "dataset.json", "edit", "fresh", True, False),
    "labels.npy": (DATA / "labels.npy", "flip", "fresh", True, False),
    "images.u8": (DATA / "images.u8", "flip", "fresh", True, False),
    "split manifest": (DATA / "splits" / "paper.csv", "edit", "fresh", True, False),
    "backbone weights": (WEIGHTS, "flip", "fresh", False, False),
    "checkpoint": (CELL / "best_test.safetensors", "flip", "again", True, False),
    "history.csv": (CELL / "history.csv", "truncate", "again", False, True),
    "run.json": (CELL / "run.json", "edit", "again", True, True),
    "evaluation record": (CELL / "eval-best_test.json", "edit", None, False, True),
    "comparison.csv": (REPORT / "comparison.csv", "flip", None, False, False),
    "report.md": (REPORT / "report.md", "flip", None, False, False),
}
EDITS = {
    "paper.csv": ("test,0,", "test,0,"),  # replaced below by a one-digit change of an example
    "run.json": ('"epochs_run": 2', '"epochs_run": 3'),
    "dataset.json": ('"pad": 4', '"pad": 8'),  # another augmentation, well-formed
}


def change(path: Path, how: str) -> None:
    if how == "flip":
        flip_byte(path)
    elif how == "truncate":
        truncate(path)
    elif path.name == "paper.csv":
        line = next(x for x in path.read_text().splitlines() if x.startswith("test,0,"))
        example = line.rsplit(",", 1)[1]
        swapped = str((int(example[-1]) + 1) % 10)
        change_text_byte(path, line + "\n", line[:-1] + swapped + "\n")
    elif path.name in ("run.json", "dataset.json"):
        change_text_byte(path, *EDITS[path.name])
    else:  # an evaluation record: one digit of PGD10
        text = path.read_text()
        start = text.index('"PGD10": ') + len('"PGD10": ')
        digit = text[start]
        change_text_byte(
            path, text[start - 9 : start + 1], text[start - 9 : start] + str((int(digit) + 1) % 10)
        )


@pytest.mark.parametrize("case", list(CASES))
def test_one_changed_byte_is_refused_where_used_and_named_by_the_audit(folder, capsys, case):
    path, how, train_kind, evaluate_refuses, aggregate_refuses = CASES[case]
    change(path, how)
    if train_kind == "fresh":
        status, _, err = train_fresh(capsys)
        assert refused(status, err, path), err
        assert not Path("fresh/run.json").exists() and not Path("fresh/state").exists()
    elif train_kind == "again":
        status, _, err = train_again(capsys)
        assert refused(status, err, path), err
    if evaluate_refuses:
        status, _, err = evaluate(capsys)
        assert refused(status, err, path), err
        assert not Path("again.json").exists()
    if aggregate_refuses:
        status, _, err = run_cli(
            capsys,
            "aggregate",
            "--config",
            "config.yaml",
            "--results",
            "results",
            "--out",
            "elsewhere",
            "--paper",
            str(PAPER_CSV),
        )
        assert refused(status, err, path), err
    status, out, err = audit_all(capsys)
    assert status == 2 and str(path) in err and "Traceback" not in err
    assert f"PROBLEM: {path}" in out


def test_evaluate_does_not_depend_on_the_backbone_file(folder, capsys):
    """The checkpoint holds the whole model: a changed backbone is refused by `train` and the
    audit (above), not by `evaluate`, whose number does not depend on it."""
    flip_byte(WEIGHTS)
    status, _, err = evaluate(capsys)
    assert status == 0, err


@pytest.mark.parametrize(
    "damaged, command",
    [
        (CELL / "run.json", "train"),
        (CELL / "run.json", "evaluate"),
        (CELL / "eval-best_test.json", "aggregate"),
        (CELL / "best_test.safetensors", "evaluate"),
        (WEIGHTS, "train"),
        (WEIGHTS.with_suffix(".json"), "train"),
        (DATA / "dataset.json", "train"),
    ],
)
def test_truncated_files_give_one_line_naming_the_file(folder, capsys, damaged, command):
    truncate(damaged)
    if command == "train":
        status, _, err = train_again(capsys) if "results" in str(damaged) else train_fresh(capsys)
    elif command == "evaluate":
        status, _, err = evaluate(capsys)
    else:
        status, _, err = run_cli(
            capsys,
            "aggregate",
            "--config",
            "config.yaml",
            "--results",
            "results",
            "--out",
            "elsewhere",
            "--paper",
            str(PAPER_CSV),
        )
    assert refused(status, err, damaged), err


def interrupted_run(spec: dict, out: Path) -> Path:
    """Train ``spec`` into ``out`` until a failure injected in epoch 2; returns its state.json."""
    os.environ["AUTOLORA_FAULT_FAIL_AT"] = "2:1"
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            train_cell(spec, data_dir=DATA, weights=WEIGHTS, out_dir=out)
    finally:
        del os.environ["AUTOLORA_FAULT_FAIL_AT"]
    return out / "state" / "state.json"


def test_a_truncated_resume_state_is_one_line_and_left_in_place(folder, capsys):
    spec = cell_spec()
    spec["overrides"] = {**spec["overrides"], "epochs": 3}
    out = Path("resumable")
    state = interrupted_run(spec, out)
    truncate(state)
    before = state.read_bytes()
    status, _, err = train_fresh(capsys, out=str(out), spec=spec)
    assert refused(status, err, state), err
    assert "delete" in err and state.read_bytes() == before


def test_an_edited_resume_state_is_refused_and_left_in_place(folder, capsys):
    """state.json holds the history, the best values, the LR and the schedulers' state: a hand
    edit of one of them (well-formed JSON) must not be resumed into the run record."""
    spec = cell_spec()
    spec["overrides"] = {**spec["overrides"], "epochs": 3}
    out = Path("resumable")
    state = interrupted_run(spec, out)
    info = read_json(state)
    recorded = info["history"][0]["val_pgd10"]
    info["history"][0]["val_pgd10"] = recorded + 90.0
    write_json(state, info)
    before = state.read_bytes()
    status, _, err = train_fresh(capsys, out=str(out), spec=spec)
    assert refused(status, err, state), err
    assert "changed after it was written" in err and f"delete {out / 'state'}" in err
    assert state.read_bytes() == before and not (out / "run.json").exists()


def test_data_of_another_dataset_or_weights_of_another_backbone_are_refused(folder, capsys):
    other = synthesize(folder, "synth-b", 12)
    status, _, err = train_fresh(capsys, data=other)
    assert status == 2 and "holds dataset 'synth-b', but the cell is of 'synth-a'" in err
    settings = PretrainSettings(eps_255=8, epochs=1, train_size=32, test_size=8, image_size=16)
    pretrain_to_file(settings, "resources/weights/tiny-eps8.safetensors")
    status, _, err = train_fresh(capsys, weights=Path("resources/weights/tiny-eps8.safetensors"))
    assert status == 2 and "pre-trained at eps_pt 8" in err and "eps_pt 4" in err


def test_prepared_dataset_folders_get_the_umask_mode(folder):
    previous = os.umask(0o022)
    try:
        path = synthesize(folder, "synth-c", 13)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
    assert stat.S_IMODE((path / "splits").stat().st_mode) == 0o755


def test_recompute_reproduces_a_number_and_reports_a_consistent_rewrite(folder, capsys):
    args = ("audit", "--index", str(REPORT), "--recompute", "table1", "synth-a/vanilla", "PGD10")
    status, out, err = run_cli(capsys, *args)
    assert status == 0, err
    assert "the number: recorded" in out and ": reproduced" in out

    status, out, _ = audit_all(capsys, "--seal")
    assert status == 0
    seal_before = out.split("seal: ")[1].split()[0]
    assert aggregate() == 0  # unchanged records: the same bytes, the same seal
    capsys.readouterr()
    status, out, _ = audit_all(capsys, "--expect-seal", seal_before)
    assert status == 0 and "(as expected)" in out

    # A consistent rewrite: the value edited, the record re-sealed, the tables re-aggregated.
    record_path = CELL / "eval-best_test.json"
    record = read_json(record_path)
    recorded = record["metrics"]["PGD10"]
    record["metrics"]["PGD10"] = recorded + 12.5
    write_json(record_path, seal(record))
    assert aggregate() == 0
    capsys.readouterr()
    status, _, err = audit_all(capsys)
    assert status == 0, err  # by construction: the audit cannot see it (README says so)
    status, out, err = run_cli(capsys, *args)
    assert status == 2
    assert f"recorded {recorded + 12.5:.6g}, recomputed {recorded:.6g}" in out
    assert "DIFFERS by -12.5" in out
    assert len(err.strip().splitlines()) == 1 and "eval-best_test.json records PGD10" in err
    status, _, err = audit_all(capsys, "--expect-seal", seal_before)
    assert status == 2 and seal_before in err


def test_two_identical_demo_size_runs_give_identical_checkpoints(tmp_path):
    """The demo's AutoLoRa cell on the demo's synth-a, trained twice in fresh processes
    (safetensors wrote several metadata keys in an order random per process and per file)."""
    import torch

    from autolora.models import build_model
    from autolora.planning.grid import load_config
    from autolora.weights import write_backbone

    demo = load_config(REPO / "config" / "demo.yaml")
    grid = expand_grid(demo)
    (cell_id,) = [c for c in grid.cells if "/synth-a/autolora/seed0" in c]
    spec = grid.cells[cell_id]
    dataset = demo["datasets"]["synth-a"]
    data = write_synthetic_dataset(
        tmp_path / "synth-a",
        name="synth-a",
        num_classes=dataset["num_classes"],
        train_size=dataset["train"],
        test_size=dataset["test"],
        image_size=dataset["image_size"],
        seed=dataset["seed"],
    )
    weights = tmp_path / WEIGHTS.name
    torch.manual_seed(5)
    backbone = build_model("tiny", 10).backbone.state_dict()
    write_backbone(backbone, weights, arch="tiny", eps_pt_255=4, source={"random_init_seed": 5})
    digests = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    for attempt in ("a", "b"):
        out = tmp_path / attempt
        command = [sys.executable, "-m", "autolora.cli", "train", "--spec", json.dumps(spec)]
        command += ["--data", str(data), "--weights", str(weights), "--out", str(out)]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        run = read_json(out / "run.json")
        assert run["attempts"][0]["threads"]["intra_op"] == 1
        digests.append({name: entry["sha256"] for name, entry in run["checkpoints"].items()})
    assert set(digests[0]) == {"best_val", "best_test", "final"}
    assert digests[0] == digests[1]
