"""Collecting submissions from nbgrader's exchange without trusting what learners put there.

nbgrader's own collect copies each inbound folder with shutil.copytree, following links with the
instructor's rights, and believes the learner name in the folder's name. Here:

- only regular files and folders inside the inbound folder are read; links, devices, pipes,
  sockets and hard-linked files are refused (opened with O_NOFOLLOW relative to their parent's
  descriptor, so a folder swapped for a link mid-copy is not followed either);
- the owner (uid) of an inbound entry must be the learner it claims to be whenever a Unix account
  of that name exists; when none exists, it must be the grader's own account (a single-user
  exchange, where the instructor submits for everyone); anything else is refused;
- the newest *accepted* entry of each learner is collected, so a forged newer entry cannot hide
  a learner's real one;
- every refusal is written down for the grade table (collect_notes.json beside the submission;
  a learner with only refused entries gets an empty submission carrying the notes).
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

from nbgrader.exchange.default.collect import ExchangeCollect
from nbgrader.utils import parse_utc

NOTES_FILE = "collect_notes.json"
MAX_SUBMISSION_BYTES = 200 * 1024**2
# Files and folders: an exercise has a dozen. Tiny files by the hundred thousand pass the size cap
# but cost minutes of copying, hashing and nbgrader's own file lists at every grading.
MAX_SUBMISSION_ENTRIES = 1_000


@dataclass
class Entry:
    name: str
    student: str
    timestamp: object
    notes: list[str] = field(default_factory=list)
    refused: str = ""


def _kind(mode: int) -> str:
    for test, word in ((stat.S_ISLNK, "a link"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
                       (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return word
    return "not a regular file"


def _account_uid(name: str) -> int | None:
    try:
        return pwd.getpwnam(name).pw_uid
    except (KeyError, UnicodeEncodeError):
        return None


def _owner_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def owner_problem(student: str, uid: int) -> str:
    """'' when an inbound entry owned by `uid` may claim to be `student`, else why not."""
    expected = _account_uid(student)
    if expected is not None:
        return "" if uid == expected else f"it claims to be {student} but belongs to {_owner_name(uid)}"
    if uid == os.geteuid():
        return ""
    return f"it claims to be {student}, who has no account here, and belongs to {_owner_name(uid)}"


def valid_learner(student: str) -> bool:
    """A name that is one ordinary folder under submitted/ (not '', '..', hidden or a path)."""
    return bool(student) and not student.startswith(".") and "/" not in student


def scan(inbound: Path, assignment: str) -> list[Entry]:
    entries = []
    for name in sorted(os.listdir(inbound)):
        parts = name.rsplit("+", 3)
        if len(parts) != 4 or parts[1] != assignment:
            continue
        student = parts[0]
        entry = Entry(name, student, None)
        try:
            entry.timestamp = parse_utc(parts[2])
        except Exception:
            entry.refused = f"inbound entry {name!r} has no valid time stamp"
            entries.append(entry)
            continue
        if not valid_learner(student):
            entry.refused = f"inbound entry {name!r} names no valid learner"
        else:
            info = os.lstat(inbound / name)
            if not stat.S_ISDIR(info.st_mode):
                entry.refused = f"a submission in the exchange was refused: it is {_kind(info.st_mode)}, not a folder"
            else:
                problem = owner_problem(student, info.st_uid)
                if problem:
                    entry.refused = f"a submission in the exchange was refused: {problem}"
        entries.append(entry)
    return entries


def _copy_tree(src_fd: int, dest: Path, relative: str, owner: int | None, notes: list[str], budget: list[int]) -> None:
    """Copy the folder open at src_fd into dest, regular files only, never following a link.
    budget: [bytes left, files and folders left]; past the second, nothing more is read."""
    dest.mkdir(parents=True, exist_ok=True)
    with os.scandir(src_fd) as listing:
        names = sorted(e.name for e in listing)
    for name in names:
        shown = f"{relative}{name}"
        budget[1] -= 1
        if budget[1] < 0:
            if budget[1] == -1:  # said once, however many more there are
                notes.append(f"the submission holds more than {MAX_SUBMISSION_ENTRIES} files and folders: only the "
                             f"first {MAX_SUBMISSION_ENTRIES} (in name order) were collected, from {shown} on nothing was")
            return
        info = os.stat(name, dir_fd=src_fd, follow_symlinks=False)
        if owner is not None and info.st_uid != owner:
            notes.append(f"{shown} was not collected: it belongs to {_owner_name(info.st_uid)}, not to the learner")
            continue
        if stat.S_ISDIR(info.st_mode):
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=src_fd)
            try:
                _copy_tree(fd, dest / name, shown + "/", owner, notes, budget)
            finally:
                os.close(fd)
            continue
        if not stat.S_ISREG(info.st_mode):
            notes.append(f"{shown} was not collected: it is {_kind(info.st_mode)}")
            continue
        if info.st_nlink > 1:
            notes.append(f"{shown} was not collected: it is a hard link to a file elsewhere")
            continue
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=src_fd)
        except OSError as err:
            notes.append(f"{shown} was not collected: it could not be opened ({err.strerror})")
            continue
        with os.fdopen(fd, "rb") as source:
            opened = os.fstat(source.fileno())
            if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                notes.append(f"{shown} was not collected: it changed while it was being read")
                continue
            budget[0] -= opened.st_size
            if budget[0] < 0:
                notes.append(f"{shown} was not collected: the submission is larger than "
                             f"{MAX_SUBMISSION_BYTES // 1024**2} MB")
                continue
            with open(dest / name, "wb") as target:
                shutil.copyfileobj(source, target)


def copy_entry(inbound: Path, entry: Entry, dest: Path) -> None:
    """Copy one accepted inbound entry into dest (which must not exist)."""
    fd = os.open(inbound / entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        owner = os.fstat(fd).st_uid  # already checked against the learner's name
        _copy_tree(fd, dest, "", owner, entry.notes, [MAX_SUBMISSION_BYTES, MAX_SUBMISSION_ENTRIES])
    finally:
        os.close(fd)


def _existing_timestamp(folder: Path):
    try:
        return parse_utc((folder / "timestamp.txt").read_text().strip())
    except Exception:
        return None


def notes_of(submitted: Path) -> list[str]:
    """The collect notes of one raw submission folder (for the grade table)."""
    try:
        notes = json.loads((submitted / NOTES_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [str(n) for n in notes] if isinstance(notes, list) else []


def collect(inbound: Path, submitted: Path, assignment: str) -> dict[str, list[str]]:
    """Collect the newest accepted submission of each learner; returns the notes per learner."""
    by_student: dict[str, list[Entry]] = {}
    for entry in scan(inbound, assignment):
        by_student.setdefault(entry.student, []).append(entry)
    outcome = {}
    for student, entries in sorted(by_student.items()):
        entries.sort(key=lambda e: (e.timestamp is not None, e.timestamp or 0), reverse=True)
        chosen = next((e for e in entries if not e.refused), None)
        refusals = [e.refused for e in entries if e.refused]
        if not valid_learner(student):  # its notes go to the caller only: its name is no folder of ours
            outcome[student] = refusals
            continue
        target = submitted / student / assignment
        if chosen is not None:
            existing = _existing_timestamp(target) if target.is_dir() else None
            if existing is None or chosen.timestamp > existing:
                staging = target.with_name(f".{assignment}.collecting")
                shutil.rmtree(staging, ignore_errors=True)
                copy_entry(inbound, chosen, staging)
                if target.exists():
                    shutil.rmtree(target)
                staging.rename(target)
                notes = chosen.notes + refusals
            else:
                notes = notes_of(target) + [r for r in refusals if r not in notes_of(target)]
        else:
            target.mkdir(parents=True, exist_ok=True)
            notes = notes_of(target) + [r for r in refusals if r not in notes_of(target)]
        if notes:
            (target / NOTES_FILE).write_text(json.dumps(notes, indent=1))
        outcome[student] = notes
    return outcome


class SafeExchangeCollect(ExchangeCollect):
    """nbgrader's collect (command line, Formgrader's Collect button) with this module's rules:
    the newest accepted entry per learner, regular files only, refusals noted beside it."""

    def init_src(self):
        super().init_src()  # checks the inbound folder, reads the due date
        wanted = self.coursedir.student_id if self.coursedir.student_id not in ("", "*") else None
        newest: dict[str, Entry] = {}
        self._refusals: dict[str, list[str]] = {}
        for entry in scan(Path(self.inbound_path), self.coursedir.assignment_id):
            if wanted is not None and entry.student != wanted:
                continue
            if entry.refused:
                self.log.warning("%s: %s", entry.name, entry.refused)
                self._refusals.setdefault(entry.student, []).append(entry.refused)
            elif entry.student not in newest or entry.timestamp > newest[entry.student].timestamp:
                newest[entry.student] = entry
        self.src_records = [{"username": e.student, "filename": e.name, "timestamp": e.timestamp}
                            for e in newest.values()]

    def do_copy(self, src, dest):
        src = Path(src)
        entry = Entry(src.name, src.name.rsplit("+", 3)[0], None)
        copy_entry(src.parent, entry, Path(dest))
        notes = entry.notes + self._refusals.get(entry.student, [])
        if notes:
            (Path(dest) / NOTES_FILE).write_text(json.dumps(notes, indent=1))
