"""psycopg 3 end to end (run by tests/clients.rs): the same scenario every driver runs.

Connect; create a table of every type Eddy has; write rows with parameters sent as text (%s)
and as binary (%b); read them back with text and binary results and compare with what was
sent; errors carry their SQLSTATE and leave the connection usable; a materialized view; and
SUBSCRIBE through a cursor, seeing a change another connection makes.

Usage: psycopg_e2e.py PORT. Prints "psycopg: ok" or exits non-zero with what differed.
"""

import datetime
import decimal
import sys

import psycopg
from psycopg import errors

PORT = int(sys.argv[1])
DSN = f"host=127.0.0.1 port={PORT} user=eddy dbname=eddy connect_timeout=10"

UTC = datetime.timezone.utc
ROW = (
    True,
    2,
    3,
    4,
    1.5,
    2.25,
    decimal.Decimal("12.34"),
    "héllo, 'world'",
    "abc",
    b"\x00\xff",
    datetime.date(2025, 1, 2),
    datetime.time(10, 11, 12, 123456),
    datetime.datetime(2025, 1, 2, 3, 4, 5, 678901),
    datetime.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    datetime.timedelta(days=1, seconds=3661, microseconds=5),
)
COLUMNS = "b, i2, i4, i8, f4, f8, n, s, v, by, d, tm, ts, tz, iv"


def check(actual, expected, what):
    if actual != expected:
        sys.exit(f"psycopg: {what}: expected {expected!r}, got {actual!r}")


def expect_error(conn, sql, sqlstate):
    try:
        conn.execute(sql)
    except psycopg.Error as e:
        check(e.sqlstate, sqlstate, f"SQLSTATE of {sql!r}")
        return
    sys.exit(f"psycopg: {sql!r} succeeded")


