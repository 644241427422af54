-- What a new user does in psql: create, load with \copy, inspect with meta-commands, query.
CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, email varchar(50), joined date);
CREATE TABLE events (user_id int, kind text, at timestamp, WATERMARK FOR at AS at - INTERVAL '1 minute') APPEND ONLY;
INSERT INTO users VALUES (1, 'ann', 'ann@example.com', '2024-01-02'), (2, 'bob', NULL, NULL);
\copy events FROM 'sql-tests/psql/events.csv' WITH (FORMAT csv, HEADER true)
\dt
\d users
\d events
\d
\dn
\l
SELECT u.name, count(e.kind) AS events FROM users u LEFT JOIN events e ON e.user_id = u.id GROUP BY u.name ORDER BY u.name;
\x on
SELECT * FROM users WHERE id = 1;
\x off
BEGIN;
DELETE FROM users WHERE id = 2;
ROLLBACK;
SELECT count(*) FROM users;
SELECT * FROM nowhere;
-- The pre-9.0 COPY options psql users still type: CSV HEADER skips the header line.
CREATE TABLE events_again (user_id int, kind text, at timestamp);
\copy events_again FROM 'sql-tests/psql/events.csv' CSV HEADER
SELECT count(*) FROM events_again;
\conninfo
-- PostgreSQL's other spellings: ABORT ends a transaction, DROP … IF EXISTS names each missing
-- object, SET … TO DEFAULT goes back to the connection's value (psql sent application_name).
BEGIN;
ABORT;
DROP TABLE IF EXISTS nosuch_a, nosuch_b;
SET application_name = 'changed';
SET application_name TO DEFAULT;
SHOW application_name;
CREATE TABLE nosuch.t (a int);
SELECT CAST(40000 AS smallint);
-- COPY … TO STDOUT, which psql's \copy … TO 'file' sends: a table, some columns as CSV, a query.
COPY users TO STDOUT;
COPY users (id, name) TO STDOUT WITH (FORMAT csv, HEADER);
COPY (SELECT name, joined FROM users ORDER BY id DESC) TO STDOUT CSV;
COPY users TO '/tmp/users.txt';
