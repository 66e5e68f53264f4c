"""The serving path: load a registered model safely and score a batch (lessons 06-07).

    python course/pipeline/serve.py --registry DIR score (--alias champion | --version N) --batch CSV
    python course/pipeline/serve.py record-golden MODEL_DIR --batch CSV [--rows 50]
    python course/pipeline/serve.py --registry DIR golden-check --version N [--evidence FILE]
    python course/pipeline/serve.py --registry DIR compare --version N --data-source DIR [--evidence FILE]
    python course/pipeline/serve.py --registry DIR check --version N --data-source DIR [--evidence FILE]

Exit codes: 0 passed, 1 a check failed, 2 bad input or usage.

`load` checks the model file's sha256 against the registry's record *before* unpickling it:
unpickling runs code, so an altered file must never reach joblib.load.

The golden batch is a few fixed rows with the predictions recorded when the version was
registered. `golden-check` re-scores them through this serving path in the serving
environment and requires every prediction to agree: it catches an artifact, library or
feature-building change between registration and deployment. In model-ci.yml the expected
predictions are recorded with this same serving code at registration, so a skew that already
existed then is not caught there; lesson 07 records them with the training code, which is
the stronger check.

`compare` is the noise-aware promotion rule of lesson 03: the candidate and the current
champion are scored on the same held-out rows, and a paired bootstrap gives a 95 % interval
of the F1 difference; the candidate passes unless the interval's lower end is below -margin.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

try:  # imported as course/pipeline/serve.py from a lesson, or run as a script
    from .registry import DEFAULT_NAME, Registry, RegistryError, sha256_file
except ImportError:
    from registry import DEFAULT_NAME, Registry, RegistryError, sha256_file

GOLDEN_FILE = "golden.csv"
MARGIN, N_BOOT, BOOT_SEED = 0.02, 1000, 2026


def resolve(registry: Registry, alias: str | None = None, version: int | None = None) -> int:
    if version is None:
        version = registry.get_version_by_alias(alias or "champion")
        if version is None:
            raise RegistryError(f"{registry.name} has no @{alias or 'champion'} yet")
    return int(version)


def load(registry: Registry, alias: str | None = None, version: int | None = None):
    """(model, metadata, version) for an alias or a version, sha256 verified before unpickling."""
    import joblib

    version = resolve(registry, alias, version)
    registry.verify(version)
    metadata = registry.metadata(version)
    path = registry.version_dir(version) / metadata.get("model_file", "model.joblib")
    if sha256_file(path) != metadata["model_sha256"]:
        raise RegistryError(f"v{version}: {path.name} does not match its metadata's model_sha256; not loading it")
    return joblib.load(path), metadata, version


def features_for_serving(model, metadata: dict, batch: pd.DataFrame):
    """The service's feature matrix: the raw columns named in the metadata, in that order."""
    missing = [c for c in metadata["features"] if c not in batch.columns]
    if missing:
        raise ValueError(f"the batch lacks the model's feature column(s) {missing}")
    X = batch[metadata["features"]].astype(float)
    return X if hasattr(model, "feature_names_in_") else X.to_numpy()


def score(model, metadata: dict, batch: pd.DataFrame) -> np.ndarray:
    """Predicted labels (0/1) for a batch, the way the service computes them."""
    return np.asarray(model.predict(features_for_serving(model, metadata, batch))).astype(int)


def record_golden(model_dir, batch: pd.DataFrame, rows: int = 50) -> Path:
    """Write golden.csv into a model folder (before registering it): the first `rows` rows'
    features and the predictions the artifact gives for them now."""
    import joblib

    model_dir = Path(model_dir)
    metadata = json.loads((model_dir / "metadata.json").read_text(encoding="utf-8"))
    if sha256_file(model_dir / "model.joblib") != metadata["model_sha256"]:
        raise RegistryError(f"{model_dir / 'model.joblib'} does not match its metadata's model_sha256")
    model = joblib.load(model_dir / "model.joblib")
    golden = batch.head(rows)[metadata["features"]].copy()
    golden["expected"] = score(model, metadata, golden)
    golden.to_csv(model_dir / GOLDEN_FILE, index=False, lineterminator="\n")
    return model_dir / GOLDEN_FILE


def golden_batch_check(registry: Registry, version: int, expected: np.ndarray | None = None,
                       batch: pd.DataFrame | None = None) -> dict:
    """Score the version's golden batch through the serving path; passed only if all agree."""
    model, metadata, version = load(registry, version=version)
    if batch is None:
        path = registry.version_dir(version) / GOLDEN_FILE
        if not path.is_file():
            return {"passed": False, "detail": f"v{version} has no {GOLDEN_FILE}: record one before registering"}
        batch = pd.read_csv(path)
    if expected is None:
        expected = batch["expected"].to_numpy()
    served = score(model, metadata, batch)
    agree = int((served == np.asarray(expected)).sum())
    return {"passed": agree == len(served) and len(served) > 0, "agree": agree, "rows": len(served),
            "detail": f"serving path agrees with registration on {agree} of {len(served)} golden rows"}


