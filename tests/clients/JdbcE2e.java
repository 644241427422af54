// pgjdbc end to end (run by tests/clients.rs as `java -cp postgresql.jar JdbcE2e.java PORT`):
// the scenario every driver runs, plus the DatabaseMetaData calls that JDBC GUI clients
// (DBeaver, DataGrip) make to list tables, columns and keys.
//
// pgjdbc sends the first executions of a statement as text and switches to server-prepared
// statements with binary results after `prepareThreshold`; a second connection with
// prepareThreshold=-1 uses binary from the first execution, so both paths are checked.
// Prints "pgjdbc: ok" or exits non-zero with what differed.

import java.math.BigDecimal;
import java.sql.*;
import java.time.*;
import java.util.*;
import org.postgresql.util.PGInterval;

public class JdbcE2e {
    static void check(Object actual, Object expected, String what) {
        if (!Objects.equals(actual, expected)) {
            System.err.println("pgjdbc: " + what + ": expected " + expected + ", got " + actual);
            System.exit(1);
        }
    }

    static void expectError(Connection c, String sql, String sqlstate) {
        try (Statement s = c.createStatement()) {
            s.execute(sql);
        } catch (SQLException e) {
            check(e.getSQLState(), sqlstate, "SQLSTATE of " + sql);
            return;
        }
        check("success", "an error", sql);
    }

    static final LocalDateTime TS = LocalDateTime.of(2025, 1, 2, 3, 4, 5, 678_901_000);

    static void insert(Connection c, int id) throws SQLException {
        try (PreparedStatement p = c.prepareStatement(
                "INSERT INTO every_type VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")) {
            p.setInt(1, id);
            p.setBoolean(2, true);
            p.setShort(3, (short) 2);
            p.setInt(4, 3);
            p.setLong(5, 4L);
            p.setFloat(6, 1.5f);
            p.setDouble(7, 2.25);
            p.setBigDecimal(8, new BigDecimal("12.34"));
            p.setString(9, "héllo, 'world'");
            p.setString(10, "abc");
            p.setBytes(11, new byte[] {0x00, (byte) 0xff});
            p.setObject(12, LocalDate.of(2025, 1, 2));
            p.setObject(13, LocalTime.of(10, 11, 12, 123_456_000));
            p.setObject(14, TS);
            p.setObject(15, TS.atOffset(ZoneOffset.UTC));
            p.setObject(16, new PGInterval(0, 0, 1, 1, 1, 1.000005));
            check(p.executeUpdate(), 1, "rows inserted");
        }
    }

    static void readBack(Connection c, int id, String how) throws SQLException {
        try (PreparedStatement p = c.prepareStatement(
                "SELECT b, i2, i4, i8, f4, f8, n, s, v, by, d, tm, ts, tz, iv FROM every_type WHERE id = ?")) {
            // Several executions: past prepareThreshold pgjdbc switches to binary results.
            for (int round = 0; round < 6; round++) {
                p.setInt(1, id);
                try (ResultSet r = p.executeQuery()) {
                    check(r.next(), true, how + ": a row");
                    String at = how + " round " + round + ": ";
                    check(r.getBoolean(1), true, at + "boolean");
                    check(r.getShort(2), (short) 2, at + "smallint");
                    check(r.getInt(3), 3, at + "integer");
                    check(r.getLong(4), 4L, at + "bigint");
                    check(r.getFloat(5), 1.5f, at + "real");
                    check(r.getDouble(6), 2.25, at + "double precision");
                    check(r.getBigDecimal(7), new BigDecimal("12.34"), at + "numeric");
                    check(r.getString(8), "héllo, 'world'", at + "text");
                    check(r.getString(9), "abc", at + "varchar");
                    check(Arrays.toString(r.getBytes(10)), "[0, -1]", at + "bytea");
                    check(r.getObject(11, LocalDate.class), LocalDate.of(2025, 1, 2), at + "date");
                    check(r.getObject(12, LocalTime.class), LocalTime.of(10, 11, 12, 123_456_000), at + "time");
                    check(r.getObject(13, LocalDateTime.class), TS, at + "timestamp");
                    check(r.getObject(14, OffsetDateTime.class), TS.atOffset(ZoneOffset.UTC), at + "timestamptz");
                    check(r.getObject(15), new PGInterval(0, 0, 1, 1, 1, 1.000005), at + "interval");
                    check(r.next(), false, how + ": one row");
                }
            }
        }
    }

    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/eddy?user=eddy&connectTimeout=10";
        try (Connection c = DriverManager.getConnection(url);
                Connection binary = DriverManager.getConnection(url + "&prepareThreshold=-1")) {
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE every_type (id int PRIMARY KEY, b boolean, i2 smallint, i4 integer, "
                        + "i8 bigint, f4 real, f8 double precision, n numeric(10,2), s text, v varchar(10), "
                        + "by bytea, d date, tm time, ts timestamp, tz timestamptz, iv interval)");
            }
            insert(c, 1);
            insert(binary, 2);
            try (PreparedStatement p = c.prepareStatement("INSERT INTO every_type (id) VALUES (?)")) {
                p.setInt(1, 3);
                p.executeUpdate();
            }
            readBack(c, 1, "text, then binary");
            readBack(binary, 2, "binary");
            try (Statement s = c.createStatement();
                    ResultSet r = s.executeQuery("SELECT b, n, s, by, tz, iv FROM every_type WHERE id = 3")) {
                r.next();
                for (int k = 1; k <= 6; k++) {
                    check(r.getObject(k), null, "NULL in column " + k);
                }
            }

