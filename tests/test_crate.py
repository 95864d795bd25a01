"""The results folder as a Workflow Run RO-Crate: written by the real workflow on a tiny grid,
validated by the community's validator (roc-validator, offline) for every profile it declares,
walked as plain JSON from a table number to the checkpoints and prepared data behind it,
re-verified by `autolora audit --crate`, and zipped for deposit."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from autolora.cli import main
from autolora.planning.layout import CRATE_METADATA as METADATA_FILE
from autolora.reporting.crate import describe_results

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONTEXT_FILE = Path(__file__).parent / "data" / "ro-crate-1.1-context.jsonld"

# A grid small enough for a test: one synthetic dataset, one method, two seeds, one epoch, SA and
# PGD-10 on 8 test images; the backbone is pre-trained here (as in the demo).
TINY = {
    "protocol": "paper",
    "seeds": [0, 1],
    "results": "results",
    "resources": "resources",
    "datasets": {
        "synth": {
            "source": "synthetic",
            "num_classes": 10,
            "train": 48,
            "test": 16,
            "image_size": 8,
            "seed": 5,
            "hyper": {"vanilla": {"lr": 0.01, "weight_decay": 1.0e-4}},
        }
    },
    "weights": {
        "source": "pretrain",
        "pretrain": {"epochs": 1, "train_size": 64, "test_size": 16, "image_size": 8},
    },
    "training": {
        "epochs": 1,
        "batch_size": 16,
        "attack": {"train_steps": 1},
        "runtime": {"device": "cpu", "deterministic": True},
    },
    "evaluation": {"autoattack": False, "n": 8},
    "tables": {
        "table1": {"arch": "tiny", "eps_pt": 4, "datasets": ["synth"], "methods": ["vanilla"]}
    },
}
CELLS = [f"paper/runs/tiny-eps4/synth/vanilla/seed{seed}" for seed in (0, 1)]


def tool_env() -> dict[str, str]:
    return dict(os.environ, PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))


def crate_command(workdir: Path) -> list[str]:
    """``autolora crate`` of the workflow's results folder, as its rule runs it (from workdir)."""
    return [
        "crate",
        "results/paper",
        "--workflow-dir",
        str(ROOT),
        "--configfile",
        str(workdir / "tiny.yaml"),
    ]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A real run of the workflow (default target, so the crate rule included) on TINY."""
    workdir = tmp_path_factory.mktemp("crate")
    (workdir / "config").mkdir()
    shutil.copy(ROOT / "config" / "paper_results.csv", workdir / "config")
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(workdir / "tiny.yaml"),
            "--cores",
            "2",
            "--set-threads",
            "train=1",
            "evaluate=1",
            "--quiet",
            "rules",
        ],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return workdir


@pytest.fixture(scope="module")
def folder(workdir) -> Path:
    return workdir / "results" / "paper"


@pytest.fixture(scope="module")
def crate(folder) -> dict:
    return json.loads((folder / METADATA_FILE).read_text())


def entities(crate: dict) -> dict[str, dict]:
    return {entity["@id"]: entity for entity in crate["@graph"]}


def ids(value) -> list[str]:
    """The ``@id``\\ s of a property value (a reference or a list of references)."""
    values = value if isinstance(value, list) else [value] if value is not None else []
    return [v["@id"] for v in values if isinstance(v, dict)]


def types(entity: dict) -> list[str]:
    value = entity.get("@type")
    return value if isinstance(value, list) else [value]


def flip_one_byte(path: Path) -> bytes:
    original = path.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    path.write_bytes(bytes(changed))
    return original


# ---- the workflow writes the crate ----------------------------------------------------------


def test_the_workflow_writes_a_crate_of_its_run(crate, folder):
    graph = entities(crate)
    root = graph["./"]
    workflow = graph[root["mainEntity"]["@id"]]
    assert {"File", "SoftwareSourceCode", "ComputationalWorkflow"} <= set(types(workflow))
    assert (folder / workflow["@id"]).read_bytes() == (ROOT / "Snakefile").read_bytes()
    assert workflow["sha256"] == hashlib.sha256((ROOT / "Snakefile").read_bytes()).hexdigest()
    # one CreateAction per executed step, and one for the whole run
    actions = [e for e in crate["@graph"] if "CreateAction" in types(e)]
    by_tool = {}
    for action in actions:
        tool = graph[action["instrument"]["@id"]]
        by_tool.setdefault(tool.get("name", tool["@id"]), []).append(action)
    assert {name: len(found) for name, found in by_tool.items()} == {
        "AutoLoRa reproduction workflow": 1,
        "rule synthesize_dataset": 1,
        "rule pretrain_backbone": 1,
        "rule train": 2,
        "rule evaluate": 2,
        "rule resolve_config": 1,
        "rule aggregate": 1,
    }
    # times, hosts and the command come from the run records
    for cell in CELLS:
        record = json.loads((folder.parent / cell / "run.json").read_text())
        action = graph[f"#action/train/{cell}"]
        assert action["startTime"] == record["started"].replace("Z", "+00:00")
        assert action["endTime"] == record["finished"].replace("Z", "+00:00")
        assert graph[action["location"]["@id"]]["name"] == record["host"]
        assert record["command"] in action["description"]
        # the protocol's resolved choices (null where a choice does not apply to the method)
        choices = {
            graph[i]["propertyID"]: graph[i].get("value")
            for i in ids(action["object"])
            if i.startswith("#protocol/")
        }
        assert choices == record["protocol"]["choices"]
        selection = graph["#protocol/paper/selection/null"]  # the evaluation's, not training's
        assert "the evaluation's choice" in selection["description"]
    # the software environment, licence and paper
    software = {e.get("name"): e.get("softwareVersion") for e in crate["@graph"]}
    for package in ("torch", "torchvision", "pyautoattack", "snakemake"):
        assert software[package] == record["packages"][package]
    assert record["python"].split(" ")[1] in software.values()
    assert root["license"]["@id"] == "https://spdx.org/licenses/MIT"
    assert graph[root["citation"]["@id"]]["name"].startswith("AutoLoRa")
    assert workflow["version"].startswith(record["code"]["commit"] or "unknown")


def test_every_table_figure_report_and_record_is_a_file_with_its_sha256(crate, folder):
    graph = entities(crate)
    expected = [
        "tables/table1.csv",
        "tables/table1_values.csv",
        "report.md",
        "report.html",
        "provenance/table1.json",
        "config.resolved.yaml",
        *[
            f"runs/{c.split('/runs/')[1]}/{name}"
            for c in CELLS
            for name in ("run.json", "eval-best_test.json", "history.csv")
        ],
    ]
    for path in expected:
        entity = graph[path]
        assert "File" in types(entity), path
        assert entity["sha256"] == hashlib.sha256((folder / path).read_bytes()).hexdigest()
        assert entity["encodingFormat"]
        assert {"@id": path} in graph["./"]["hasPart"]
    # checkpoints are referenced, not copied: a "#" id, the sha256 the run record claims
    record = json.loads((folder / "runs/tiny-eps4/synth/vanilla/seed0/run.json").read_text())
    claimed = record["checkpoints"]["best_test"]
    checkpoint = graph[f"#{claimed['path']}"]
    assert checkpoint["sha256"] == claimed["sha256"]
    assert (folder / checkpoint["localPath"]).resolve() == (
        folder.parents[1] / claimed["path"]
    ).resolve()


# ---- the community's validator --------------------------------------------------------------


class OfflineTransport:
    """Answers the RO-Crate 1.1 context URL from the bundled file and every other URL with 404,
    in place of the network (the validator fetches the crate's @context)."""

    def __init__(self) -> None:
        document = json.loads(CONTEXT_FILE.read_text())
        self.documents = {document["@id"]: CONTEXT_FILE.read_bytes()}
        self.asked: list[str] = []

    def send(self, adapter, request, **kwargs):
        from urllib3 import HTTPResponse

        self.asked.append(request.url)
        body = self.documents.get(request.url.rstrip("/"))
        raw = HTTPResponse(
            body=io.BytesIO(body if body is not None else b"offline"),
            status=200 if body is not None else 404,
            headers={"Content-Type": "application/ld+json" if body else "text/plain"},
            preload_content=False,
        )
        return adapter.build_response(request, raw)


@pytest.fixture(scope="module")
def validator(tmp_path_factory):
    """roc-validator's `validate`, offline: requests' transport answers from the bundled context."""
    import requests

    services = pytest.importorskip("rocrate_validator.services", reason="roc-validator missing")
    transport = OfflineTransport()
    patch = pytest.MonkeyPatch()
    patch.setenv("ROCRATE_VALIDATOR_AUTO_WARM", "0")
    patch.setattr(
        requests.adapters.HTTPAdapter,
        "send",
        lambda adapter, request, **kwargs: transport.send(adapter, request, **kwargs),
    )
    cache = tmp_path_factory.mktemp("validator-cache") / "http"

    def validate(folder: Path, profile: str, severity: str):
        return services.validate(
            {
                "rocrate_uri": str(folder),
                "profile_identifier": profile,
                "requirement_severity": severity,
                "cache_path": str(cache),
            }
        )

    yield services, validate, transport
    patch.undo()


def test_roc_validator_finds_no_required_issue_for_each_declared_profile(
    crate, folder, validator, capsys
):
    services, validate, transport = validator
    graph = entities(crate)
    declared = ids(graph["./"]["conformsTo"]) + ids(graph[METADATA_FILE]["conformsTo"])
    profiles = {p.uri: p.identifier for p in services.get_profiles()}
    checked = [profiles[uri] for uri in dict.fromkeys(declared) if uri in profiles]
    assert sorted(checked) == [
        "process-run-crate-0.5",
        "provenance-run-crate-0.5",
        "ro-crate-1.1",
        "workflow-ro-crate-1.0",
        "workflow-run-crate-0.5",
    ]
    lines = []
    for profile in checked:
        result = validate(folder, profile, "REQUIRED")
        required = result.get_issues()
        lines.append(
            f"roc-validator {profile}: {'passed' if result.passed() else 'FAILED'}, "
            f"{len(required)} REQUIRED issue(s)"
        )
        lines += [f"    {i.severity.name}: {i.message} ({i.violatingEntity})" for i in required]
        assert result.passed() and not required, "\n".join(lines)
    # the most specific profile inherits all the others: its recommendations, for the log
    recommended = validate(folder, "provenance-run-crate-0.5", "RECOMMENDED").get_issues()
    counts: dict[str, int] = {}
    for issue in recommended:
        counts[issue.message] = counts.get(issue.message, 0) + 1
    lines.append(f"provenance-run-crate-0.5 at RECOMMENDED: {len(recommended)} issue(s)")
    lines += [f"    {n} × {message}" for message, n in sorted(counts.items())]
    assert all(i.severity.name == "RECOMMENDED" for i in recommended)
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert "https://w3id.org/ro/crate/1.1/context" in transport.asked  # it really asked


def test_a_damaged_crate_fails_the_validator(folder, tmp_path, validator):
    """The offline harness does not hide problems: a crate without its main workflow fails."""
    _, validate, _ = validator
    broken = tmp_path / "broken"
    broken.mkdir()
    crate = json.loads((folder / METADATA_FILE).read_text())
    for entity in crate["@graph"]:
        if entity["@id"] == "./":
            del entity["mainEntity"]
    (broken / METADATA_FILE).write_text(json.dumps(crate))
    result = validate(broken, "workflow-ro-crate-1.0", "REQUIRED")
    assert not result.passed()
    assert any("mainEntity" in (i.message or "") for i in result.get_issues())


def test_the_rocrate_library_reads_the_crate(folder):
    rocrate = pytest.importorskip("rocrate.rocrate", reason="rocrate missing")
    read = rocrate.ROCrate(folder)
    assert read.mainEntity.id == "source/Snakefile"
    table = read.get("tables/table1.csv")
    assert (
        table["sha256"] == hashlib.sha256((folder / "tables/table1.csv").read_bytes()).hexdigest()
    )


# ---- following a number through the crate alone ---------------------------------------------


def test_a_table_number_leads_to_its_checkpoints_and_prepared_data_in_plain_json(folder):
    """Plain json and hashlib only: table1's PGD-10 of synth/vanilla → the evaluation records of
    its seeds → their evaluate actions → the checkpoints → the train actions → the prepared
    dataset's metadata → the synthesize action → every prepared file, each with a sha256 that
    matches the file on disk."""
    crate = json.loads((folder / METADATA_FILE).read_text())
    graph = {e["@id"]: e for e in crate["@graph"]}

    def produced_by(identifier: str) -> dict:
        found = [
            e
            for e in crate["@graph"]
            if "CreateAction" in types(e)
            and identifier in ids(e.get("result"))
            and e["@id"] != "#run"
        ]
        assert len(found) == 1, identifier
        return found[0]

    def on_disk(entity: dict) -> Path:
        return folder / (entity.get("localPath") or entity["@id"])

    def sha256(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    table = graph["tables/table1_values.csv"]
    numbers = [graph[i] for i in ids(table["about"])]
    number = next(n for n in numbers if n["name"].endswith("synth/vanilla × PGD10"))
    with open(folder / "tables/table1_values.csv") as handle:
        row = next(
            r
            for r in csv.DictReader(handle)
            if r["row"] == "synth/vanilla" and r["column"] == "PGD10"
        )
    assert number["value"] == pytest.approx(float(row["value"]))

    evaluations = ids(number["wasDerivedFrom"])
    assert len(evaluations) == 2
    values = []
    for evaluation in evaluations:
        assert sha256(on_disk(graph[evaluation])) == graph[evaluation]["sha256"]
        values.append(json.loads(on_disk(graph[evaluation]).read_text())["metrics"]["PGD10"])
        evaluate = produced_by(evaluation)
        checkpoint = next(
            graph[i] for i in ids(evaluate["object"]) if graph[i]["name"].endswith(".safetensors")
        )
        assert sha256(on_disk(checkpoint)) == checkpoint["sha256"]
        train = produced_by(checkpoint["@id"])
        inputs = [graph[i] for i in ids(train["object"])]
        weights = next(e for e in inputs if e.get("name", "").endswith(".safetensors"))
        assert sha256(on_disk(weights)) == weights["sha256"]
        metadata = next(e for e in inputs if e.get("name") == "dataset.json")
        assert sha256(on_disk(metadata)) == metadata["sha256"]
        synthesize = produced_by(metadata["@id"])
        prepared = [graph[i] for i in ids(synthesize["result"])]
        assert {e["name"] for e in prepared} >= {"images.u8", "labels.npy", "paper.csv"}
        for file in prepared:
            assert sha256(on_disk(file)) == file["sha256"], file["@id"]
    assert number["value"] == pytest.approx(sum(values) / len(values))


# ---- re-verification, deposit ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "damage", "named"),
    [
        ("runs/tiny-eps4/synth/vanilla/seed1/eval-best_test.json", "flip", "sha256 mismatch"),
        ("runs/tiny-eps4/synth/vanilla/seed0/best_test.safetensors", "flip", "sha256 mismatch"),
        ("../../resources/data/synth/images.u8", "flip", "sha256 mismatch"),
        ("report.md", "delete", "missing"),
    ],
)
def test_one_changed_byte_fails_audit_crate_naming_the_file(
    folder, capsys, relative, damage, named
):
    assert main(["audit", "--crate", str(folder), "--quiet"]) == 0
    capsys.readouterr()
    original = (folder / relative).read_bytes()
    if damage == "flip":
        flip_one_byte(folder / relative)
    else:
        (folder / relative).unlink()
    try:
        status = main(["audit", "--crate", str(folder), "--quiet"])
        captured = capsys.readouterr()
    finally:
        (folder / relative).write_bytes(original)
    assert status == 2
    assert relative in captured.err and named in captured.err
    assert main(["audit", "--crate", str(folder), "--quiet"]) == 0


def test_crate_refuses_a_record_changed_after_aggregation(workdir, folder, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    before = (folder / METADATA_FILE).read_bytes()
    original = flip_one_byte(folder / "tables/table1.csv")
    try:
        status = main(crate_command(workdir))
        captured = capsys.readouterr()
    finally:
        (folder / "tables/table1.csv").write_bytes(original)
    assert status == 2
    assert "tables/table1.csv" in captured.err and "recorded in" in captured.err
    assert "provenance/" in captured.err  # the index that claims its sha256
    assert (folder / METADATA_FILE).read_bytes() == before


def test_crate_is_byte_reproducible_and_zips_for_deposit(
    workdir, folder, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(workdir)
    written = (folder / METADATA_FILE).read_bytes()
    args = crate_command(workdir)
    assert main([*args, "--zip", str(tmp_path / "a.zip")]) == 0
    assert (folder / METADATA_FILE).read_bytes() == written  # same as the workflow's rule wrote
    assert main([*args, "--zip", str(tmp_path / "b.zip")]) == 0
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()

    names = zipfile.ZipFile(tmp_path / "a.zip").namelist()
    assert names[0] == METADATA_FILE
    assert {"tables/table1.csv", "report.md", "source/Snakefile", "source/config/tiny.yaml"} <= set(
        names
    )
    assert not [n for n in names if n.endswith(".safetensors")]
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(tmp_path / "a.zip").extractall(unpacked)
    capsys.readouterr()
    assert main(["audit", "--crate", str(unpacked), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "referenced file(s) not present" in out and "crate audit passed" in out

    assert main([*args, "--zip", str(tmp_path / "c.zip"), "--with-checkpoints"]) == 0
    with_checkpoints = zipfile.ZipFile(tmp_path / "c.zip").namelist()
    assert len([n for n in with_checkpoints if n.endswith(".safetensors")]) == 6  # 2 cells × 3


def test_describing_a_folder_the_workflow_has_not_finished_is_a_clear_error(tmp_path):
    from autolora.errors import ConfigError

    with pytest.raises(ConfigError, match="config.resolved.yaml missing"):
        describe_results(tmp_path)


# ---- a paper-like folder: real dataset archives, downloaded weights, SLURM jobs ----------------

PAPER_LIKE = {
    "protocol": "paper",
    "seeds": [0, 6, 66],
    "results": "results",
    "resources": "resources",
    "datasets": {"cifar10": {"source": "cifar10"}},
    "tables": {
        "table1": {"arch": "resnet18", "eps_pt": 4, "datasets": ["cifar10"]},
        "table8": {"tables": ["table1"]},
    },
}


@pytest.fixture
def paper_like(tmp_path, monkeypatch):
    """Records as `records_factory` writes them (cells trained and evaluated under SLURM, CIFAR-10
    prepared from its published archive, a converted ResNet-18 backbone), aggregated."""
    from records_factory import metrics_of, write_cell

    from autolora.planning.grid import expand_grid

    monkeypatch.chdir(tmp_path)
    for e in {e.cell_id: e for e in expand_grid(PAPER_LIKE).entries}.values():
        pgd = {"vanilla": 52.0, "twins": 53.0, "autolora": 54.0}[e.method] + e.seed / 100
        write_cell(tmp_path, e, metrics_of(80 + e.seed / 10, pgd, pgd - 5))
    folder = tmp_path / "results/paper"
    (folder / "config.resolved.yaml").write_text(json.dumps(PAPER_LIKE))
    assert (
        main(
            [
                "aggregate",
                "--config",
                str(folder / "config.resolved.yaml"),
                "--out",
                str(folder),
                "--paper",
                str(ROOT / "config/paper_results.csv"),
            ]
        )
        == 0
    )
    author = "Ada Lovelace <https://orcid.org/0000-0000-0000-0000>"
    assert main(["crate", "results/paper", "--workflow-dir", str(ROOT), "--author", author]) == 0
    return folder


def test_archives_downloaded_weights_and_slurm_jobs_are_described(paper_like, validator, capsys):
    from autolora.data.sources import CATALOGUE
    from autolora.weights import lookup

    folder = paper_like
    crate = json.loads((folder / METADATA_FILE).read_text())
    graph = entities(crate)
    # the published archive and checkpoint, as web-based data entities with their checksums
    (published_archive,) = CATALOGUE["cifar10"].files
    archive = graph[published_archive.url]
    assert archive["identifier"] == f"md5:{published_archive.checksum.hexdigest}"
    prepare = graph["#action/prepare_dataset/cifar10"]
    assert ids(prepare["object"]) == [archive["@id"]]
    assert "#resources/data/cifar10/labels.npy" in ids(prepare["result"])
    published = lookup("resnet18", 4)
    checkpoint = graph[published.url]
    assert checkpoint["sha256"] == published.sha256
    convert = graph["#action/convert_weights/resnet18-eps4"]
    assert ids(convert["object"]) == [published.url]
    # SLURM job ids and hosts from the run and evaluation records
    cell = "paper/runs/resnet18-eps4/cifar10/autolora/seed6"
    train, evaluate = graph[f"#action/train/{cell}"], graph[f"#action/evaluate/{cell}"]
    assert graph[train["identifier"]["@id"]]["value"] == "4242"
    assert graph[evaluate["identifier"]["@id"]]["value"] == "4343"
    assert graph[evaluate["location"]["@id"]]["name"] == "node08"
    # Table 8's p-value is derived from the six evaluations of its two groups
    p_value = graph["#number/table8/table1/cifar10/vanilla/PGD10"]
    assert len(ids(p_value["wasDerivedFrom"])) == 6
    # the author who ran it is the run's agent
    assert ids(graph["#run"]["agent"]) == ["https://orcid.org/0000-0000-0000-0000"]

    _, validate, _ = validator
    result = validate(folder, "provenance-run-crate-0.5", "REQUIRED")
    with capsys.disabled():
        print(
            f"\nroc-validator provenance-run-crate-0.5 (paper-like folder): "
            f"{'passed' if result.passed() else 'FAILED'}, {len(result.get_issues())} REQUIRED issue(s)"
        )
    assert result.passed(), [i.message for i in result.get_issues()]
