"""The round store's files: written atomically, checked against their manifest."""

import os

import pytest

from soft_lightning.rounds.store import RoundStore


def test_round_store_checksums_the_data(tmp_path):
    store = RoundStore(tmp_path)
    store.write_round(0, [{"id": "a", "response": "x"}], {"prompts": 1})
    assert store.is_generated(0) and store.read_manifest(0)["round"] == 0
    with open(store.data_path(0), "a") as fh:
        fh.write('{"id": "b"}\n')
    assert not store.is_generated(0), "a data file that no longer matches its manifest must not count"
    assert not list(tmp_path.glob("round_0/.*")), "temp files must not be left behind"


def test_adapter_save_failure_leaves_no_adapter(tmp_path):
    store = RoundStore(tmp_path)

    def broken_save(directory):
        (directory / "adapter_config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.save_adapter(0, broken_save)
    assert not store.adapter_dir(0).exists() and not list((tmp_path / "round_0").iterdir())


def test_a_file_system_without_locks_warns_and_the_run_goes_on(tmp_path, monkeypatch):
    """Some NFS and Lustre mounts refuse flock with ENOLCK (an OSError, not the BlockingIOError of a
    lock held elsewhere): the run starts, with a warning that says what is not guarded. Faked here
    (every file system of this machine locks), at the one call the kernel would refuse."""
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    store = RoundStore(tmp_path / "out")
    with pytest.warns(UserWarning, match="is on a file system without file locks .No locks available., so nothing"):
        store.claim({"version": 3, "settings": {}, "paths": {}}, resuming=False)
    store.release()
