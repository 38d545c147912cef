"""The generic outbox consumer (mosaic.jobs.outbox): rows after a durable cursor, delivered in order, the cursor
moved past what was delivered (also when delivery stops halfway), failures retried with a growing delay."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mosaic.index.database import Database
from mosaic.jobs.outbox import OutboxConsumer
from tests.helpers import wait_until

Row = tuple[int, str]


@pytest.fixture()
def database(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'index.sqlite'}")
    database.migrate()
    yield database
    database.dispose()


class Table:
    """An append-only table of (seq, text) rows, read as the consumer asks."""

    def __init__(self, count: int) -> None:
        self.rows: list[Row] = [(seq, f"row {seq}") for seq in range(1, count + 1)]

    def after(self, seq: int, limit: int) -> list[Row]:
        return [row for row in self.rows if row[0] > seq][:limit]


def consumer(database: Database, table: Table, deliver: object, **options: object) -> OutboxConsumer[Row]:
    return OutboxConsumer(database, "test", read=table.after, deliver=deliver,  # type: ignore[arg-type]
                          position=lambda row: (row[0], row[1]), **options)  # type: ignore[arg-type]


def test_rows_are_delivered_in_order_and_the_cursor_survives_a_new_consumer(database: Database) -> None:
    table, delivered = Table(5), []
    first = consumer(database, table, delivered.append, batch=2)
    assert first.deliver_batch() is True
    assert first.deliver_batch() is True
    assert first.deliver_batch() is False
    assert [row[0] for row in delivered] == [1, 2, 3, 4, 5]
    table.rows.append((6, "row 6"))
    assert consumer(database, table, delivered.append).deliver_batch() is False  # resumes after 5, not from 0
    assert [row[0] for row in delivered] == [1, 2, 3, 4, 5, 6]
    assert first.cursor() == 6


def test_a_delivery_that_stops_halfway_moves_the_cursor_past_what_went_out(database: Database) -> None:
    table, delivered = Table(4), []

    def deliver(row: Row) -> None:
        if row[0] == 3:
            raise OSError("destination went away")
        delivered.append(row)

    outbox = consumer(database, table, deliver)
    with pytest.raises(OSError):
        outbox.deliver_batch()
    assert outbox.cursor() == 2
    assert [row[0] for row in delivered] == [1, 2]


def test_failures_are_retried_with_a_growing_delay_and_a_wake_delivers_at_once(database: Database) -> None:
    table, delivered, delays = Table(1), [], []
    failing = threading.Event()
    failing.set()

    def deliver(row: Row) -> None:
        if failing.is_set():
            raise OSError("not yet")
        delivered.append(row)

    def failed(_exc: Exception, delay: float) -> None:
        delays.append(delay)
        if len(delays) == 4:
            failing.clear()

    outbox = consumer(database, table, deliver, on_failure=failed, retry_seconds=0.01, max_retry_seconds=0.04,
                      idle_seconds=60)
    outbox.start()
    try:
        wait_until(lambda: len(delivered) == 1, timeout=10, what="the row delivered once the failures stop")
        assert delays == [0.01, 0.02, 0.04, 0.04]
        table.rows.append((2, "row 2"))
        outbox.wake()  # the idle wait is a minute: only the wake gets row 2 out in time
        wait_until(lambda: len(delivered) == 2, timeout=5, what="the woken consumer delivering row 2")
    finally:
        outbox.stop()


def test_the_audit_chain_head_is_not_a_consumer_cursor(database: Database) -> None:
    with pytest.raises(ValueError, match="chain"):
        OutboxConsumer(database, "chain", read=Table(0).after, deliver=print, position=lambda row: (row[0], ""))
