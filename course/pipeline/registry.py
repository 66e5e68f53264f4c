"""The course's model registry in a folder, with MLflow-style aliases (lesson 07).

    python course/pipeline/registry.py --registry DIR register MODEL_DIR --by WHO
    python course/pipeline/registry.py --registry DIR promote VERSION --by WHO --reason TEXT [--evidence FILE]
    python course/pipeline/registry.py --registry DIR rollback [--to VERSION] --by WHO --reason TEXT
    python course/pipeline/registry.py --registry DIR show

Exit codes: 0 done, 1 refused (nothing was changed), 2 bad input or usage.

Layout, one folder per registered model:

    DIR/learner-completion/
        registry.json          versions, aliases, and the append-only history of alias moves
        versions/1/            model.joblib, metadata.json (+ golden.csv): read-only, never rewritten

Versions are immutable and numbered by the registry. An alias (`champion`, `challenger`) is a
movable pointer to a version, like MLflow's `set_registered_model_alias`; serving code loads
`champion` (`models:/learner-completion@champion` in MLflow). MLflow keeps only where an alias
points now; this registry also keeps every move (who, when, why, on which evidence), so a
rollback target and an incident timeline come from the record, not from memory.

A refused call writes nothing: registry.json keeps its bytes (as in exercise ex05).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_NAME = "learner-completion"
STATE_FILE = "registry.json"
REQUIRED_FILES = ("model.joblib", "metadata.json")


class RegistryError(Exception):
    """Bad input: an unknown version, a model folder that is incomplete or altered."""


class PromotionRefused(Exception):
    """A promotion or rollback that must not happen; the registry is left unchanged."""


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Registry:
    def __init__(self, root, name: str = DEFAULT_NAME):
        self.root = Path(root)
        self.name = name
        self.folder = self.root / name
        self.state_file = self.folder / STATE_FILE

    # ---- state -----------------------------------------------------------------------------
    def _state(self) -> dict:
        if not self.state_file.is_file():
            return {"name": self.name, "versions": {}, "aliases": {}, "history": []}
        return json.loads(self.state_file.read_text(encoding="utf-8"))

    def _save(self, before: dict, state: dict):
        # The history is append-only: what was recorded before must still be there, unchanged.
        if state["history"][:len(before["history"])] != before["history"]:
            raise AssertionError("the history of alias moves may only grow")
        temporary = self.state_file.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(temporary, self.state_file)  # atomic: a reader sees the old or the new file

    @contextmanager
    def _locked(self):
        """One writer at a time (two CI jobs registering at once): an exclusive lock file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = self.folder / "registry.lock"
        deadline = time.monotonic() + 30
        while True:
            try:
                handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                if time.monotonic() > deadline:
                    raise RegistryError(f"{lock} has been held for 30 s; if no job is writing, delete it")
                time.sleep(0.05)
        try:
            os.close(handle)
            yield
        finally:
            lock.unlink(missing_ok=True)

    # ---- read ------------------------------------------------------------------------------
    def versions(self) -> dict[int, dict]:
        return {int(v): record for v, record in self._state()["versions"].items()}

    def version_dir(self, version: int) -> Path:
        if int(version) not in self.versions():
            raise RegistryError(f"{self.name} has no version {version}; registered: {sorted(self.versions())}")
        return self.folder / "versions" / str(int(version))

    def metadata(self, version: int) -> dict:
        return json.loads((self.version_dir(version) / "metadata.json").read_text(encoding="utf-8"))

    def get_version_by_alias(self, alias: str) -> int | None:
        """Where an alias points now (MLflow: `MlflowClient().get_model_version_by_alias`)."""
        return self._state()["aliases"].get(alias)

    def aliases(self) -> dict[str, int]:
        return dict(self._state()["aliases"])

    def history(self, alias: str | None = None) -> list[dict]:
        """Every alias move, oldest first. MLflow keeps no such list."""
        return [move for move in self._state()["history"] if alias is None or move["alias"] == alias]

    def verify(self, version: int) -> None:
        """Raise RegistryError unless every file of the version still has its registered sha256."""
        folder = self.version_dir(version)
        for file, expected in self.versions()[int(version)]["files"].items():
            path = folder / file
            if not path.is_file() or sha256_file(path) != expected:
                raise RegistryError(f"{self.name} v{version}: {file} is missing or altered since registration "
                                    f"(sha256 differs); do not serve it, register a new version")

    # ---- write -----------------------------------------------------------------------------
    def register(self, model_dir, *, by: str, at: str | None = None, alias: str | None = "challenger") -> int:
        """Copy a model folder (model.joblib + metadata.json, as ci_model.py --model-out writes it)
        into the registry as the next version; optionally point `alias` at it."""
        model_dir = Path(model_dir)
        missing = [f for f in REQUIRED_FILES if not (model_dir / f).is_file()]
        if missing:
            raise RegistryError(f"{model_dir} lacks {', '.join(missing)}: register the folder ci_model.py --model-out wrote")
        try:
            metadata = json.loads((model_dir / "metadata.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise RegistryError(f"{model_dir / 'metadata.json'} is not valid JSON ({err.msg})") from None
        if metadata.get("model_sha256") != sha256_file(model_dir / "model.joblib"):
            raise RegistryError(f"{model_dir / 'model.joblib'} does not match the model_sha256 in its metadata: "
                                "the artifact was changed after training")
        at = at or _now()
        with self._locked():
            before = self._state()
            state = json.loads(json.dumps(before))
            version = max((int(v) for v in state["versions"]), default=0) + 1
            target = self.folder / "versions" / str(version)
            target.mkdir(parents=True, exist_ok=False)  # never reuse a number
            files = {}
            for source in sorted(p for p in model_dir.iterdir() if p.is_file()):
                shutil.copyfile(source, target / source.name)
                (target / source.name).chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                files[source.name] = sha256_file(target / source.name)
            state["versions"][str(version)] = {
                "files": files, "registered_by": by, "registered_at": at,
                "data_sha256": (metadata.get("data") or {}).get("sha256"),
                "gate_passed": bool((metadata.get("gate") or {}).get("passed")),
            }
            if alias:
                self._move(state, alias, version, action="register", by=by, at=at,
                           reason=f"registered v{version}", evidence={})
            self._save(before, state)
        return version

    def _move(self, state, alias, version, *, action, by, at, reason, evidence):
        state["history"].append({"alias": alias, "from": state["aliases"].get(alias), "to": version,
                                 "action": action, "by": by, "at": at, "reason": reason, "evidence": evidence})
        state["aliases"][alias] = version

    def set_alias(self, alias: str, version: int, *, by: str, reason: str, at: str | None = None):
        """Point an alias at a version (MLflow: `MlflowClient().set_registered_model_alias`)."""
        with self._locked():
            before = self._state()
            if str(int(version)) not in before["versions"]:
                raise RegistryError(f"{self.name} has no version {version}")
            state = json.loads(json.dumps(before))
            self._move(state, alias, int(version), action="set", by=by, at=at or _now(), reason=reason, evidence={})
            self._save(before, state)

    def promote(self, version: int, *, by: str, reason: str, evidence: dict | None = None,
                at: str | None = None, alias: str = "champion") -> int | None:
        """Move `alias` (champion) to `version` if its training gate passed, every check in
        `evidence` passed and a reason is given. Returns the previous champion. A refusal
        raises PromotionRefused and changes nothing."""
        version, evidence = int(version), evidence or {}
        with self._locked():
            before = self._state()
            record = before["versions"].get(str(version))
            failed = [f"{check}: {result.get('detail', 'failed')}" for check, result in evidence.items()
                      if not result.get("passed")]
            if record is None:
                raise RegistryError(f"{self.name} has no version {version}; registered: {sorted(map(int, before['versions']))}")
            if before["aliases"].get(alias) == version:
                problem = f"v{version} is already @{alias}"
            elif not record["gate_passed"]:
                problem = f"v{version} failed its evaluation gate at training time"
            elif failed:
                problem = "; ".join(failed)
            elif not (reason or "").strip():
                problem = "a promotion needs a written reason"
            else:
                problem = None
            if problem:
                current = before["aliases"].get(alias)
                raise PromotionRefused(f"@{alias} stays on {f'v{current}' if current else '(unset)'}: {problem}")
            self.verify(version)
            state = json.loads(json.dumps(before))
            previous = state["aliases"].get(alias)
            self._move(state, alias, version, action="promote", by=by, at=at or _now(), reason=reason.strip(),
                       evidence=evidence)
            self._save(before, state)
        return previous

    def rollback(self, *, by: str, reason: str, to: int | None = None, at: str | None = None,
                 alias: str = "champion") -> int:
        """Move `alias` back: to `to`, or to where it pointed before its last move. The target
        must have passed its gate and still match its sha256. Returns the version now served."""
        with self._locked():
            before = self._state()
            current = before["aliases"].get(alias)
            moves = [m for m in before["history"] if m["alias"] == alias]
            target = int(to) if to is not None else (moves[-1]["from"] if moves else None)
            if current is None:
                problem = f"nothing is @{alias} yet"
            elif target is None:
                problem = f"@{alias} has no earlier version to return to"
            elif str(target) not in before["versions"]:
                raise RegistryError(f"{self.name} has no version {target}; registered: {sorted(map(int, before['versions']))}")
            elif target == current:
                problem = f"v{target} is already @{alias}"
            elif not before["versions"][str(target)]["gate_passed"]:
                problem = f"v{target} failed its evaluation gate at training time"
            elif not (reason or "").strip():
                problem = "a rollback needs a written reason"
            else:
                problem = None
            if problem:
                raise PromotionRefused(f"@{alias} stays on {f'v{current}' if current else '(unset)'}: {problem}")
            self.verify(target)  # an altered or missing artifact stops the rollback, not production
            state = json.loads(json.dumps(before))
            self._move(state, alias, target, action="rollback", by=by, at=at or _now(), reason=reason.strip(),
                       evidence={})
            self._save(before, state)
        return target


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="registry.py", description="The course's file model registry.",
                                     epilog="exit codes: 0 done, 1 refused (registry unchanged), 2 bad input or usage")
    parser.add_argument("--registry", type=Path, required=True, help="the registry's root folder")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"registered model name (default {DEFAULT_NAME})")
    sub = parser.add_subparsers(dest="command", required=True)
    reg = sub.add_parser("register", help="register a model folder; prints the new version number")
    reg.add_argument("model_dir", type=Path)
    reg.add_argument("--by", required=True)
    reg.add_argument("--alias", default="challenger", help="alias to point at the new version ('' for none)")
    pro = sub.add_parser("promote", help="move @champion to VERSION")
    pro.add_argument("version", type=int)
    pro.add_argument("--by", required=True)
    pro.add_argument("--reason", required=True)
    pro.add_argument("--evidence", type=Path, action="append", default=[],
                     help="JSON file of checks ({name: {passed, detail}}) written by serve.py")
    rol = sub.add_parser("rollback", help="move @champion back")
    rol.add_argument("--to", type=int, default=None, help="version to return to (default: the previous champion)")
    rol.add_argument("--by", required=True)
    rol.add_argument("--reason", required=True)
    sub.add_parser("show", help="versions, aliases and the history of alias moves")
    args = parser.parse_args(argv)

    registry = Registry(args.registry, args.name)
    try:
        if args.command == "register":
            print(registry.register(args.model_dir, by=args.by, alias=args.alias or None))
        elif args.command == "promote":
            evidence = {}
            for path in args.evidence:
                try:
                    evidence.update(json.loads(path.read_text(encoding="utf-8")))
                except (OSError, json.JSONDecodeError) as err:
                    print(f"cannot read the evidence file {path}: {err}", file=sys.stderr)
                    return 2
            previous = registry.promote(args.version, by=args.by, reason=args.reason, evidence=evidence)
            print(f"@champion: v{previous} -> v{args.version}" if previous else f"@champion: v{args.version}")
        elif args.command == "rollback":
            before = registry.get_version_by_alias("champion")
            now = registry.rollback(by=args.by, reason=args.reason, to=args.to)
            print(f"@champion rolled back: v{before} -> v{now}")
        else:
            print(json.dumps({"aliases": registry.aliases(), "versions": sorted(registry.versions()),
                              "history": registry.history()}, indent=2))
    except PromotionRefused as err:
        print(f"REFUSED: {err}", file=sys.stderr)
        return 1
    except (RegistryError, OSError) as err:
        print(f"registry: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