def main():
    conn = psycopg.connect(DSN, autocommit=True)
    conn.execute(
        "CREATE TABLE every_type (id int PRIMARY KEY, b boolean, i2 smallint, i4 integer, "
        "i8 bigint, f4 real, f8 double precision, n numeric(10,2), s text, v varchar(10), "
        "by bytea, d date, tm time, ts timestamp, tz timestamptz, iv interval)"
    )
    placeholders = ", ".join(["%s"] * 16)
    conn.execute(f"INSERT INTO every_type VALUES ({placeholders})", (1, *ROW))
    placeholders = ", ".join(["%b"] * 16)
    conn.execute(f"INSERT INTO every_type VALUES ({placeholders})", (2, *ROW))
    conn.execute("INSERT INTO every_type (id) VALUES (%s)", (3,))

    for binary in (False, True):
        cur = conn.cursor(binary=binary)
        for id in (1, 2):
            cur.execute(f"SELECT {COLUMNS} FROM every_type WHERE id = %s", (id,))
            check(cur.fetchone(), ROW, f"row {id} read with binary={binary}")
        cur.execute(f"SELECT {COLUMNS} FROM every_type WHERE id = 3")
        check(cur.fetchone(), (None,) * 15, f"NULLs read with binary={binary}")
    # (A varchar column is described as text: Arrow, which Eddy computes with, has one string
    # type. Its values are the same.)
    check(
        [d.type_code for d in conn.execute(f"SELECT {COLUMNS} FROM every_type").description],
        [16, 21, 23, 20, 700, 701, 1700, 25, 25, 17, 1082, 1083, 1114, 1184, 1186],
        "column type oids",
    )

    expect_error(conn, "INSERT INTO every_type (id) VALUES (1)", "23505")
    expect_error(conn, "SELECT * FROM nowhere", "42P01")
    expect_error(conn, "SELEC 1", "42601")
    try:
        conn.execute("INSERT INTO every_type (id, i2) VALUES (%s, %s)", (9, 70000))
        sys.exit("psycopg: an out-of-range smallint was accepted")
    except psycopg.Error as e:
        check(e.sqlstate, "22003", "SQLSTATE of an out-of-range smallint")
    check(conn.execute("SELECT count(*) FROM every_type").fetchone(), (3,), "rows after errors")

    # Arrays, read in text and binary, and a list as a parameter (text: %s, binary: %b).
    for binary in (False, True):
        cur = conn.cursor(binary=binary)
        cur.execute("SELECT array_agg(i4 ORDER BY id), ARRAY['a', 'b c', NULL] FROM every_type")
        check(cur.fetchone(), ([3, 3, None], ["a", "b c", None]), f"arrays, binary={binary}")
    for placeholder in ("%s", "%b"):
        check(
            conn.execute(
                f"SELECT count(*) FROM every_type WHERE id = ANY({placeholder})", ([1, 3],)
            ).fetchone(),
            (2,),
            f"a list parameter ({placeholder})",
        )

    conn.execute(
        "CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(i8) AS total FROM every_type"
    )
    check(conn.execute("SELECT n, total FROM totals").fetchone(), (3, 8), "the view")

    # COPY out (how psycopg exports a table or a query) and back in.
    with conn.cursor().copy("COPY (SELECT id, s FROM every_type ORDER BY id) TO STDOUT") as copy:
        copied = [tuple(row) for row in copy.rows()]
    check(len(copied), 3, "rows copied out")
    check(copied[0][0], "1", "COPY TO's first id, as text")
    conn.execute("CREATE TABLE copied (id int, s text)")
    with conn.cursor().copy("COPY copied FROM STDIN") as copy:
        for row in copied:
            copy.write_row(row)
    check(
        conn.execute("SELECT count(*) FROM (SELECT id, s FROM every_type EXCEPT SELECT id, s FROM copied) d").fetchone(),
        (0,),
        "COPY TO then COPY FROM gives the same rows",
    )

    # psycopg prepares a query it ran 5 times (prepare_threshold) and from then on sends
    # DEALLOCATE ALL after a ROLLBACK or DROP. A table another session changed under a
    # prepared statement: the server refuses with PostgreSQL's 0A000 rather than send rows
    # of other types.
    pooled = psycopg.connect(DSN)
    conn.execute("CREATE TABLE reshaped (a int)")
    conn.execute("INSERT INTO reshaped VALUES (1)")
    for _ in range(6):
        check(pooled.execute("SELECT * FROM reshaped").fetchall(), [(1,)], "a prepared SELECT *")
    conn.execute("DROP TABLE reshaped")
    conn.execute("CREATE TABLE reshaped (a text, b float8)")
    conn.execute("INSERT INTO reshaped VALUES ('x', 1.5)")
    try:
        pooled.execute("SELECT * FROM reshaped")
        sys.exit("psycopg: a prepared SELECT * ran after its table changed columns")
    except psycopg.errors.FeatureNotSupported as e:
        check(str(e), "cached plan must not change result type", "the stale statement's error")
    # After a ROLLBACK (or a DROP) psycopg sends DEALLOCATE ALL and prepares again.
    pooled.rollback()
    check(pooled.execute("SELECT * FROM reshaped").fetchall(), [("x", 1.5)], "SELECT * again")
    pooled.rollback()
    pooled.autocommit = True
    for _ in range(6):
        pooled.execute("SELECT * FROM reshaped").fetchall()
    pooled.execute("DROP TABLE reshaped")
    pooled.execute("CREATE TABLE reshaped (a bigint)")
    pooled.execute("INSERT INTO reshaped VALUES (7)")
    check(pooled.execute("SELECT * FROM reshaped").fetchall(), [(7,)], "SELECT * prepared again")
    pooled.close()

    sub = psycopg.connect(DSN)
    with sub.transaction():
        sub.execute("DECLARE c CURSOR FOR SUBSCRIBE totals")
        rows = sub.execute("FETCH ALL c").fetchall()
        check([r[1:] for r in rows], [(1, 3, 8)], "the subscription's snapshot")
        conn.execute("INSERT INTO every_type (id, i8) VALUES (%s, %s)", (4, 10))
        rows = sub.execute("FETCH ALL c WITH (timeout = '10s')").fetchall()
        check(sorted(r[1:] for r in rows), [(-1, 3, 8), (1, 4, 18)], "the change")
    sub.close()
    conn.close()
    print("psycopg: ok")


if __name__ == "__main__":
    main()
