"""asyncpg end to end (run by tests/clients.rs): the scenario every driver runs.

asyncpg prepares every statement and exchanges all values in binary. Connect; create a table of every type Eddy has; write rows
with parameters (executemany too); read them back and compare; errors are asyncpg's exception
classes with their SQLSTATE; a materialized view; SUBSCRIBE through a cursor in a transaction.

Usage: asyncpg_e2e.py PORT. Prints "asyncpg: ok" or exits non-zero with what differed.
"""

import asyncio
import datetime
import decimal
import sys

import asyncpg

PORT = int(sys.argv[1])
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
        sys.exit(f"asyncpg: {what}: expected {expected!r}, got {actual!r}")


async def expect_error(conn, sql, error, sqlstate):
    try:
        await conn.execute(sql)
    except error as e:
        check(e.sqlstate, sqlstate, f"SQLSTATE of {sql!r}")
        return
    sys.exit(f"asyncpg: {sql!r} did not raise {error.__name__}")


async def main():
    conn = await asyncpg.connect(
        host="127.0.0.1", port=PORT, user="eddy", database="eddy", timeout=10
    )
    await conn.execute(
        "CREATE TABLE every_type (id int PRIMARY KEY, b boolean, i2 smallint, i4 integer, "
        "i8 bigint, f4 real, f8 double precision, n numeric(10,2), s text, v varchar(10), "
        "by bytea, d date, tm time, ts timestamp, tz timestamptz, iv interval)"
    )
    placeholders = ", ".join(f"${k}" for k in range(1, 17))
    await conn.execute(f"INSERT INTO every_type VALUES ({placeholders})", 1, *ROW)
    await conn.executemany(
        f"INSERT INTO every_type VALUES ({placeholders})", [(2, *ROW), (3, *([None] * 15))]
    )
    for id in (1, 2):
        row = await conn.fetchrow(f"SELECT {COLUMNS} FROM every_type WHERE id = $1", id)
        check(tuple(row), ROW, f"row {id}")
    row = await conn.fetchrow(f"SELECT {COLUMNS} FROM every_type WHERE id = 3")
    check(tuple(row), (None,) * 15, "NULLs")
    stmt = await conn.prepare(f"SELECT {COLUMNS} FROM every_type WHERE id = $1")
    check(
        [a.type.name for a in stmt.get_attributes()],
        ["bool", "int2", "int4", "int8", "float4", "float8", "numeric", "text", "text",
         "bytea", "date", "time", "timestamp", "timestamptz", "interval"],
        "column types",
    )
    check(tuple(await stmt.fetchrow(2)), ROW, "row 2 through a prepared statement")

    await expect_error(
        conn, "INSERT INTO every_type (id) VALUES (1)", asyncpg.UniqueViolationError, "23505"
    )
    await expect_error(conn, "SELECT * FROM nowhere", asyncpg.UndefinedTableError, "42P01")
    await expect_error(conn, "SELEC 1", asyncpg.PostgresSyntaxError, "42601")
    try:
        await conn.execute("INSERT INTO every_type (id, i2) VALUES ($1, $2)", 9, 70000)
        sys.exit("asyncpg: an out-of-range smallint was accepted")
    except (OverflowError, asyncpg.PostgresError):
        pass  # asyncpg refuses it before sending
    check(await conn.fetchval("SELECT count(*) FROM every_type"), 3, "rows after errors")

    # Arrays: asyncpg looks up array types with its introspection query (a recursive CTE
    # over pg_type with an oid[] parameter) before it can decode or send one.
    row = await conn.fetchrow(
        "SELECT array_agg(i4 ORDER BY id), current_schemas(true), ARRAY[1.5, NULL]::float8[] "
        "FROM every_type"
    )
    check(tuple(row), ([3, 3, None], ["pg_catalog", "public"], [1.5, None]), "arrays")
    check(
        await conn.fetchval("SELECT count(*) FROM every_type WHERE id = ANY($1::int[])", [1, 3]),
        2,
        "an array parameter",
    )

    await conn.execute(
        "CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(i8) AS total FROM every_type"
    )
    check(tuple(await conn.fetchrow("SELECT n, total FROM totals")), (3, 8), "the view")

    # asyncpg caches prepared statements: once the table has other columns, the server's
    # "cached plan must not change result type" makes it prepare again.
    await conn.execute("CREATE TABLE reshaped (a int)")
    await conn.execute("INSERT INTO reshaped VALUES (1)")
    check([tuple(r) for r in await conn.fetch("SELECT * FROM reshaped")], [(1,)], "SELECT *")
    await conn.execute("DROP TABLE reshaped")
    await conn.execute("CREATE TABLE reshaped (a text, b float8)")
    await conn.execute("INSERT INTO reshaped VALUES ('x', 1.5)")
    check(
        [tuple(r) for r in await conn.fetch("SELECT * FROM reshaped")],
        [("x", 1.5)],
        "the cached SELECT * once its table has other columns",
    )

    # A pool resets each connection given back to it (pg_advisory_unlock_all(), CLOSE ALL,
    # UNLISTEN *, RESET ALL) before handing it out again.
    pool = await asyncpg.create_pool(
        host="127.0.0.1", port=PORT, user="eddy", database="eddy", min_size=1, max_size=1
    )
    for _ in range(3):
        async with pool.acquire() as pooled:
            check(await pooled.fetchval("SELECT count(*) FROM every_type"), 3, "a pooled query")
    await pool.close()

    sub = await asyncpg.connect(host="127.0.0.1", port=PORT, user="eddy", database="eddy")
    async with sub.transaction():
        await sub.execute("DECLARE c CURSOR FOR SUBSCRIBE totals")
        rows = await sub.fetch("FETCH ALL c")
        check([tuple(r)[1:] for r in rows], [(1, 3, 8)], "the subscription's snapshot")
        await conn.execute("INSERT INTO every_type (id, i8) VALUES ($1, $2)", 4, 10)
        rows = await sub.fetch("FETCH ALL c WITH (timeout = '10s')")
        check(sorted(tuple(r)[1:] for r in rows), [(-1, 3, 8), (1, 4, 18)], "the change")
    await sub.close()
    await conn.close()
    print("asyncpg: ok")


if __name__ == "__main__":
    asyncio.run(main())
