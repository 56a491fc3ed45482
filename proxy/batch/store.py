"""`BatchStore`: files, batches and each batch line's state in one SQLite database.

Why SQLite: a batch must survive a sidecar restart with nothing lost or answered twice,
and a pod's volume is all the durability a sidecar has. Every change is one short
transaction; a line moves pending -> running -> done|failed, and its result is written
in the same transaction that marks it done, so a crash can leave a line `running` (reset
to `pending` on start and run again) but never with a result recorded twice. The output
and error files are built from the lines once a batch ends.

All database work runs on one dedicated thread (the connection is used by no other),
so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, purpose TEXT NOT NULL, filename TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, content BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, endpoint TEXT NOT NULL, input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
    in_progress_at INTEGER, finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER, expired_at INTEGER,
    cancelling_at INTEGER, cancelled_at INTEGER, output_file_id TEXT, error_file_id TEXT, metadata TEXT,
    errors TEXT);
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL, line INTEGER NOT NULL, custom_id TEXT NOT NULL, body TEXT NOT NULL,
    state TEXT NOT NULL, result TEXT, PRIMARY KEY (batch_id, line));
CREATE INDEX IF NOT EXISTS lines_pending ON lines (state, batch_id, line);
"""
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


@dataclass(frozen=True, slots=True)
class PendingLine:
    batch_id: str
    line: int
    custom_id: str
    body: dict[str, Any]
    endpoint: str
    tenant: str


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class BatchStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="thrifty-batch-db")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged result survives power loss
            self._db.executescript(_SCHEMA)
        with self._db:  # one transaction per call
            self._db.execute("BEGIN IMMEDIATE")
            return fn(self._db)

    async def open(self) -> int:
        """Create the schema; put lines a crash left `running` back to `pending`. Returns how many."""
        return await self._run(lambda db: db.execute("UPDATE lines SET state='pending' WHERE state='running'").rowcount)

    def close(self) -> None:
        def _close(_: Any) -> None:
            if self._db is not None:
                self._db.close()
                self._db = None
        try:
            self._thread.submit(_close, None).result(timeout=10)
        finally:
            self._thread.shutdown(wait=True)

    # ---------------------------------------------------------------- files
    async def add_file(self, tenant: str, purpose: str, filename: str, content: bytes) -> dict[str, Any]:
        file_id, now = new_id("file"), int(time.time())
        await self._run(lambda db: db.execute(
            "INSERT INTO files VALUES (?,?,?,?,?,?,?)", (file_id, tenant, purpose, filename, len(content), now, content)))
        return file_object(file_id, purpose, filename, len(content), now)

    async def file(self, tenant: str, file_id: str) -> dict[str, Any] | None:
        row = await self._run(lambda db: db.execute(
            "SELECT id, purpose, filename, bytes, created_at FROM files WHERE id=? AND tenant=?", (file_id, tenant)).fetchone())
        return file_object(*row) if row else None

    async def file_content(self, tenant: str, file_id: str) -> bytes | None:
        row = await self._run(lambda db: db.execute(
            "SELECT content FROM files WHERE id=? AND tenant=?", (file_id, tenant)).fetchone())
        return bytes(row[0]) if row else None

    async def files(self, tenant: str, purpose: str | None, limit: int) -> list[dict[str, Any]]:
        rows = await self._run(lambda db: db.execute(
            "SELECT id, purpose, filename, bytes, created_at FROM files WHERE tenant=? AND (? IS NULL OR purpose=?) "
            "ORDER BY created_at DESC, id LIMIT ?", (tenant, purpose, purpose, limit)).fetchall())
        return [file_object(*r) for r in rows]

    async def delete_file(self, tenant: str, file_id: str) -> bool:
        return await self._run(lambda db: db.execute(
            "DELETE FROM files WHERE id=? AND tenant=?", (file_id, tenant)).rowcount) > 0

    # ---------------------------------------------------------------- batches
    async def create_batch(self, tenant: str, endpoint: str, input_file_id: str, window_s: int, window: str,
                           metadata: dict[str, str] | None, lines: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        batch_id, now = new_id("batch"), int(time.time())

        def create(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO batches (id, tenant, endpoint, input_file_id, completion_window, status, created_at, "
                       "expires_at, in_progress_at, metadata) VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (batch_id, tenant, endpoint, input_file_id, window, "in_progress", now, now + window_s, now,
                        json.dumps(metadata) if metadata is not None else None))
            db.executemany("INSERT INTO lines VALUES (?,?,?,?,?,NULL)",
                           [(batch_id, i, custom_id, json.dumps(body), "pending") for i, (custom_id, body) in enumerate(lines)])

        await self._run(create)
        found = await self.batch(tenant, batch_id)
        assert found is not None
        return found

    async def batch(self, tenant: str | None, batch_id: str) -> dict[str, Any] | None:
        def read(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute("SELECT * FROM batches WHERE id=? AND (? IS NULL OR tenant=?)", (batch_id, tenant, tenant)).fetchone()
            return _batch_object(db, row) if row else None
        return await self._run(read)

    async def batches(self, tenant: str, limit: int, after: str | None) -> list[dict[str, Any]]:
        def read(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute("SELECT * FROM batches WHERE tenant=? ORDER BY created_at DESC, id DESC", (tenant,)).fetchall()
            if after is not None:
                ids = [r[0] for r in rows]
                rows = rows[ids.index(after) + 1:] if after in ids else []
            return [_batch_object(db, r) for r in rows[:limit]]
        return await self._run(read)

    async def cancel(self, tenant: str, batch_id: str) -> dict[str, Any] | None:
        """Stop a batch: no new line starts; lines in flight finish; then it is `cancelled`."""
        now = int(time.time())
        await self._run(lambda db: db.execute(
            "UPDATE batches SET status='cancelling', cancelling_at=? WHERE id=? AND tenant=? AND status IN "
            "('validating','in_progress')", (now, batch_id, tenant)))
        return await self.batch(tenant, batch_id)

    # ---------------------------------------------------------------- the runner's side
    async def claim(self, limit: int) -> list[PendingLine]:
        """Up to `limit` pending lines of running batches, oldest batch first, marked `running`."""
        def claim(db: sqlite3.Connection) -> list[PendingLine]:
            rows = db.execute(
                "SELECT l.batch_id, l.line, l.custom_id, l.body, b.endpoint, b.tenant FROM lines l "
                "JOIN batches b ON b.id = l.batch_id WHERE l.state='pending' AND b.status='in_progress' "
                "ORDER BY b.created_at, l.batch_id, l.line LIMIT ?", (limit,)).fetchall()
            db.executemany("UPDATE lines SET state='running' WHERE batch_id=? AND line=?", [(r[0], r[1]) for r in rows])
            return [PendingLine(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]
        return await self._run(claim)

    async def finish_line(self, batch_id: str, line: int, state: str, result: dict[str, Any]) -> None:
        await self._run(lambda db: db.execute(
            "UPDATE lines SET state=?, result=? WHERE batch_id=? AND line=? AND state='running'",
            (state, json.dumps(result), batch_id, line)))

    async def release_line(self, batch_id: str, line: int) -> None:
        """A line that could not run now (capacity): pending again, to retry later."""
        await self._run(lambda db: db.execute(
            "UPDATE lines SET state='pending' WHERE batch_id=? AND line=? AND state='running'", (batch_id, line)))

    async def settle(self) -> list[str]:
        """End every batch with nothing left to run (completed, cancelled, expired): write its output
        and error files. Returns the ids of the batches ended."""
        now = int(time.time())

        def settle(db: sqlite3.Connection) -> list[str]:
            ended = []
            for batch_id, tenant, status, expires_at in db.execute(
                    "SELECT id, tenant, status, expires_at FROM batches WHERE status IN ('in_progress','cancelling')").fetchall():
                counts = dict(db.execute("SELECT state, COUNT(*) FROM lines WHERE batch_id=? GROUP BY state", (batch_id,)).fetchall())
                if counts.get("running"):
                    continue  # lines in flight finish first
                expired = status == "in_progress" and now >= expires_at and counts.get("pending")
                if counts.get("pending") and status == "in_progress" and not expired:
                    continue
                final = "cancelled" if status == "cancelling" else "expired" if expired else "completed"
                reason = {"cancelled": ("batch_cancelled", "This line was not run: the batch was cancelled."),
                          "expired": ("batch_expired", "This line could not be executed before the completion window expired.")}
                if final in reason:
                    code, message = reason[final]
                    db.executemany("UPDATE lines SET state='failed', result=? WHERE batch_id=? AND line=?",
                                   [(json.dumps({"error": {"code": code, "message": message}}), batch_id, line)
                                    for (line,) in db.execute("SELECT line FROM lines WHERE batch_id=? AND state='pending'",
                                                              (batch_id,)).fetchall()])
                out_id = _write_result_file(db, tenant, batch_id, "done", now)
                err_id = _write_result_file(db, tenant, batch_id, "failed", now)
                stamp = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}[final]
                db.execute(f"UPDATE batches SET status=?, {stamp}=?, finalizing_at=?, output_file_id=?, error_file_id=? "
                           "WHERE id=?", (final, now, now, out_id, err_id, batch_id))
                ended.append(batch_id)
            return ended
        return await self._run(settle)

    async def backlog(self) -> int:
        """Lines still to run, over every active batch."""
        return await self._run(lambda db: db.execute(
            "SELECT COUNT(*) FROM lines l JOIN batches b ON b.id=l.batch_id WHERE l.state IN ('pending','running') "
            "AND b.status='in_progress'").fetchone()[0])


def file_object(file_id: str, purpose: str, filename: str, size: int, created_at: int) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": created_at, "filename": filename,
            "purpose": purpose, "status": "processed", "expires_at": None, "status_details": None}


def _write_result_file(db: sqlite3.Connection, tenant: str, batch_id: str, state: str, now: int) -> str | None:
    """One JSONL line per finished line of `state` (in input order), as a `batch_output` file."""
    rows = db.execute("SELECT custom_id, result FROM lines WHERE batch_id=? AND state=? ORDER BY line",
                      (batch_id, state)).fetchall()
    if not rows:
        return None
    content = "".join(json.dumps({"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": custom_id, **json.loads(result)}) + "\n"
                      for custom_id, result in rows).encode()
    file_id = new_id("file")
    db.execute("INSERT INTO files VALUES (?,?,?,?,?,?,?)",
               (file_id, tenant, "batch_output", f"{batch_id}_{'output' if state == 'done' else 'error'}.jsonl",
                len(content), now, content))
    return file_id


def _batch_object(db: sqlite3.Connection, row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    (batch_id, _tenant, endpoint, input_file_id, window, status, created_at, expires_at, in_progress_at, finalizing_at,
     completed_at, failed_at, expired_at, cancelling_at, cancelled_at, output_file_id, error_file_id, metadata, errors) = row
    counts = dict(db.execute("SELECT state, COUNT(*) FROM lines WHERE batch_id=? GROUP BY state", (batch_id,)).fetchall())
    total = sum(counts.values())
    return {
        "id": batch_id, "object": "batch", "endpoint": endpoint, "errors": json.loads(errors) if errors else None,
        "input_file_id": input_file_id, "completion_window": window, "status": status,
        "output_file_id": output_file_id, "error_file_id": error_file_id, "created_at": created_at,
        "in_progress_at": in_progress_at, "expires_at": expires_at, "finalizing_at": finalizing_at,
        "completed_at": completed_at, "failed_at": failed_at, "expired_at": expired_at,
        "cancelling_at": cancelling_at, "cancelled_at": cancelled_at,
        "request_counts": {"total": total, "completed": counts.get("done", 0), "failed": counts.get("failed", 0)},
        "metadata": json.loads(metadata) if metadata else None,
    }
