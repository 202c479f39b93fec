"""Retention for ``record_log``: the signed records go when the raw results they carry go.

Why it needs care: the chain must still verify from the oldest record kept. So for each
stream the cut is made at a seal: everything before the last seal that precedes the oldest
retained result is deleted, and that seal stays as the anchor a later export starts from
(``evidence/export.py`` writes it first; verify takes its head as given, vouched for by the
signatures after it).
"""

from __future__ import annotations

import sqlite3

from collector import record_log

SEAL = 5  # record_log.kind of a seal (the Record oneof field number)


def prune_record_log(conn: sqlite3.Connection) -> int:
    """Delete records no retained result needs; run after the raw results were pruned."""
    deleted = 0
    streams = conn.execute("SELECT DISTINCT agent_id, epoch FROM streams").fetchall()
    for agent, epoch in streams:
        (oldest,) = conn.execute(
            "SELECT min(seq) FROM results WHERE agent_id = ? AND epoch = ?", (agent, epoch)
        ).fetchone()
        if oldest is None:  # nothing of this stream retained: keep only its last seal
            last = record_log.last_seq(conn, agent, epoch)
            if last is None:
                continue
            oldest = last + 1
        anchor = conn.execute(
            "SELECT seq FROM record_log WHERE agent_id = ? AND epoch = ? AND seq < ? AND kind = ?"
            " ORDER BY seq DESC LIMIT 1",
            (agent, epoch, oldest, SEAL),
        ).fetchone()
        if anchor is None:
            continue
        deleted += record_log.delete_before(conn, agent, epoch, anchor[0])
    return deleted
