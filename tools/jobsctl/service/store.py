"""SQLite persistence of the local Jobs service: the store is the truth.

One connection per process, guarded by the model's lock; WAL mode so that ``jobsctl thing
create`` in another process can write while ``serve`` runs. Every public model operation is
one transaction, so a crash or a stop between operations loses nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS things (
  name TEXT PRIMARY KEY, thing_id TEXT NOT NULL, attributes TEXT NOT NULL,
  version INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS groups (
  name TEXT PRIMARY KEY, group_id TEXT NOT NULL, description TEXT, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS memberships (
  group_name TEXT NOT NULL, thing TEXT NOT NULL, PRIMARY KEY (group_name, thing));
CREATE TABLE IF NOT EXISTS certificates (
  cert_id TEXT PRIMARY KEY, thing TEXT NOT NULL, pem TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
  job_id TEXT PRIMARY KEY, document TEXT NOT NULL, document_source TEXT,
  description TEXT, targets TEXT NOT NULL, target_selection TEXT NOT NULL,
  status TEXT NOT NULL, force_canceled INTEGER NOT NULL DEFAULT 0, reason_code TEXT,
  comment TEXT, presigned TEXT, rollout TEXT, document_parameters TEXT, timeout_config TEXT,
  created_at REAL NOT NULL, updated_at REAL NOT NULL, completed_at REAL);
CREATE TABLE IF NOT EXISTS executions (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL, thing TEXT NOT NULL, execution_number INTEGER NOT NULL,
  status TEXT NOT NULL, version INTEGER NOT NULL, status_details TEXT NOT NULL,
  queued_at REAL NOT NULL, started_at REAL, updated_at REAL NOT NULL,
  step_deadline REAL, job_deadline REAL, force_canceled INTEGER NOT NULL DEFAULT 0,
  UNIQUE (job_id, thing));
CREATE INDEX IF NOT EXISTS executions_thing ON executions (thing, status);
CREATE INDEX IF NOT EXISTS executions_job_status ON executions (job_id, status);
-- The timer's look-ups (model.tick: what is due, when is the next deadline) by index, its
-- cost growing with what has a deadline, not with the fleet; partial, so that an execution
-- without a deadline (most) costs no index upkeep when its status changes.
CREATE INDEX IF NOT EXISTS executions_step_deadline ON executions (step_deadline)
  WHERE status = 'IN_PROGRESS' AND step_deadline IS NOT NULL;
CREATE INDEX IF NOT EXISTS executions_job_deadline ON executions (job_deadline)
  WHERE status = 'IN_PROGRESS' AND job_deadline IS NOT NULL;
CREATE TABLE IF NOT EXISTS pending_targets (
  job_id TEXT NOT NULL, thing TEXT NOT NULL, release_at REAL NOT NULL,
  PRIMARY KEY (job_id, thing));
CREATE INDEX IF NOT EXISTS pending_targets_release ON pending_targets (release_at);
CREATE TABLE IF NOT EXISTS execution_history (
  job_id TEXT NOT NULL, thing TEXT NOT NULL, execution_number INTEGER NOT NULL,
  row TEXT NOT NULL, PRIMARY KEY (job_id, thing, execution_number));
CREATE TABLE IF NOT EXISTS job_templates (
  template_id TEXT PRIMARY KEY, body TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tags (
  arn TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (arn, key));
"""
# Columns added after the first release: (table, column, declaration), added to older stores.
_ADDED_COLUMNS = (("jobs", "extra", "TEXT"),)


class Store:
    """The SQLite database ``jobs.sqlite3`` of a state dir."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=30
        )
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=30000")
        self.db.executescript(_SCHEMA)
        for table, column, decl in _ADDED_COLUMNS:
            have = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self.db.close()
