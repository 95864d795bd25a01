"""The audit of one evaluation's chain: the evaluation record, checkpoint, run record and history,
the prepared dataset down to its data files and archives, and the backbone down to its source."""

from __future__ import annotations

from pathlib import Path

from autolora.errors import ConfigError
from autolora.planning import layout
from autolora.planning.cells import NOT_READ_BY_TRAINING
from autolora.planning.vocabulary import PUBLISHED_ARCHS
from autolora.reporting.provenance.audit import Audit, short_digest

WEIGHTS_LOCK = "config/weights.lock"


def audit_chain(audit: Audit, chain: dict) -> None:
    evaluation = chain["evaluation"]
    if not audit.check_file("evaluation record", evaluation["path"], evaluation["sha256"], 2):
        return
    record = audit.load_json(evaluation["path"])
    if record is None:
        return
    checkpoint = chain.get("checkpoint") or {}
    audit.say(
        f"checkpoint {checkpoint.get('name')!r}: epoch {checkpoint.get('epoch')}, selected by "
        f"{checkpoint.get('selected_by')}",
        2,
    )
    audit.say(
        f"evaluated {record.get('n')} test images on {_machine(record)}; "
        f"{_autoattack_words(record)}; finished {record.get('finished')}",
        2,
    )
    for item in chain["files"]:
        if not audit.check_file(item["role"], item["path"], item["sha256"], 2):
            continue
        if item["role"] == "dataset":
            _audit_dataset(audit, item["path"], 3)
        elif item["role"] == "weights":
            _audit_backbone(audit, item["path"], item["sha256"], 3)
    run_path = (chain.get("run_record") or {}).get("path")
    if run_path and (audit.root / run_path).is_file():
        run = audit.load_json(run_path)
        if run is not None:
            _describe_run(audit, run, run_path, checkpoint)


def _describe_run(audit: Audit, run: dict, run_path: str, checkpoint: dict) -> None:
    protocol = run.get("protocol") or {}
    choices = ", ".join(
        f"{k}={v}"
        for k, v in sorted((protocol.get("choices") or {}).items())
        if k not in NOT_READ_BY_TRAINING  # the evaluation's: its checkpoint is said above
    )
    code = run.get("code") or {}
    dirty = " with uncommitted changes" if code.get("dirty") else ""
    attempts = len(run.get("attempts") or []) or 1
    audit.say(f"trained under protocol {protocol.get('name')} ({choices})", 2)
    audit.say(
        f"code {code.get('commit')}{dirty}, autolora {code.get('version')}; "
        f"{run.get('epochs_run')} epochs, stopped: {run.get('stop_reason')}; "
        f"{attempts} attempt(s); finished {run.get('finished')}",
        2,
    )
    audit.say(f"trained on {_machine(run)}", 2)
    recorded = (run.get("checkpoints") or {}).get(checkpoint.get("name"), {})
    if recorded.get("sha256") != checkpoint.get("sha256"):
        audit.problem(
            f"{run_path}: its checkpoint {checkpoint.get('name')!r} has sha256 "
            f"{short_digest(recorded.get('sha256'))}, the evaluation record names "
            f"{short_digest(checkpoint.get('sha256'))}",
            2,
        )


def _audit_dataset(audit: Audit, metadata_path: str, indent: int) -> None:
    """Every file a prepared dataset's ``dataset.json`` lists (checked against its sha256 there)
    and the archives it was prepared from."""
    if not audit.first_time(f"dataset:{metadata_path}"):
        audit.say("its data files: verified above", indent)
        return
    metadata = audit.load_json(metadata_path, indent)
    if metadata is None:
        return
    folder = Path(metadata_path).parent
    files = metadata.get("files") or {}
    if not files:
        audit.problem(f"{metadata_path}: lists no data files to verify; re-prepare the dataset")
    for name, digest in sorted(files.items()):
        audit.check_file("prepared data file", (folder / name).as_posix(), digest, indent)
    _audit_dataset_sources(audit, metadata, folder, indent)


