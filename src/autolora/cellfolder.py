"""A training cell's folder across attempts: the lock of its trainer, one log per attempt, the
completed run's outputs kept where Snakemake does not delete them, and superseded work kept aside.

Layout (besides the declared outputs ``run.json``, ``history.csv``, ``<checkpoint>.safetensors``
and the resume state ``state/``, see ``autolora.train``)::

    train.lock      flock-ed by the `autolora train` that works on the cell; names its holder
    logs/           train-<UTC time>-<pid>.log: one log per attempt, never deleted by Snakemake
    completed/      the finished run's outputs as training wrote them, run.json last (the commit
                    point); the declared outputs are hard links to these files
    superseded/     <UTC time>-<reason>/: a finished run (completed/, its outputs) or a resume
                    state (state/) of another identity or other inputs than the current attempt's,
                    moved here whole (never deleted) before the cell trains again; superseded.json
                    says why

Snakemake deletes a job's declared outputs when it counts the job as failed, even after the
training finished (a time-limit signal that reaches the job step late). ``completed/`` is not a
declared output: a retry restores the outputs from it in seconds (``autolora.train``). Hard links
cost no disk space; on a file system without them the files are copied.

Superseding renames, within the cell folder: nothing is copied or deleted. Whatever a crash leaves
half-moved is found by the next attempt and moved aside in turn.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from autolora import environment
from autolora.errors import AutoloraError
from autolora.files import atomic_path, write_json
from autolora.planning import layout

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
# errno values of a file system that cannot hard-link (then the outputs are copied).
NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}
NO_FLOCK = {errno.ENOLCK, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL}

logger = logging.getLogger(__name__)


class CellBusy(AutoloraError):
    """Another process trains this cell."""


@contextlib.contextmanager
def locked(out_dir: str | os.PathLike) -> Iterator[None]:
    """Hold the cell's lock for the block, or raise CellBusy when another process holds it.

    An flock on ``train.lock``: the kernel releases it when its holder exits in any way (crash,
    SIGKILL, node reboot for a local file system), so a dead trainer's lock never blocks; the
    file stays and only names the last holder.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / layout.LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            raise CellBusy(
                f"{out_dir} is being trained by another process ({holder}): let it finish, or "
                "stop it; two trainers of one cell would overwrite each other's state"
            ) from None
        except OSError as error:
            if error.errno not in NO_FLOCK:
                raise
            logger.warning("%s: file locks are not supported here; the cell is not locked", path)
        holder = {
            "pid": os.getpid(),
            "host": environment.host(),
            "started": environment.timestamp(),
        }
        slurm_job = os.environ.get("SLURM_JOB_ID")
        if slurm_job:
            holder["slurm_job_id"] = slurm_job
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder, sort_keys=True) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def attempt_log(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Log this attempt (every log record at INFO and above, and how it ended) to its own file in
    ``logs/``; yields the file's path."""
    logs = Path(out_dir) / layout.LOGS_DIR
    logs.mkdir(parents=True, exist_ok=True)
    path = _new_log_file(logs)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))
    try:
        logger.info(
            "attempt on %s (pid %d): %s",
            environment.host(),
            os.getpid(),
            environment.command_line(),
        )
        yield path
    except BaseException as error:
        expected = isinstance(error, AutoloraError | KeyboardInterrupt | SystemExit)
        logger.error("attempt ended: %s: %s", type(error).__name__, error, exc_info=not expected)
        raise
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def _new_log_file(logs: Path) -> Path:
    """A new, empty ``train-<UTC time>-<pid>[-<n>].log`` (n when the name is taken already)."""
    stamp = _compact_timestamp()
    for number in itertools.count(1):
        path = logs / layout.attempt_log(stamp, os.getpid(), number)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")  # pragma: no cover


def _compact_timestamp() -> str:
    """The UTC time of ``environment.timestamp`` without separators, for file names."""
    return environment.timestamp().replace("-", "").replace(":", "")


def link_or_copy(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source`` (a hard link; a copy where the file system has
    none), atomically: ``target`` is the old file or the new one, never a partial one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        os.link(source, temporary)
    except OSError as error:
        if error.errno not in NO_HARD_LINKS:
            raise
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        return
    try:
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def publish(out_dir: str | os.PathLike, names: Sequence[str]) -> None:
    """Put the files ``names`` of ``completed/`` in place as the cell's outputs, in order (the run
    record last, so that it appears only when everything it names is there)."""
    out_dir = Path(out_dir)
    for name in names:
        link_or_copy(out_dir / layout.COMPLETED_DIR / name, out_dir / name)


def supersede(
    out_dir: str | os.PathLike, names: Sequence[str], slug: str, reason: str
) -> tuple[Path, list[str]]:
    """Move the entries ``names`` of the cell folder that exist (outputs, ``state/``,
    ``completed/``: in that order, the commit point last) into a new
    ``superseded/<UTC time>-<slug>/`` with a note saying why; returns the folder and what moved."""
    out_dir = Path(out_dir)
    base = out_dir / layout.SUPERSEDED_DIR
    base.mkdir(exist_ok=True)
    stamp = _compact_timestamp()
    for number in itertools.count(1):
        folder = base / (f"{stamp}-{slug}" if number == 1 else f"{stamp}-{slug}-{number}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        break
    moved = []
    for name in names:
        if os.path.lexists(out_dir / name):
            os.replace(out_dir / name, folder / name)
            moved.append(name)
    note = {"superseded_at": environment.timestamp(), "reason": reason, "moved": moved}
    write_json(folder / layout.SUPERSEDED_NOTE, note)
    return folder, moved
