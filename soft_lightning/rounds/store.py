"""The round store: the single source of truth between phases and across restarts.

    <out_dir>/plan.json                the run plan: identity and each round's prompts (plan.py)
    <out_dir>/round_<r>/data.jsonl     one record per prompt of round r (kept and dropped)
    <out_dir>/round_<r>/manifest.json  counts, sampler settings, seeds, timings, sha256 of data.jsonl;
                                       `training` once the round is trained
    <out_dir>/round_<r>/adapter/       the PEFT adapter after training on round r
    <out_dir>/round_<r>/zero_shot.json its zero-shot answers to held-out prompts, checked against the
                                       principles (base_zero_shot.json: the base model's)
    <out_dir>/best/adapter/, best.json the best round's adapter, and which round and why
    <out_dir>/checkpoints/             Lightning checkpoints, `last-round-end.ckpt` among them
    <out_dir>/stop                     a rank was told to stop (SIGTERM): the others stop generating
                                       after their chunk in hand; removed when the run starts again

Every file is written to a temp name and renamed into place, and the manifest comes last: a
round counts as generated only when its manifest exists and its checksum matches the data, and
as trained only when its manifest has `training` (written after the adapter).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
import warnings
from pathlib import Path
from typing import Any

from soft_lightning.rounds.plan import RunPlan, identity_changes
from soft_lightning.utils.errors import ConfigError
from soft_lightning.utils.files import sha256_file, write_bytes_atomic, write_folder_atomic, write_json_atomic


class RoundStore:
    def __init__(self, out_dir: str | Path):
        self.root = Path(out_dir)

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    @property
    def round_end_checkpoint(self) -> Path:
        """Written at the end of every round, before the next is generated ("last" in its name so
        `--ckpt_path last` finds it beside ModelCheckpoint's)."""
        return self.root / "checkpoints" / "last-round-end.ckpt"

    @property
    def preempted_checkpoint(self) -> Path:
        """Written when a SIGTERM stops the run (a preemption, SLURM's time limit)."""
        return self.root / "checkpoints" / "last-preempted.ckpt"

    def read_plan(self) -> RunPlan | None:
        return RunPlan.read(self.plan_path) if self.plan_path.is_file() else None

    @classmethod
    def open_run(cls, out_dir: str | Path, command: str) -> tuple[RoundStore, RunPlan]:
        """A run's store and plan, for a command on the run (export, evaluate, report); a folder
        that holds no run is refused, naming the command."""
        store = cls(out_dir)
        plan = store.read_plan()
        if plan is None:
            raise ConfigError(f"{command}: {out_dir} holds no plan.json; give a run's out_dir (bootstrap.out_dir).")
        return store, plan

    def claim(self, identity: dict, resuming: bool, lock: bool = True) -> None:
        """Claim out_dir for this run: refuse it while another process holds it, refuse a fresh
        run over another run's store, and a resume that is not the same run. The lock (held by the
        run's first rank) lasts as long as this process: the kernel drops it however the process
        ends, so a killed run never blocks its own resume."""
        if lock:
            self._lock()
            self.stop_path.unlink(missing_ok=True)  # a stop from an earlier attempt is over
        try:
            self.check_run(identity, resuming)
        except ConfigError:
            self.release()
            raise

    @property
    def stop_path(self) -> Path:
        return self.root / "stop"

    def request_stop(self, reason: str) -> None:
        """Tell every rank to stop generating after its chunk in hand (a file: ranks generate
        without meeting, on one node or many, and read it between chunks)."""
        if not self.stop_path.exists():
            write_bytes_atomic(self.stop_path, (reason + "\n").encode("utf-8"))

    def stop_requested(self) -> bool:
        return self.stop_path.exists()

    def release(self) -> None:
        """Give out_dir up (the end of the run; the kernel does it for a process that dies)."""
        handle, self._lock_handle = getattr(self, "_lock_handle", None), None
        if handle is not None:
            handle.close()

    def check_run(self, identity: dict, resuming: bool) -> None:
        """Refuse a fresh run over another run's store, and a resume that is not the same run."""
        plan = self.read_plan()
        if plan is None:
            return
        if resuming is False:
            raise ConfigError(
                f"bootstrap.out_dir: {self.root} already holds a run; resume it with --ckpt_path last, "
                "or choose another --bootstrap.out_dir."
            )
        if plan.identity.get("version") != identity["version"]:
            raise ConfigError(
                f"bootstrap.out_dir: {self.root} was started by an earlier soft_lightning whose plan.json records "
                "fewer settings, so this version cannot check that the resume is the same run; finish it with the "
                "version that started it, or choose another --bootstrap.out_dir."
            )
        if changed := identity_changes(plan.identity, identity):
            raise ConfigError(
                f"bootstrap.out_dir: {self.root} holds a different run ({', '.join(changed)} changed since it "
                "started); resume with the original settings or choose another --bootstrap.out_dir."
            )

    def _lock(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / "run.lock", "a+")  # held open for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(
                f"bootstrap.out_dir: {self.root} is in use by {holder}; wait for that run to end (or stop it), "
                "or choose another --bootstrap.out_dir."
            ) from None
        except OSError as err:  # a file system without locks (some NFS and Lustre mounts): ENOLCK, ENOTSUP
            # (only the run's first rank takes the lock: a plain warning, not Lightning's rank-zero one)
            warnings.warn(f"bootstrap.out_dir: {self.root} is on a file system without file locks ({err.strerror}), "
                          "so nothing stops a second run from writing there at the same time; start one run per "
                          "out_dir, or use a local disk.", stacklevel=2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"the run on host {socket.gethostname()}, pid {os.getpid()}\n")
        handle.flush()
        self._lock_handle = handle

    @property
    def synthesized_path(self) -> Path:
        """The prompts the model wrote, with provenance: a pool file another run can use."""
        return self.root / "synthesized_prompts.jsonl"

    def write_plan(self, plan: RunPlan) -> None:
        """The plan, after the pool file of its synthesized prompts (derived from it)."""
        if synthesized := plan.synthesized_prompts():
            write_bytes_atomic(self.synthesized_path, "".join(json.dumps(p, ensure_ascii=False) + "\n"
                                                              for p in synthesized).encode("utf-8"))
        plan.write(self.plan_path)

    def round_dir(self, r: int) -> Path:
        return self.root / f"round_{r}"

    def data_path(self, r: int) -> Path:
        return self.round_dir(r) / "data.jsonl"

    def manifest_path(self, r: int) -> Path:
        return self.round_dir(r) / "manifest.json"

    def adapter_dir(self, r: int) -> Path:
        return self.round_dir(r) / "adapter"

    def write_round(self, r: int, records: list[dict], manifest: dict[str, Any]) -> dict[str, Any]:
        """Write data.jsonl, then the manifest (with the data's sha256) last; returns the manifest."""
        path = self.data_path(r)
        write_bytes_atomic(path, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records).encode("utf-8"))
        manifest = {**manifest, "round": r, "data_sha256": sha256_file(path)}
        write_json_atomic(self.manifest_path(r), manifest)
        return manifest

    def lm_eval_path(self, r: int | str) -> Path:
        """`python -m soft_lightning evaluate`'s results for round r (`base`: the base model)."""
        return self.root / "base_lm_eval.json" if r == "base" else self.round_dir(r) / "lm_eval.json"

    def principles_eval_path(self, r: int | str) -> Path:
        """`evaluate --tasks principles`' results for round r (`base`: the base model's)."""
        return self.root / "base_principles_eval.json" if r == "base" else self.round_dir(r) / "principles_eval.json"

    def zero_shot_path(self, r: int | str) -> Path:
        """Round r's zero-shot answers to the held-out prompts and their principle checks (`base`:
        the base model's, measured when the run starts)."""
        return self.root / "base_zero_shot.json" if r == "base" else self.round_dir(r) / "zero_shot.json"

    def write_zero_shot(self, r: int | str, result: dict) -> None:
        if r != "base":
            self.round_dir(r).mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.zero_shot_path(r), result)

    def read_zero_shot(self, r: int | str) -> dict | None:
        path = self.zero_shot_path(r)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def shard_path(self, r: int, rank: int, world: int) -> Path:
        """Where one rank appends its share of round r while generating (data.jsonl alone)."""
        return self.data_path(r) if world == 1 else self.round_dir(r) / f"data.rank{rank}.jsonl"

    def append_records(self, path: Path, records: list[dict]) -> None:
        """Append a chunk of freshly generated records; each line is complete and on disk
        before this returns, so a kill loses at most the chunk in flight."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))
            fh.flush()
            os.fsync(fh.fileno())

    def partial_records(self, path: Path, repair: bool = True) -> list[dict]:
        """Records of an unfinished round (or shard), for resuming it. A torn last line (the
        process died mid-write) is not returned, and cut off the file by its writer (`repair`)."""
        if not path.is_file():
            return []
        records, good_bytes = [], 0
        with open(path, "rb") as fh:
            for raw in fh:
                try:
                    if not raw.endswith(b"\n"):
                        raise ValueError("no newline")
                    records.append(json.loads(raw))
                except ValueError:
                    break
                good_bytes += len(raw)
        if repair and good_bytes < path.stat().st_size:
            with open(path, "r+b") as fh:
                fh.truncate(good_bytes)
        return records

    def is_generated(self, r: int) -> bool:
        manifest = self.read_manifest(r)
        return manifest is not None and manifest.get("data_sha256") == sha256_file(self.data_path(r))

    def is_trained(self, r: int) -> bool:
        manifest = self.read_manifest(r)
        adapter = self.adapter_dir(r) / "adapter_config.json"
        return manifest is not None and "training" in manifest and adapter.is_file()

    def finished_rounds(self) -> list[int]:
        """Rounds 0, 1, ... that are trained, up to the first that is not."""
        r = 0
        while self.is_trained(r):
            r += 1
        return list(range(r))

    def read_manifest(self, r: int) -> dict[str, Any] | None:
        path = self.manifest_path(r)
        if not path.is_file() or not self.data_path(r).is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))

    def read_records(self, r: int) -> list[dict]:
        with open(self.data_path(r), encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def update_manifest(self, r: int, **fields: Any) -> None:
        manifest = self.read_manifest(r) or {}
        write_json_atomic(self.manifest_path(r), {**manifest, **fields})

    def save_adapter(self, r: int, save_fn) -> Path:
        """Call `save_fn(tmp_dir)` and rename the result to round_<r>/adapter atomically."""
        return write_folder_atomic(self.adapter_dir(r), save_fn)

    def round_named(self, name: str, option: str) -> int:
        """`best`, `last` or a trained round's number, as a round number; `option` names the
        command-line option in the error."""
        trained = self.finished_rounds()
        if name == "best" and self.best_round() is None:
            raise ConfigError(f"{option} best: {self.root} has no best round yet (best/best.json).")
        if name == "last" and not trained:
            raise ConfigError(f"{option} last: {self.root} has no trained round yet.")
        r = {"best": self.best_round(), "last": trained[-1] if trained else None}.get(name)
        if r is None and not (name.isdigit() and int(name) in trained):
            raise ConfigError(f"{option}: {name!r} is neither `best`, `last` nor a trained round ({trained}).")
        return int(name) if r is None else r

    def best_round(self) -> int | None:
        path = self.root / "best" / "best.json"
        return json.loads(path.read_text(encoding="utf-8"))["round"] if path.is_file() else None

    def save_best(self, r: int, note: dict[str, Any]) -> Path:
        """Copy round r's adapter to best/adapter with best/best.json, replacing any older best."""
        target = self.root / "best"
        tmp = Path(tempfile.mkdtemp(prefix=".best.", dir=self.root))
        try:
            shutil.copytree(self.adapter_dir(r), tmp / "adapter")
            write_json_atomic(tmp / "best.json", note)
            old = None
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=".best-old.", dir=self.root))
                os.replace(target, old / "best")
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target
