"""SUBSCRIBE from psycopg 3, as an application would use it (run by tests/clients.rs).

1. cursor.copy("COPY (SUBSCRIBE …) TO STDOUT"): rows stream in as they change.
2. The application disconnects, changes happen, it reconnects with AS OF its last complete
   epoch and misses nothing (and sees nothing twice).
3. DECLARE … CURSOR FOR SUBSCRIBE, then FETCH with a timeout: an empty result when nothing
   changed, the changes otherwise.

Usage: psycopg_subscribe.py PORT. Exits non-zero (with a message) on any mismatch.
"""

import sys
import threading
import time

import psycopg

PORT = int(sys.argv[1])
DSN = f"host=127.0.0.1 port={PORT} user=eddy dbname=eddy connect_timeout=10"


def writer():
    return psycopg.connect(DSN, autocommit=True)


def check(actual, expected, what):
    if actual != expected:
        sys.exit(f"{what}: expected {expected!r}, got {actual!r}")


def read_until_change(copy):
    """The next change: its rows and their progress row (idle progress rows are skipped)."""
    while True:
        rows = read_until_progress(copy)
        if len(rows) > 1:
            return rows


def read_until_progress(copy):
    """Rows up to and including the next progress row (`_progressed` = 't')."""
    rows = []
    while True:
        row = copy.read_row()
        if row is None:
            sys.exit("the subscription ended")
        rows.append(row)
        if row[1] == "t":
            return rows


with writer() as w:
    w.execute("CREATE TABLE orders (customer bigint, amount bigint)")
    w.execute(
        "CREATE MATERIALIZED VIEW totals AS "
        "SELECT customer, sum(amount) AS total FROM orders GROUP BY customer"
    )
    w.execute("INSERT INTO orders VALUES (1, 10), (2, 20)")

# 1. Live COPY stream.
def watch_until_first_change():
    """Reads the snapshot and one change; returns the last complete epoch. Then the
    application goes away: its connection is closed in the middle of the COPY."""
    reader = psycopg.connect(DSN, autocommit=True)
    last_complete = None
    try:
        with reader.cursor().copy("COPY (SUBSCRIBE totals WITH (PROGRESS)) TO STDOUT") as copy:
            snapshot = read_until_progress(copy)
            check(
                sorted(r[2:] for r in snapshot if r[1] == "f"),
                [("1", "1", "10"), ("1", "2", "20")],
                "snapshot",
            )

            def insert_later():
                time.sleep(0.2)
                with writer() as w:
                    w.execute("INSERT INTO orders VALUES (1, 5)")

            threading.Thread(target=insert_later).start()
            started = time.monotonic()
            update = read_until_change(copy)
            check(
                [r[2:] for r in update if r[1] == "f"],
                [("-1", "1", "10"), ("1", "1", "15")],
                "an update arrives as -1 old, +1 new",
            )
            if time.monotonic() - started > 10:
                sys.exit("the change took more than 10 s to arrive")
            last_complete = int(update[-1][0])
            reader.close()
    except psycopg.OperationalError:
        # Leaving the COPY block on a connection we closed ourselves.
        if last_complete is None:
            raise
    return last_complete


last_complete = watch_until_first_change()

# 2. Changes while disconnected, then resume AS OF the last complete epoch.
with writer() as w:
    w.execute("INSERT INTO orders VALUES (3, 30)")
    w.execute("DELETE FROM orders WHERE customer = 2")
    w.execute("UPDATE orders SET amount = 11 WHERE customer = 1 AND amount = 10")

with psycopg.connect(DSN, autocommit=True) as again:
    with again.cursor().copy(
        f"COPY (SUBSCRIBE totals WITH (SNAPSHOT = false, PROGRESS) AS OF {last_complete}) TO STDOUT"
    ) as copy:
        missed = []
        while len(missed) < 4:
            missed += [r for r in read_until_progress(copy) if r[1] == "f"]
        epochs = [int(r[0]) for r in missed]
        if any(e <= last_complete for e in epochs) or epochs != sorted(epochs):
            sys.exit(f"epochs out of order or repeated: {epochs} after {last_complete}")
        check(
            [r[2:] for r in missed],
            [
                ("1", "3", "30"),
                ("-1", "2", "20"),
                ("-1", "1", "15"),
                ("1", "1", "16"),
            ],
            "the changes missed while disconnected, once each",
        )
        again.cancel()
        try:
            while copy.read_row() is not None:
                pass
        except psycopg.errors.QueryCanceled:
            pass

# 3. DECLARE / FETCH with a timeout (psycopg opens the transaction block itself).
with psycopg.connect(DSN) as conn:
    cur = conn.cursor()
    cur.execute("DECLARE c CURSOR FOR SUBSCRIBE totals WITH (SNAPSHOT = false)")
    started = time.monotonic()
    cur.execute("FETCH ALL c WITH (timeout = '200ms')")
    check(cur.fetchall(), [], "FETCH with nothing new")
    if time.monotonic() - started > 5:
        sys.exit("FETCH did not return at its timeout")
    threading.Thread(
        target=lambda: (time.sleep(0.2), writer().execute("INSERT INTO orders VALUES (4, 40)"))
    ).start()
    cur.execute("FETCH ALL c WITH (timeout = '10s')")
    rows = cur.fetchall()
    check([r[1:] for r in rows], [(1, 4, 40)], "FETCH returns the change once it happens")
    conn.rollback()

print("psycopg: 3 scenarios passed")
