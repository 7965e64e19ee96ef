"""The prompt pool: read lazily, cleaned as rounds draw from it.

A JSONL pool costs an index of where each line starts (a few 8-byte numbers a line) and a
seeded shuffle of that index; a line is parsed, checked and cleaned only when a round needs it. Splitting a
million-prompt file into rounds therefore takes time and memory in proportion to the prompts
the rounds use, plus one scan for line starts. JSON and Parquet pools are read whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from soft_lightning.utils.errors import ConfigError
from soft_lightning.utils.files import check_fields, check_file, parse_jsonl_line, read_records

KEY = "data.prompts"


@dataclass
class PoolStats:
    """What happened to the rows drawn from the pool so far (`rows` is the file's size)."""

    rows: int = 0
    examined: int = 0
    duplicates: int = 0
    too_long: int = 0
    empty: int = 0
    kept: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def line_starts(file: Path, chunk_bytes: int = 1 << 23) -> tuple[np.ndarray, np.ndarray]:
    """Byte offset of every line of `file` (a last line without a newline included), and the
    indices of the lines that are not empty."""
    starts, base, last = [np.zeros(1, dtype=np.int64)], 0, b""
    with file.open("rb") as fh:
        while chunk := fh.read(chunk_bytes):
            newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 0x0A)
            starts.append(newlines.astype(np.int64) + base + 1)
            base += len(chunk)
            last = chunk[-1:]
    offsets = np.concatenate(starts)
    offsets = offsets[:-1] if last == b"\n" or base == 0 else offsets
    lengths = np.diff(offsets, append=base)  # newline included
    return offsets, np.flatnonzero(lengths > 1)


class PromptPool:
    """Rows of {prompt, id?} in a seeded random order; `take(n)` cleans rows in that order until
    n prompts are kept (empty, duplicate and too-long prompts are dropped and counted)."""

    def __init__(self, path: str | Path, seed: int):
        self.file = check_file(path, KEY)
        if self.file.suffix == ".jsonl":
            self._rows = None
            self._starts, lines = line_starts(self.file)
        else:
            self._rows = read_records(self.file, key=KEY, required={"prompt": str})
            lines = np.arange(len(self._rows))
        size = len(lines)
        if size == 0:
            raise ConfigError(f"{KEY}: {self.file} holds no prompts.")
        self._order = lines[np.random.default_rng(seed).permutation(size)]
        self._cursor = 0
        self._texts: set[str] = set()
        self._ids: set[str] = set()
        self.kept: list[dict] = []
        self.stats = PoolStats(rows=size)

    def __len__(self) -> int:
        return len(self._order)

    @property
    def exhausted(self) -> bool:
        return self._cursor >= len(self._order)

    def take(self, count: int, too_long: Callable[[str], bool]) -> list[dict]:
        """Clean rows until `count` prompts are kept (or the pool runs out); returns all kept."""
        with self.file.open("rb") as fh:
            while len(self.kept) < count and not self.exhausted:
                row = self._row(int(self._order[self._cursor]), fh)
                self._cursor += 1
                if row is not None:
                    self._keep(row, too_long)
        self.stats.kept = len(self.kept)
        if not self.kept and self.exhausted:
            raise ConfigError(f"{KEY}: no usable prompt in {self.file} ({self.stats.as_dict()}).")
        return self.kept

    def check_rows(self) -> None:
        """Parse and check every row now (for a pool small enough that it will be read whole)."""
        ids: set[str] = set()
        with self.file.open("rb") as fh:
            for index in self._order:
                if (row := self._row(int(index), fh)) is not None:
                    self._new_id(row, ids)

    def _row(self, index: int, fh) -> dict | None:
        if self._rows is not None:
            row = self._rows[index]
        else:
            fh.seek(int(self._starts[index]))
            row = parse_jsonl_line(fh.readline(), index + 1, self.file, KEY)
            if row is None:
                return None
            check_fields(row, {"prompt": str}, self.file, KEY)
        if "harmful" in row and not isinstance(row["harmful"], bool):
            raise ConfigError(f"{KEY}: {self.file} line {row['_line']}: field 'harmful' must be true or false.")
        if "id" in row and not isinstance(row["id"], (str, int)):
            raise ConfigError(f"{KEY}: {self.file} line {row['_line']}: field 'id' must be a string or integer.")
        return row

    def _new_id(self, row: dict, seen: set[str]) -> str:
        id_ = str(row.get("id", f"line-{row['_line']}"))
        if id_ in seen:
            raise ConfigError(f"{KEY}: {self.file} line {row['_line']}: duplicate id {id_!r}; ids must be unique.")
        seen.add(id_)
        return id_

    def _keep(self, row: dict, too_long: Callable[[str], bool]) -> None:
        self.stats.examined += 1
        id_ = self._new_id(row, self._ids)
        text = row["prompt"].strip()
        key = re.sub(r"\s+", " ", text).lower()
        if not text:
            self.stats.empty += 1
        elif key in self._texts:
            self.stats.duplicates += 1
        elif too_long(text):
            self.stats.too_long += 1
        else:
            self._texts.add(key)
            label = {"harmful": row["harmful"]} if "harmful" in row else {}  # for the principle checks
            self.kept.append({"id": id_, "prompt": text, **label})