            expectError(c, "INSERT INTO every_type (id) VALUES (1)", "23505");
            expectError(c, "SELECT * FROM nowhere", "42P01");
            expectError(c, "SELEC 1", "42601");
            expectError(c, "INSERT INTO every_type (id, i2) VALUES (9, 70000)", "22003");
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT count(*) FROM every_type")) {
                r.next();
                check(r.getLong(1), 3L, "rows after errors");
            }

            try (Statement s = c.createStatement()) {
                s.execute("CREATE MATERIALIZED VIEW totals AS SELECT count(*) AS n, sum(i8) AS total FROM every_type");
                s.execute("CREATE VIEW ids AS SELECT id FROM every_type");
                try (ResultSet r = s.executeQuery("SELECT n, total FROM totals")) {
                    r.next();
                    check(r.getLong(1) + "," + r.getLong(2), "3,8", "the view");
                }
            }

            // What GUI clients ask DatabaseMetaData.
            DatabaseMetaData meta = c.getMetaData();
            check(meta.getDatabaseProductName(), "PostgreSQL", "product name");
            List<String> tables = new ArrayList<>();
            try (ResultSet r = meta.getTables(null, "public", "%", null)) {
                while (r.next()) {
                    tables.add(r.getString("TABLE_NAME") + ":" + r.getString("TABLE_TYPE"));
                }
            }
            Collections.sort(tables);
            check(tables, List.of("every_type:TABLE", "every_type_pkey:INDEX", "ids:VIEW", "totals:MATERIALIZED VIEW"),
                    "getTables");
            List<String> columns = new ArrayList<>();
            try (ResultSet r = meta.getColumns(null, "public", "every_type", "%")) {
                while (r.next()) {
                    columns.add(r.getString("COLUMN_NAME") + " " + r.getString("TYPE_NAME") + " "
                            + r.getInt("DATA_TYPE") + " " + r.getString("IS_NULLABLE"));
                }
            }
            check(columns.size(), 16, "getColumns: " + columns);
            check(columns.get(0), "id int4 4 NO", "getColumns: id");
            check(columns.get(7), "n numeric 2 YES", "getColumns: n");
            check(columns.get(9), "v varchar 12 YES", "getColumns: v");
            check(columns.get(14), "tz timestamptz 93 YES", "getColumns: tz");
            try (ResultSet r = meta.getPrimaryKeys(null, "public", "every_type")) {
                check(r.next(), true, "getPrimaryKeys: a key");
                check(r.getString("COLUMN_NAME") + " " + r.getString("PK_NAME"), "id every_type_pkey", "getPrimaryKeys");
            }
            try (ResultSet r = meta.getIndexInfo(null, "public", "every_type", false, true)) {
                check(r.next(), true, "getIndexInfo: an index");
                check(r.getString("INDEX_NAME") + " " + r.getString("COLUMN_NAME") + " "
                        + r.getString("ASC_OR_DESC"), "every_type_pkey id A", "getIndexInfo");
            }
            check(meta.getSQLKeywords().contains("analyze"), true, "getSQLKeywords");
            // DBeaver reads a constraint's columns with getArray().
            try (Statement s = c.createStatement();
                    ResultSet r = s.executeQuery(
                            "SELECT conkey FROM pg_catalog.pg_constraint WHERE conname = 'every_type_pkey'")) {
                check(r.next(), true, "pg_constraint: the key");
                check(java.util.Arrays.toString((Object[]) r.getArray(1).getArray()), "[1]", "conkey");
            }
            List<String> schemas = new ArrayList<>();
            try (ResultSet r = meta.getSchemas()) {
                while (r.next()) {
                    schemas.add(r.getString("TABLE_SCHEM"));
                }
            }
            check(schemas.contains("public") && schemas.contains("eddy_catalog"), true, "getSchemas: " + schemas);

            // SUBSCRIBE through a cursor, in a transaction.
            try (Connection sub = DriverManager.getConnection(url)) {
                sub.setAutoCommit(false);
                try (Statement s = sub.createStatement()) {
                    s.execute("DECLARE c CURSOR FOR SUBSCRIBE totals");
                    try (ResultSet r = s.executeQuery("FETCH ALL c")) {
                        check(r.next(), true, "the subscription's snapshot");
                        check(r.getLong(2) + "," + r.getLong(3) + "," + r.getLong(4), "1,3,8", "the snapshot");
                    }
                    try (Statement w = c.createStatement()) {
                        w.execute("INSERT INTO every_type (id, i8) VALUES (4, 10)");
                    }
                    List<String> change = new ArrayList<>();
                    try (ResultSet r = s.executeQuery("FETCH ALL c WITH (timeout = '10s')")) {
                        while (r.next()) {
                            change.add(r.getLong(2) + "," + r.getLong(3) + "," + r.getLong(4));
                        }
                    }
                    Collections.sort(change);
                    check(change, List.of("-1,3,8", "1,4,18"), "the change");
                }
                sub.commit();
            }
        }
        System.out.println("pgjdbc: ok");
    }
}
