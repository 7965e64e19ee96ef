"""Small input files the tests write."""

import json


def pool_file(tmp_path, rows, name="pool.jsonl") -> str:
    """A prompt pool (JSONL) of `rows`."""
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