def f1_rows(y: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """F1 of each row of two (resamples x rows) 0/1 arrays."""
    tp = (y & predicted).sum(axis=1)
    fp = ((1 - y) & predicted).sum(axis=1)
    fn = (y & (1 - predicted)).sum(axis=1)
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


def paired_bootstrap(y, candidate, champion, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> dict:
    """F1(candidate) - F1(champion) on the same rows, with a 95 % paired bootstrap interval."""
    y, candidate, champion = (np.asarray(a).astype(int) for a in (y, candidate, champion))
    index = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    deltas = f1_rows(y[index], candidate[index]) - f1_rows(y[index], champion[index])
    low, high = np.percentile(deltas, [2.5, 97.5])
    observed = float(f1_rows(y[None, :], candidate[None, :])[0] - f1_rows(y[None, :], champion[None, :])[0])
    return {"delta": observed, "low": float(low), "high": float(high), "rows": len(y), "resamples": n_boot}


def held_out_rows(metadata: dict, data: pd.DataFrame) -> pd.DataFrame:
    """The rows the version was evaluated on: its training data split as its metadata records."""
    from sklearn.model_selection import train_test_split

    split = metadata["split"]
    stratify = data[metadata["label"]] if split.get("stratify") else None
    return train_test_split(data, test_size=split["test_size"], random_state=split["random_state"],
                            stratify=stratify)[1]


def compare(registry: Registry, version: int, data_source, margin: float = MARGIN, alias: str = "champion") -> dict:
    """Candidate vs current @champion on the candidate's held-out rows (data found in
    data_source by name and checked by sha256), with the paired bootstrap rule of lesson 03."""
    model, metadata, version = load(registry, version=version)
    record = metadata["data"]
    path = Path(data_source) / record["file"]
    if not path.is_file():
        raise RegistryError(f"the training data {record['file']} is not in {data_source}")
    if sha256_file(path) != record["sha256"]:
        raise RegistryError(f"{path.name} has changed since v{version} was trained on it (sha256 differs)")
    rows = held_out_rows(metadata, pd.read_csv(path))
    y = rows[metadata["label"]].to_numpy()
    champion_version = registry.get_version_by_alias(alias)
    if champion_version is None:
        return {"passed": True, "detail": f"no @{alias} yet: nothing to compare with"}
    if champion_version == version:
        return {"passed": False, "detail": f"v{version} is already @{alias}"}
    champion, champion_metadata, _ = load(registry, version=champion_version)
    result = paired_bootstrap(y, score(model, metadata, rows), score(champion, champion_metadata, rows))
    passed = result["low"] >= -margin
    detail = (f"F1 v{version} - v{champion_version} = {result['delta']:+.4f} on the same {result['rows']} held-out "
              f"rows of {record['file']}, 95 % paired bootstrap interval [{result['low']:+.4f}, {result['high']:+.4f}] "
              f"({result['resamples']} resamples): {'not worse' if passed else 'may be worse'} than "
              f"@{alias} by more than {margin}")
    return {"passed": passed, "detail": detail, **result, "against": champion_version}


def _merge_evidence(path: Path | None, name: str, result: dict):
    if path is None:
        return
    evidence = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    evidence[name] = result
    path.write_text(json.dumps(evidence, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="serve.py", description="Score and check registered models.",
                                     epilog="exit codes: 0 passed, 1 a check failed, 2 bad input or usage")
    parser.add_argument("--registry", type=Path, help="the registry's root folder")
    parser.add_argument("--name", default=DEFAULT_NAME)
    sub = parser.add_subparsers(dest="command", required=True)
    sco = sub.add_parser("score", help="predict a batch with a registered model")
    which = sco.add_mutually_exclusive_group()
    which.add_argument("--alias", default=None)
    which.add_argument("--version", type=int, default=None)
    sco.add_argument("--batch", type=Path, required=True)
    rec = sub.add_parser("record-golden", help="write golden.csv into a model folder before registering it")
    rec.add_argument("model_dir", type=Path)
    rec.add_argument("--batch", type=Path, required=True)
    rec.add_argument("--rows", type=int, default=50)
    gol = sub.add_parser("golden-check", help="exit 1 unless the serving path reproduces the golden batch")
    gol.add_argument("--version", type=int, required=True)
    gol.add_argument("--evidence", type=Path, default=None)
    both = sub.add_parser("check", help="golden-check and compare in one process (what the promote job runs)")
    both.add_argument("--version", type=int, required=True)
    both.add_argument("--data-source", type=Path, required=True)
    both.add_argument("--margin", type=float, default=MARGIN)
    both.add_argument("--evidence", type=Path, default=None)
    com = sub.add_parser("compare", help="exit 1 if the version may be worse than @champion (paired bootstrap)")
    com.add_argument("--version", type=int, required=True)
    com.add_argument("--data-source", type=Path, required=True)
    com.add_argument("--margin", type=float, default=MARGIN)
    com.add_argument("--evidence", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command != "record-golden" and args.registry is None:
        parser.error(f"{args.command} needs --registry")
    registry = Registry(args.registry, args.name) if args.registry else None
    try:
        if args.command == "score":
            model, metadata, version = load(registry, alias=args.alias, version=args.version)
            predicted = score(model, metadata, pd.read_csv(args.batch))
            print(f"v{version}: {len(predicted)} predictions, positive rate {predicted.mean():.4f}")
            return 0
        if args.command == "record-golden":
            path = record_golden(args.model_dir, pd.read_csv(args.batch), args.rows)
            print(f"recorded {args.rows} golden rows in {path.name}")
            return 0
        results = {}
        if args.command in ("golden-check", "check"):
            results["golden_batch"] = golden_batch_check(registry, args.version)
        if args.command in ("compare", "check"):
            results["vs_champion"] = compare(registry, args.version, args.data_source, args.margin)
    except (RegistryError, OSError, ValueError, KeyError) as err:
        print(f"serve: {err}", file=sys.stderr)
        return 2
    for name, result in results.items():
        _merge_evidence(args.evidence, name, result)
        print(f"{name}: {'passed' if result['passed'] else 'FAILED'}: {result['detail']}",
              file=sys.stdout if result["passed"] else sys.stderr)
    return 0 if all(result["passed"] for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