def _audit_dataset_sources(audit: Audit, metadata: dict, folder: Path, indent: int) -> None:
    from autolora.data.sources import CATALOGUE

    name = metadata.get("name")
    published = {a.name: a.checksum for a in CATALOGUE[name].files} if name in CATALOGUE else {}
    downloads = layout.downloads_beside(folder, str(name))
    for source in metadata.get("sources") or []:
        if "file" not in source:  # synthetic data: the generator and its seed
            audit.say(f"generated, not downloaded: {_words(source)}", indent)
            continue
        algorithm = "md5" if "md5" in source else "sha256"
        recorded = source.get(algorithm)
        checksum = published.get(source["file"])
        if checksum is not None and (checksum.algorithm, checksum.hexdigest) != (
            algorithm,
            recorded,
        ):
            audit.problem(
                f"dataset {name}: archive {source['file']} recorded with {algorithm} "
                f"{short_digest(recorded)}, but its published {checksum.algorithm} is "
                f"{short_digest(checksum.hexdigest)}",
                indent,
            )
            continue
        origin = "published" if checksum is not None else "no checksum published; recorded"
        audit.say(
            f"archive {source['file']}: {algorithm} {short_digest(recorded)} ({origin})", indent
        )
        audit.check_archive(
            "archive", (downloads / source["file"]).as_posix(), algorithm, recorded, indent + 1
        )


def _audit_backbone(audit: Audit, weights_path: str, trained_sha256: str, indent: int) -> None:
    """The record beside a backbone, and through it the published or pinned sha256 of the
    checkpoint it was converted from (re-hashed when the ``.ckpt`` is still present)."""
    if not audit.first_time(f"weights:{weights_path}"):
        audit.say("its record and source: verified above", indent)
        return
    from autolora.weights import CATALOGUE, pinned_sha256

    record_file = layout.backbone_record(weights_path).as_posix()
    if not (audit.root / record_file).is_file():
        audit.problem(f"{record_file}: missing (the record of backbone {weights_path})", indent)
        return
    record = audit.load_json(record_file, indent)
    if record is None:
        return
    if record.get("sha256") != trained_sha256:
        audit.problem(
            f"{record_file}: records sha256 {short_digest(record.get('sha256'))} for the backbone, the "
            f"run trained on {short_digest(trained_sha256)}",
            indent,
        )
        return
    audit.say(f"backbone record {record_file}: agrees ({short_digest(trained_sha256)})", indent)
    arch, source = record.get("arch"), record.get("source") or {}
    entry = (
        CATALOGUE.get((arch, float(record.get("eps_pt", -1)))) if arch in PUBLISHED_ARCHS else None
    )
    if entry is None:
        audit.say(f"pre-trained here, not downloaded: {_words(source)}", indent)
        return
    try:
        expected, origin = pinned_sha256(entry, audit.root / WEIGHTS_LOCK)
    except ConfigError as error:
        audit.problem(str(error), indent)
        return
    if expected is None or source.get("sha256") != expected:
        pinned = "neither published nor pinned" if expected is None else short_digest(expected)
        audit.problem(
            f"{record_file}: converted from {entry.file} with sha256 "
            f"{short_digest(source.get('sha256'))}; expected {pinned} ({origin})",
            indent,
        )
        return
    audit.say(f"converted from {entry.file}: sha256 {short_digest(expected)} ({origin})", indent)
    if source.get("file"):
        downloads = layout.download_of_backbone(weights_path, source["file"])
        audit.check_archive(
            "checkpoint download", downloads.as_posix(), "sha256", expected, indent + 1
        )


def _words(source: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(source.items())) or "no details recorded"


def _autoattack_words(record: dict) -> str:
    version = (record.get("autoattack") or {}).get("version")
    return f"AutoAttack {version}" if version else "no AutoAttack"


def _machine(record: dict) -> str:
    slurm = record.get("slurm")
    where = (
        f"SLURM job {slurm.get('job_id')} on node {slurm.get('node')}" if slurm else "outside SLURM"
    )
    threads = (record.get("threads") or {}).get("intra_op")
    torch_threads = f", {threads} torch thread(s)" if threads else ""
    return f"host {record.get('host')}, device {record.get('device')}{torch_threads}, {where}"
