"""Reading user record files (JSONL, JSON, Parquet) with errors that name the file and line,
writing files and folders atomically, and their checksums."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from soft_lightning.utils.errors import ConfigError

SUFFIXES = (".jsonl", ".json", ".parquet")


def check_file(path: str | Path, key: str) -> Path:
    """The file behind config key `key`, which must exist and have a record suffix."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{key}: file {file} does not exist.")
    if file.suffix not in SUFFIXES:
        raise ConfigError(f"{key}: {file} has suffix '{file.suffix}'; use one of {', '.join(SUFFIXES)}.")
    return file


def read_records(path: str | Path, *, key: str, required: dict[str, type | tuple[type, ...]]) -> list[dict]:
    """Rows of a JSONL/JSON/Parquet file, each checked for the required fields and their types.

    Every row gets `_line` (1-based line or row number) so later checks can point at it.
    `key` is the config key the file came from, quoted in errors.
    """
    file = check_file(path, key)
    rows = list(_iter_rows(file, key))
    for row in rows:
        check_fields(row, required, file, key)
    return rows


def check_fields(row: dict, required: dict[str, type | tuple[type, ...]], file: Path, key: str) -> None:
    where = "row" if file.suffix == ".parquet" else "line"
    for field, types in required.items():
        if field not in row:
            raise ConfigError(f"{key}: {file} {where} {row['_line']}: missing required field '{field}'.")
        if not isinstance(row[field], types) or isinstance(row[field], bool) and types is not bool:
            want = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
            raise ConfigError(
                f"{key}: {file} {where} {row['_line']}: field '{field}' must be {want}, "
                f"got {type(row[field]).__name__}."
            )


def parse_jsonl_line(raw: bytes, line: int, file: Path, key: str) -> dict | None:
    """One JSONL line as a dict with `_line`, or None for a blank line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {file} line {line}: not valid UTF-8; re-encode the file as UTF-8.") from None
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{key}: {file} line {line}: invalid JSON ({err.msg}); fix or remove that line.") from None
    if not isinstance(row, dict):
        raise ConfigError(f"{key}: {file} line {line}: expected a JSON object, got {type(row).__name__}.")
    return {**row, "_line": line}


def _iter_rows(file: Path, key: str):
    if file.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(f"{key}: reading {file} needs pyarrow; `pip install pyarrow`.") from None
        import pyarrow as pa

        try:
            rows = pq.read_table(file).to_pylist()
        except (pa.ArrowException, OSError) as err:
            raise ConfigError(f"{key}: {file} is not a readable Parquet file ({str(err).splitlines()[0]}); "
                              "rewrite it, or give the prompts as JSONL.") from None
        for i, row in enumerate(rows, 1):
            yield {**row, "_line": i}
        return
    if file.suffix == ".json":
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            line = file.read_bytes()[: err.start].count(b"\n") + 1
            raise ConfigError(f"{key}: {file} line {line}: not valid UTF-8; re-encode the file as UTF-8.") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{key}: {file} line {err.lineno}: invalid JSON ({err.msg}).") from None
        if not isinstance(data, list):
            raise ConfigError(f"{key}: {file} must hold a JSON list of objects.")
        for i, row in enumerate(data, 1):
            if not isinstance(row, dict):
                raise ConfigError(f"{key}: {file} item {i} is not a JSON object.")
            yield {**row, "_line": i}
        return
    with file.open("rb") as fh:
        for i, raw in enumerate(fh, 1):
            row = parse_jsonl_line(raw, i, file, key)
            if row is not None:
                yield row


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync it, then rename it over `path`: readers see the
    old file or the new one, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_folder_atomic(target: Path, fill: Callable[[Path], None]) -> Path:
    """`fill(tmp)` writes a new folder beside `target`, which then takes `target`'s place (an
    older one is removed): a failure leaves `target` as it was and no half-written folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def write_json_atomic(path: Path, data: Any) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
