// node-postgres (`pg`) end to end (run by tests/clients.rs): the scenario every driver runs.
//
// node-postgres sends parameters as text and reads text results unless a query asks for
// binary ones. Connect; create a table of every type Eddy has; write rows with parameters;
// read them back as text and as binary and compare; errors carry their SQLSTATE in `code`; a
// materialized view; SUBSCRIBE through a cursor in a transaction.
//
// Usage: node node_pg_e2e.js PORT (with NODE_PATH naming the folder `pg` is installed in).
// Prints "node-postgres: ok" or exits non-zero with what differed.

const assert = require('node:assert/strict');
const { Client } = require('pg');

const port = Number(process.argv[2]);
const config = { host: '127.0.0.1', port, user: 'eddy', database: 'eddy', connectionTimeoutMillis: 10000 };
const COLUMNS = 'b, i2, i4, i8, f4, f8, n, s, v, by, d, tm, ts, tz, iv';

// What node-postgres's default (text) parsers give for the row written.
const EXPECTED_TEXT = {
  b: true,
  i2: 2,
  i4: 3,
  i8: '4', // int8 is a string: it may not fit a JS number
  f4: 1.5,
  f8: 2.25,
  n: '12.34',
  s: "héllo, 'world'",
  v: 'abc',
  by: Buffer.from([0x00, 0xff]),
  d: new Date(2025, 0, 2), // date: local midnight
  tm: '10:11:12.123456',
  ts: new Date(2025, 0, 2, 3, 4, 5, 678), // timestamp: local time, milliseconds
  tz: new Date(Date.UTC(2025, 0, 2, 3, 4, 5, 678)),
  iv: { days: 1, hours: 1, minutes: 1, seconds: 1, milliseconds: 0.005 },
};

async function expectError(client, sql, code) {
  await assert.rejects(client.query(sql), (e) => {
    assert.equal(e.code, code, `SQLSTATE of ${sql}`);
    return true;
  });
}

async function main() {
  const client = new Client(config);
  await client.connect();
  await client.query(
    'CREATE TABLE every_type (id int PRIMARY KEY, b boolean, i2 smallint, i4 integer, ' +
      'i8 bigint, f4 real, f8 double precision, n numeric(10,2), s text, v varchar(10), ' +
      'by bytea, d date, tm time, ts timestamp, tz timestamptz, iv interval)'
  );
  const values = [
    true, 2, 3, '4', 1.5, 2.25, '12.34', "héllo, 'world'", 'abc', Buffer.from([0x00, 0xff]),
    '2025-01-02', '10:11:12.123456', '2025-01-02 03:04:05.678901',
    '2025-01-02 03:04:05.678901+00', '1 day 01:01:01.000005',
  ];
  const placeholders = Array.from({ length: 16 }, (_, k) => `$${k + 1}`).join(', ');
  await client.query(`INSERT INTO every_type VALUES (${placeholders})`, [1, ...values]);
  await client.query('INSERT INTO every_type (id) VALUES ($1)', [2]);

  const text = await client.query(`SELECT ${COLUMNS} FROM every_type WHERE id = $1`, [1]);
  const row = { ...text.rows[0], iv: { ...text.rows[0].iv } };
  assert.deepEqual(row, EXPECTED_TEXT, 'the row read as text');
  assert.deepEqual(
    text.fields.map((f) => f.dataTypeID),
    [16, 21, 23, 20, 700, 701, 1700, 25, 25, 17, 1082, 1083, 1114, 1184, 1186],
    'column type oids (varchar is described as text)'
  );
  const nulls = await client.query(`SELECT ${COLUMNS} FROM every_type WHERE id = 2`);
  assert.ok(Object.values(nulls.rows[0]).every((v) => v === null), 'NULLs');

  // Binary results, of the types node-postgres decodes right in binary. Its binary decoders
  // (pg-types, documented as experimental) return bytea as a string, misread real 1.5, and
  // lose precision on timestamps (parsing 63 bits into a double): those are read as text
  // above; psycopg, asyncpg, pgjdbc and tokio-postgres check them in binary.
  const binary = await client.query({
    text: 'SELECT b, i2, i4, i8, f8, n, s FROM every_type WHERE id = $1',
    values: [1],
    binary: true,
  });
  const b = binary.rows[0];
  assert.equal(b.b, true);
  assert.equal(b.i2, 2);
  assert.equal(b.i4, 3);
  assert.equal(String(b.i8), '4');
  assert.equal(b.f8, 2.25);
  assert.equal(b.n, 12.34);
  assert.equal(b.s, "héllo, 'world'");

  await expectError(client, 'INSERT INTO every_type (id) VALUES (1)', '23505');
  await expectError(client, 'SELECT * FROM nowhere', '42P01');
  await expectError(client, 'SELEC 1', '42601');
  await assert.rejects(client.query('INSERT INTO every_type (id, i2) VALUES ($1, $2)', [9, 70000]), (e) => {
    assert.equal(e.code, '22003', 'SQLSTATE of an out-of-range smallint');
    return true;
  });
  assert.equal((await client.query('SELECT count(*)::int AS n FROM every_type')).rows[0].n, 2);

  await client.query(
    'CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(i8) AS total FROM every_type'
  );
  assert.deepEqual((await client.query('SELECT n, total FROM totals')).rows, [{ n: '2', total: '4' }]);

  const sub = new Client(config);
  await sub.connect();
  await sub.query('BEGIN');
  await sub.query('DECLARE c CURSOR FOR SUBSCRIBE totals');
  const snapshot = await sub.query({ text: 'FETCH ALL c', rowMode: 'array' });
  assert.deepEqual(snapshot.rows.map((r) => r.slice(1)), [['1', '2', '4']], "the subscription's snapshot");
  await client.query('INSERT INTO every_type (id, i8) VALUES ($1, $2)', [3, '10']);
  const change = await sub.query({ text: "FETCH ALL c WITH (timeout = '10s')", rowMode: 'array' });
  assert.deepEqual(
    change.rows.map((r) => r.slice(1)).sort(),
    [['-1', '2', '4'], ['1', '3', '14']],
    'the change'
  );
  await sub.query('COMMIT');
  await sub.end();
  await client.end();
  console.log('node-postgres: ok');
}

main().catch((e) => {
  console.error(`node-postgres: ${e.stack || e}`);
  process.exit(1);
});
