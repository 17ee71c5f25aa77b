"""The study's SQLite database: one row per run, keyed by config hash."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from unikd.config import stored_config
from unikd.errors import ConfigError
from unikd.study.expand import PlannedRun, config_hash

DB_NAME = "study.sqlite"
KINDS = ("teacher", "no-KD", "kd")
STATUSES = ("pending", "running", "done", "failed")


# ---------------------------------------------------------------------------------------------------
# The database
# ---------------------------------------------------------------------------------------------------
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    study       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    task        TEXT NOT NULL,
    seed        INTEGER,
    label       TEXT NOT NULL,
    axes        TEXT NOT NULL,
    config      TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    teacher_id  TEXT,
    output_dir  TEXT,
    status      TEXT NOT NULL DEFAULT 'pending',
    metrics     TEXT,
    score       REAL,
    parameters  INTEGER,
    latency_ms  REAL,
    latency_by_batch TEXT,
    wall_s      REAL,
    error       TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    current     INTEGER NOT NULL DEFAULT 1,
    created_at  TEXT,
    started_at  TEXT,
    finished_at TEXT,
    updated_at  TEXT
);
CREATE INDEX IF NOT EXISTS runs_hash ON runs(config_hash);
CREATE INDEX IF NOT EXISTS runs_study ON runs(study, status);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Version of what config_hash covers; a database written under an older version is re-hashed on open.
# 1: the whole config; 2: a fine-tune's hash leaves out the (unused) KD plan; 3: one class per knowledge
# type (a term's dump holds only its own fields).
HASH_VERSION = 3
JSON_COLUMNS = ("axes", "config", "metrics", "latency_by_batch")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StudyDB:
    """The study's SQLite database (WAL mode). Only the parent process writes to it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=60)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)
        columns = {r[1] for r in self.conn.execute("PRAGMA table_info(runs)")}
        if "latency_by_batch" not in columns:  # a database from before latency per batch size
            self.conn.execute("ALTER TABLE runs ADD COLUMN latency_by_batch TEXT")
        self.conn.commit()
        row = self.conn.execute("SELECT value FROM meta WHERE key='hash_version'").fetchone()
        version = int(row[0]) if row else (1 if self.conn.execute("SELECT 1 FROM runs LIMIT 1").fetchone() else 0)
        if version != HASH_VERSION:
            self._rehash()

    def _rehash(self) -> None:
        """Recompute every row's config hash from its stored config (teachers first, since the other runs
        hash their teacher's hash), so finished runs are still found after the hash scheme changed. A row
        whose config no longer validates keeps its old hash (it will simply not be matched)."""
        root = str(self.path.parent.resolve())
        new_hash: dict[str, str] = {}
        rows = self.conn.execute(
            "SELECT run_id, kind, config, teacher_id FROM runs ORDER BY (kind='teacher') DESC"
        ).fetchall()
        for r in rows:
            try:
                cfg = stored_config(json.loads(r["config"]))
            except Exception:  # noqa: BLE001 - an old, no longer valid config
                continue
            teacher_hash = new_hash.get(r["teacher_id"]) if r["teacher_id"] else None
            new_hash[r["run_id"]] = config_hash(cfg, root, teacher_hash)
            self.conn.execute("UPDATE runs SET config_hash=? WHERE run_id=?", (new_hash[r["run_id"]], r["run_id"]))
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('hash_version', ?)", (str(HASH_VERSION),))
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- reads ----
    def get(self, run_id: str) -> dict | None:
        row = self.conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return _decode(row) if row else None

    def by_hash(self, config_hash: str) -> dict | None:
        row = self.conn.execute(
            "SELECT * FROM runs WHERE config_hash=? ORDER BY (status='done') DESC, updated_at DESC LIMIT 1",
            (config_hash,),
        ).fetchone()
        return _decode(row) if row else None

    def rows(self, study: str | None = None, current_only: bool = True, status: str | None = None) -> list[dict]:
        sql, args = "SELECT * FROM runs WHERE 1=1", []
        if study:
            sql += " AND study=?"
            args.append(study)
        if current_only:
            sql += " AND current=1"
        if status:
            sql += " AND status=?"
            args.append(status)
        sql += " ORDER BY rowid"
        return [_decode(r) for r in self.conn.execute(sql, args).fetchall()]

    # ---- writes ----
    def begin_study(self, study: str, tasks: Iterable[str]) -> None:
        """Rows of an earlier expansion - of this study or of another one run into the same directory -
        stay in the file but leave the report (current=0); this expansion's rows are re-marked by plan().
        ``tasks``: the tasks this expansion plans. A study run in per-task pieces (``-o "tasks=[rte]"``) keeps
        its other tasks' rows in the report: only rows of another study, or of a task planned now, leave it."""
        tasks = sorted(set(tasks))
        marks = ",".join("?" * len(tasks))
        self.conn.execute(f"UPDATE runs SET current=0 WHERE study != ? OR task IN ({marks})", [study, *tasks])
        self.conn.commit()

    def plan(self, run: PlannedRun) -> dict:
        """Insert a planned run (or re-attach the row with the same config hash); returns the row."""
        existing = self.by_hash(run.config_hash)
        now = _now()
        if existing is not None:
            run.run_id = existing["run_id"]
            here = run.output_dir  # where the study's root puts this run now
            if existing.get("output_dir") and _still_there(Path(existing["output_dir"]), here):
                run.config = run.config.model_copy(update={"output_dir": existing["output_dir"]})
            else:  # a moved study, or its database alone (a later session resumes from it): the row moves here
                run.config = run.config.model_copy(update={"output_dir": str(here)})
                self.conn.execute(
                    "UPDATE runs SET output_dir=?, config=? WHERE run_id=?",
                    (str(here), json.dumps(run.config.model_dump(mode="json")), run.run_id),
                )
            self.conn.execute(
                "UPDATE runs SET study=?, kind=?, label=?, axes=?, current=1, teacher_id=?, "
                "updated_at=? WHERE run_id=?",
                (run.study, run.kind, run.label, json.dumps(run.axes), run.teacher_id, now, run.run_id),
            )
        else:
            self.conn.execute(
                "INSERT INTO runs (run_id, study, kind, task, seed, label, axes, config, config_hash, teacher_id, "
                "output_dir, status, current, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,1,?,?)",
                (
                    run.run_id,
                    run.study,
                    run.kind,
                    run.task,
                    run.seed,
                    run.label,
                    json.dumps(run.axes),
                    json.dumps(run.config.model_dump(mode="json")),
                    run.config_hash,
                    run.teacher_id,
                    str(run.output_dir),
                    "pending",
                    now,
                    now,
                ),
            )
        self.conn.commit()
        return self.get(run.run_id)

    def mark_running(self, run_id: str) -> None:
        now = _now()
        self.conn.execute(
            "UPDATE runs SET status='running', started_at=?, updated_at=?, error=NULL, "
            "attempts=attempts+1 WHERE run_id=?",
            (now, now, run_id),
        )
        self.conn.commit()

    def record(self, run_id: str, outcome: dict) -> None:
        now = _now()
        self.conn.execute(
            "UPDATE runs SET status=?, metrics=?, score=?, parameters=?, latency_ms=?, latency_by_batch=?, wall_s=?, "
            "error=?, finished_at=?, updated_at=? WHERE run_id=?",
            (
                outcome["status"],
                json.dumps(outcome.get("metrics"), default=float) if outcome.get("metrics") is not None else None,
                outcome.get("score"),
                outcome.get("parameters"),
                outcome.get("latency_ms"),
                json.dumps(outcome["latency_by_batch"]) if outcome.get("latency_by_batch") else None,
                outcome.get("wall_s"),
                outcome.get("error"),
                now,
                now,
                run_id,
            ),
        )
        self.conn.commit()

    def set_latency(
        self, run_id: str, latency_ms: float | None, error: str | None = None, by_batch: dict | None = None
    ) -> None:
        self.conn.execute(
            "UPDATE runs SET latency_ms=?, latency_by_batch=?, error=COALESCE(?, error), updated_at=? WHERE run_id=?",
            (latency_ms, json.dumps(by_batch) if by_batch else None, error, _now(), run_id),
        )
        self.conn.commit()


def _still_there(recorded: Path, here: Path) -> bool:
    """Keep a row's recorded directory unless the study moved: it is gone, or the run is found where the study's
    root now puts it. The hash covers paths relative to the root, so the row's config is rewritten for the new
    root (its teacher path, its shared teacher-output store) as well."""
    return recorded == here or (recorded.exists() and not here.exists())


def _decode(row: sqlite3.Row) -> dict:
    out = dict(row)
    for key in JSON_COLUMNS:
        if out.get(key) is not None:
            out[key] = json.loads(out[key])
    return out


def read_rows(study_dir: str | os.PathLike, current_only: bool = True, status: str | None = None) -> list[dict]:
    """The rows of ``<study_dir>/study.sqlite`` (JSON columns decoded)."""
    path = Path(study_dir) / DB_NAME
    if not path.is_file():
        raise ConfigError("study_dir", f"{path} does not exist", "run `unikd study` first, or pass its output_dir")
    with StudyDB(path) as db:
        return db.rows(current_only=current_only, status=status)
