//! `pg_catalog`: the PostgreSQL system catalogs that psql and drivers read, generated from
//! Eddy's catalog each time they are scanned, plus the catalog functions they call
//! (`pg_get_userbyid`, `pg_table_is_visible`, `format_type`, …).
//!
//! Object ids: namespace `pg_catalog` = 11, `public` = 2200; table `id` has oid
//! `16384 + 2·id` and its primary key index `16385 + 2·id`; type oids are PostgreSQL's.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::common::{ScalarValue, cast::as_int64_array};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

use super::Engine;
use crate::catalog::{ColumnDef, TableDef};
use crate::types::SqlType;

pub const PG_CATALOG_NS: i64 = 11;
pub const PUBLIC_NS: i64 = 2200;
pub const INFORMATION_SCHEMA_NS: i64 = 13_000;
const OWNER: i64 = 10;

pub fn table_oid(def: &TableDef) -> i64 {
    16_384 + 2 * def.id as i64
}

fn index_oid(def: &TableDef) -> i64 {
    table_oid(def) + 1
}

/// The primary key's column numbers (1-based, as pg_index.indkey and pg_constraint.conkey).
fn key_attnums(def: &TableDef) -> Vec<String> {
    def.primary_key
        .iter()
        .map(|k| (k + 1).to_string())
        .collect()
}

/// PostgreSQL's type oid and typmod for a column type.
pub fn type_oid(t: SqlType) -> (i64, i32) {
    match t {
        SqlType::Boolean => (16, -1),
        SqlType::Bytea => (17, -1),
        SqlType::BigInt => (20, -1),
        SqlType::SmallInt => (21, -1),
        SqlType::Integer => (23, -1),
        SqlType::Text => (25, -1),
        SqlType::Real => (700, -1),
        SqlType::Double => (701, -1),
        SqlType::Varchar(n) => (1043, n.map(|n| n as i32 + 4).unwrap_or(-1)),
        SqlType::Date => (1082, -1),
        SqlType::Time => (1083, -1),
        SqlType::Timestamp => (1114, -1),
        SqlType::TimestampTz => (1184, -1),
        SqlType::Interval => (1186, -1),
        SqlType::Numeric(ps) => (
            1700,
            ps.map(|(p, s)| ((p as i32) << 16 | s as i32) + 4)
                .unwrap_or(-1),
        ),
    }
}

/// (oid, name, len, category) of the types Eddy has, for pg_type.
const TYPES: &[(i64, &str, i64, &str)] = &[
    (16, "bool", 1, "B"),
    (17, "bytea", -1, "U"),
    (20, "int8", 8, "N"),
    (21, "int2", 2, "N"),
    (23, "int4", 4, "N"),
    (25, "text", -1, "S"),
    (700, "float4", 4, "N"),
    (701, "float8", 8, "N"),
    (1043, "varchar", -1, "S"),
    (1082, "date", 4, "D"),
    (1083, "time", 8, "D"),
    (1114, "timestamp", 8, "D"),
    (1184, "timestamptz", 8, "D"),
    (1186, "interval", 16, "T"),
    (1700, "numeric", -1, "N"),
    (26, "oid", 4, "N"),
    (19, "name", 64, "S"),
    (18, "char", 1, "S"),
];

/// `format_type(oid, typmod)` as PostgreSQL prints it: the inverse of [`type_oid`], printed by
/// `SqlType`'s Display (which follows `format_type`), plus the catalog-only types.
fn format_type(oid: i64, typmod: i64) -> Option<String> {
    const ALL: [SqlType; 15] = [
        SqlType::Boolean,
        SqlType::SmallInt,
        SqlType::Integer,
        SqlType::BigInt,
        SqlType::Real,
        SqlType::Double,
        SqlType::Numeric(None),
        SqlType::Text,
        SqlType::Varchar(None),
        SqlType::Bytea,
        SqlType::Date,
        SqlType::Time,
        SqlType::Timestamp,
        SqlType::TimestampTz,
        SqlType::Interval,
    ];
    let m = typmod - 4;
    let t = ALL.into_iter().find(|t| type_oid(*t).0 == oid);
    Some(match t {
        Some(SqlType::Varchar(_)) if m >= 0 => SqlType::Varchar(Some(m as u32)).to_string(),
        Some(SqlType::Numeric(_)) if m >= 0 => {
            SqlType::Numeric(Some(((m >> 16) as u8, (m & 0xffff) as i8))).to_string()
        }
        Some(t) => t.to_string(),
        None => match oid {
            18 => "\"char\"".into(),
            19 => "name".into(),
            26 => "oid".into(),
            _ => return None,
        },
    })
}

/// A small in-memory table built from rows of scalars.
struct Builder {
    fields: Vec<Field>,
    rows: Vec<Vec<ScalarValue>>,
}

fn i(v: i64) -> ScalarValue {
    ScalarValue::Int64(Some(v))
}
fn s(v: &str) -> ScalarValue {
    ScalarValue::Utf8(Some(v.to_string()))
}
fn b(v: bool) -> ScalarValue {
    ScalarValue::Boolean(Some(v))
}
fn null_text() -> ScalarValue {
    ScalarValue::Utf8(None)
}
fn text_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}
fn null_list() -> ScalarValue {
    ScalarValue::try_from(&text_list()).unwrap_or(ScalarValue::Null)
}

impl Builder {
    fn new(columns: &[(&str, DataType)]) -> Builder {
        Builder {
            fields: columns
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, values: Vec<ScalarValue>) {
        self.rows.push(values);
    }

    fn build(self) -> DfResult<Arc<dyn TableProvider>> {
        let schema = Arc::new(Schema::new(self.fields));
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (c, field) in schema.fields().iter().enumerate() {
            let values: Vec<ScalarValue> = self.rows.iter().map(|r| r[c].clone()).collect();
            let array = if values.is_empty() {
                datafusion::arrow::array::new_empty_array(field.data_type())
            } else {
                ScalarValue::iter_to_array(values)?
            };
            columns.push(array);
        }
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

const INT: DataType = DataType::Int64;
const TEXT: DataType = DataType::Utf8;
const BOOL: DataType = DataType::Boolean;

const TABLE_NAMES: &[&str] = &[
    "pg_am",
    "pg_attrdef",
    "pg_attribute",
    "pg_class",
    "pg_collation",
    "pg_constraint",
    "pg_database",
    "pg_description",
    "pg_index",
    "pg_inherits",
    "pg_namespace",
    "pg_policy",
    "pg_proc",
    "pg_publication",
    "pg_publication_namespace",
    "pg_publication_rel",
    "pg_roles",
    "pg_statistic_ext",
    "pg_tables",
    "pg_trigger",
    "pg_type",
    "pg_user",
];

struct PgCatalog {
    engine: Arc<Engine>,
}

impl fmt::Debug for PgCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PgCatalog")
    }
}

pub fn schema(engine: Arc<Engine>) -> Arc<dyn SchemaProvider> {
    Arc::new(PgCatalog { engine })
}

impl PgCatalog {
    fn build(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let catalog = self.engine.catalog();
        let tables: Vec<&Arc<TableDef>> = catalog.tables().collect();
        // Tables (relkind 'r') and materialized views ('m', with their columns as running).
        let view_defs: Vec<Arc<TableDef>> = catalog
            .views()
            .iter()
            .filter(|v| v.materialized)
            .filter_map(|v| {
                let schema = self.engine.view_state(v.id)?.schema();
                Some(Arc::new(TableDef {
                    id: v.id,
                    name: v.name.clone(),
                    columns: schema
                        .fields()
                        .iter()
                        .map(|f| ColumnDef {
                            name: f.name().clone(),
                            sql_type: SqlType::from_arrow(f.data_type()).unwrap_or(SqlType::Text),
                            not_null: false,
                        })
                        .collect(),
                    primary_key: vec![],
                    append_only: false,
                    watermark: None,
                    late_rows_table: None,
                    source: None,
                }))
            })
            .collect();
        let relations: Vec<(&Arc<TableDef>, &str)> = tables
            .iter()
            .map(|t| (*t, "r"))
            .chain(view_defs.iter().map(|v| (v, "m")))
            .collect();
        let t = match name {
            "pg_namespace" => {
                let mut t = Builder::new(&[
                    ("oid", INT),
                    ("nspname", TEXT),
                    ("nspowner", INT),
                    ("nspacl", TEXT),
                ]);
                t.row(vec![
                    i(PG_CATALOG_NS),
                    s("pg_catalog"),
                    i(OWNER),
                    null_text(),
                ]);
                t.row(vec![i(PUBLIC_NS), s("public"), i(OWNER), null_text()]);
                t.row(vec![
                    i(INFORMATION_SCHEMA_NS),
                    s("information_schema"),
                    i(OWNER),
                    null_text(),
                ]);
                t
            }
            "pg_class" => {
                let mut t = Builder::new(&[
                    ("oid", INT),
                    ("relname", TEXT),
                    ("relnamespace", INT),
                    ("reltype", INT),
                    ("relowner", INT),
                    ("relam", INT),
                    ("relkind", TEXT),
                    ("relnatts", INT),
                    ("relchecks", INT),
                    ("relhasindex", BOOL),
                    ("relhasrules", BOOL),
                    ("relhastriggers", BOOL),
                    ("relrowsecurity", BOOL),
                    ("relforcerowsecurity", BOOL),
                    ("relispartition", BOOL),
                    ("reltablespace", INT),
                    ("reloftype", INT),
                    ("relpersistence", TEXT),
                    ("relreplident", TEXT),
                    ("reltoastrelid", INT),
                    ("relpartbound", TEXT),
                    ("reloptions", TEXT),
                    ("relacl", TEXT),
                    ("reltuples", DataType::Float64),
                    ("relpages", INT),
                    ("relisshared", BOOL),
                    ("relhassubclass", BOOL),
                ]);
                for (def, relkind) in &relations {
                    let rows = match *relkind {
                        "m" => self.engine.view_state(def.id).map_or(0, |v| v.rows()),
                        _ => self.engine.row_count(def.id),
                    } as f64;
                    t.row(vec![
                        i(table_oid(def)),
                        s(&def.name),
                        i(PUBLIC_NS),
                        i(0),
                        i(OWNER),
                        i(2),
                        s(relkind),
                        i(def.columns.len() as i64),
                        i(0),
                        b(!def.primary_key.is_empty()),
                        b(false),
                        b(false),
                        b(false),
                        b(false),
                        b(false),
                        i(0),
                        i(0),
                        s("p"),
                        s("d"),
                        i(0),
                        null_text(),
                        null_text(),
                        null_text(),
                        ScalarValue::Float64(Some(rows)),
                        i(0),
                        b(false),
                        b(false),
                    ]);
                    if !def.primary_key.is_empty() {
                        t.row(vec![
                            i(index_oid(def)),
                            s(&format!("{}_pkey", def.name)),
                            i(PUBLIC_NS),
                            i(0),
                            i(OWNER),
                            i(403),
                            s("i"),
                            i(def.primary_key.len() as i64),
                            i(0),
                            b(false),
                            b(false),
                            b(false),
                            b(false),
                            b(false),
                            b(false),
                            i(0),
                            i(0),
                            s("p"),
                            s("n"),
                            i(0),
                            null_text(),
                            null_text(),
                            null_text(),
                            ScalarValue::Float64(Some(rows)),
                            i(0),
                            b(false),
                            b(false),
                        ]);
                    }
                }
                t
            }
            "pg_am" => {
                let mut t = Builder::new(&[("oid", INT), ("amname", TEXT), ("amtype", TEXT)]);
                t.row(vec![i(2), s("heap"), s("t")]);
                t.row(vec![i(403), s("btree"), s("i")]);
                t
            }
            "pg_attribute" => {
                let mut t = Builder::new(&[
                    ("attrelid", INT),
                    ("attname", TEXT),
                    ("atttypid", INT),
                    ("atttypmod", INT),
                    ("attnum", INT),
                    ("attlen", INT),
                    ("attnotnull", BOOL),
                    ("atthasdef", BOOL),
                    ("attisdropped", BOOL),
                    ("attidentity", TEXT),
                    ("attgenerated", TEXT),
                    ("attcollation", INT),
                    ("attstattarget", INT),
                    ("attstorage", TEXT),
                    ("attislocal", BOOL),
                    ("attinhcount", INT),
                    ("attacl", TEXT),
                    ("attoptions", TEXT),
                    ("attfdwoptions", TEXT),
                    ("attmissingval", TEXT),
                    ("attcompression", TEXT),
                ]);
                for (def, _) in &relations {
                    for (n, c) in def.columns.iter().enumerate() {
                        let (oid, typmod) = type_oid(c.sql_type);
                        let len = TYPES.iter().find(|t| t.0 == oid).map(|t| t.2).unwrap_or(-1);
                        let collation = if matches!(c.sql_type, SqlType::Text | SqlType::Varchar(_))
                        {
                            100
                        } else {
                            0
                        };
                        t.row(vec![
                            i(table_oid(def)),
                            s(&c.name),
                            i(oid),
                            i(typmod as i64),
                            i(n as i64 + 1),
                            i(len),
                            b(c.not_null),
                            b(false),
                            b(false),
                            s(""),
                            s(""),
                            i(collation),
                            i(-1),
                            s(if len == -1 { "x" } else { "p" }),
                            b(true),
                            i(0),
                            null_text(),
                            null_text(),
                            null_text(),
                            null_text(),
                            s(""),
                        ]);
                    }
                    for (n, k) in def.primary_key.iter().enumerate() {
                        let c = &def.columns[*k];
                        let (oid, typmod) = type_oid(c.sql_type);
                        t.row(vec![
                            i(index_oid(def)),
                            s(&c.name),
                            i(oid),
                            i(typmod as i64),
                            i(n as i64 + 1),
                            i(-1),
                            b(false),
                            b(false),
                            b(false),
                            s(""),
                            s(""),
                            i(0),
                            i(-1),
                            s("p"),
                            b(true),
                            i(0),
                            null_text(),
                            null_text(),
                            null_text(),
                            null_text(),
                            s(""),
                        ]);
                    }
                }
                t
            }
            "pg_type" => {
                let mut t = Builder::new(&[
                    ("oid", INT),
                    ("typname", TEXT),
                    ("typnamespace", INT),
                    ("typowner", INT),
                    ("typlen", INT),
                    ("typtype", TEXT),
                    ("typcategory", TEXT),
                    ("typcollation", INT),
                    ("typelem", INT),
                    ("typarray", INT),
                    ("typbasetype", INT),
                    ("typtypmod", INT),
                    ("typnotnull", BOOL),
                    ("typrelid", INT),
                    ("typinput", TEXT),
                    ("typoutput", TEXT),
                    ("typreceive", TEXT),
                    ("typsend", TEXT),
                    ("typdelim", TEXT),
                ]);
                for (oid, name, len, cat) in TYPES {
                    let coll = if *cat == "S" && *oid != 18 { 100 } else { 0 };
                    t.row(vec![
                        i(*oid),
                        s(name),
                        i(PG_CATALOG_NS),
                        i(OWNER),
                        i(*len),
                        s("b"),
                        s(cat),
                        i(coll),
                        i(0),
                        i(0),
                        i(0),
                        i(-1),
                        b(false),
                        i(0),
                        s(&format!("{name}in")),
                        s(&format!("{name}out")),
                        s(&format!("{name}recv")),
                        s(&format!("{name}send")),
                        s(","),
                    ]);
                }
                t
            }
            "pg_index" => {
                let mut t = Builder::new(&[
                    ("indexrelid", INT),
                    ("indrelid", INT),
                    ("indnatts", INT),
                    ("indnkeyatts", INT),
                    ("indisunique", BOOL),
                    ("indisprimary", BOOL),
                    ("indisexclusion", BOOL),
                    ("indimmediate", BOOL),
                    ("indisclustered", BOOL),
                    ("indisvalid", BOOL),
                    ("indcheckxmin", BOOL),
                    ("indisready", BOOL),
                    ("indislive", BOOL),
                    ("indisreplident", BOOL),
                    ("indkey", TEXT),
                    ("indexprs", TEXT),
                    ("indpred", TEXT),
                ]);
                for def in tables.iter().filter(|d| !d.primary_key.is_empty()) {
                    let key = key_attnums(def);
                    let n = def.primary_key.len() as i64;
                    t.row(vec![
                        i(index_oid(def)),
                        i(table_oid(def)),
                        i(n),
                        i(n),
                        b(true),
                        b(true),
                        b(false),
                        b(true),
                        b(false),
                        b(true),
                        b(false),
                        b(true),
                        b(true),
                        b(false),
                        s(&key.join(" ")),
                        null_text(),
                        null_text(),
                    ]);
                }
                t
            }
            "pg_constraint" => {
                let mut t = Builder::new(&[
                    ("oid", INT),
                    ("conname", TEXT),
                    ("connamespace", INT),
                    ("contype", TEXT),
                    ("condeferrable", BOOL),
                    ("condeferred", BOOL),
                    ("convalidated", BOOL),
                    ("conrelid", INT),
                    ("conindid", INT),
                    ("confrelid", INT),
                    ("conkey", TEXT),
                    ("conparentid", INT),
                    ("conislocal", BOOL),
                ]);
                for def in tables.iter().filter(|d| !d.primary_key.is_empty()) {
                    let key = key_attnums(def);
                    t.row(vec![
                        i(index_oid(def)),
                        s(&format!("{}_pkey", def.name)),
                        i(PUBLIC_NS),
                        s("p"),
                        b(false),
                        b(false),
                        b(true),
                        i(table_oid(def)),
                        i(index_oid(def)),
                        i(0),
                        s(&format!("{{{}}}", key.join(","))),
                        i(0),
                        b(true),
                    ]);
                }
                t
            }
            "pg_attrdef" => Builder::new(&[
                ("oid", INT),
                ("adrelid", INT),
                ("adnum", INT),
                ("adbin", TEXT),
            ]),
            "pg_collation" => {
                let mut t =
                    Builder::new(&[("oid", INT), ("collname", TEXT), ("collnamespace", INT)]);
                t.row(vec![i(100), s("default"), i(PG_CATALOG_NS)]);
                t
            }
            "pg_inherits" => Builder::new(&[
                ("inhrelid", INT),
                ("inhparent", INT),
                ("inhseqno", INT),
                ("inhdetachpending", BOOL),
            ]),
            "pg_policy" => Builder::new(&[
                ("oid", INT),
                ("polname", TEXT),
                ("polrelid", INT),
                ("polcmd", TEXT),
                ("polpermissive", BOOL),
                ("polroles", TEXT),
                ("polqual", TEXT),
                ("polwithcheck", TEXT),
            ]),
            "pg_statistic_ext" => Builder::new(&[
                ("oid", INT),
                ("stxrelid", INT),
                ("stxname", TEXT),
                ("stxnamespace", INT),
                ("stxkeys", TEXT),
                ("stxkind", text_list()),
                ("stxstattarget", INT),
            ]),
            "pg_publication" => Builder::new(&[
                ("oid", INT),
                ("pubname", TEXT),
                ("puballtables", BOOL),
                ("pubinsert", BOOL),
                ("pubupdate", BOOL),
                ("pubdelete", BOOL),
                ("pubtruncate", BOOL),
                ("pubviaroot", BOOL),
            ]),
            "pg_publication_rel" => Builder::new(&[
                ("oid", INT),
                ("prpubid", INT),
                ("prrelid", INT),
                ("prqual", TEXT),
                ("prattrs", TEXT),
            ]),
            "pg_publication_namespace" => {
                Builder::new(&[("oid", INT), ("pnpubid", INT), ("pnnspid", INT)])
            }
            "pg_trigger" => Builder::new(&[
                ("oid", INT),
                ("tgrelid", INT),
                ("tgname", TEXT),
                ("tgenabled", TEXT),
                ("tgisinternal", BOOL),
                ("tgparentid", INT),
            ]),
            "pg_description" => Builder::new(&[
                ("objoid", INT),
                ("classoid", INT),
                ("objsubid", INT),
                ("description", TEXT),
            ]),
            "pg_proc" => Builder::new(&[
                ("oid", INT),
                ("proname", TEXT),
                ("pronamespace", INT),
                ("prokind", TEXT),
                ("prorettype", INT),
                ("proargtypes", TEXT),
            ]),
            "pg_database" => {
                let mut t = Builder::new(&[
                    ("oid", INT),
                    ("datname", TEXT),
                    ("datdba", INT),
                    ("encoding", INT),
                    ("datlocprovider", TEXT),
                    ("datistemplate", BOOL),
                    ("datallowconn", BOOL),
                    ("datconnlimit", INT),
                    ("datcollate", TEXT),
                    ("datctype", TEXT),
                    ("daticulocale", TEXT),
                    ("datacl", text_list()),
                ]);
                t.row(vec![
                    i(16_383),
                    s("eddy"),
                    i(OWNER),
                    i(6),
                    s("c"),
                    b(false),
                    b(true),
                    i(-1),
                    s("C.UTF-8"),
                    s("C.UTF-8"),
                    null_text(),
                    null_list(),
                ]);
                t
            }
            "pg_roles" | "pg_user" => {
                let mut t = Builder::new(&[
                    ("oid", INT),
                    ("rolname", TEXT),
                    ("usename", TEXT),
                    ("rolsuper", BOOL),
                    ("usesuper", BOOL),
                    ("rolcanlogin", BOOL),
                    ("rolinherit", BOOL),
                    ("rolcreaterole", BOOL),
                    ("rolcreatedb", BOOL),
                    ("rolreplication", BOOL),
                    ("rolconnlimit", INT),
                    ("rolvaliduntil", TEXT),
                    ("rolbypassrls", BOOL),
                ]);
                t.row(vec![
                    i(OWNER),
                    s("eddy"),
                    s("eddy"),
                    b(true),
                    b(true),
                    b(true),
                    b(true),
                    b(true),
                    b(true),
                    b(false),
                    i(-1),
                    null_text(),
                    b(true),
                ]);
                t
            }
            "pg_tables" => {
                let mut t = Builder::new(&[
                    ("schemaname", TEXT),
                    ("tablename", TEXT),
                    ("tableowner", TEXT),
                    ("tablespace", TEXT),
                    ("hasindexes", BOOL),
                    ("hasrules", BOOL),
                    ("hastriggers", BOOL),
                    ("rowsecurity", BOOL),
                ]);
                for def in &tables {
                    t.row(vec![
                        s("public"),
                        s(&def.name),
                        s("eddy"),
                        null_text(),
                        b(!def.primary_key.is_empty()),
                        b(false),
                        b(false),
                        b(false),
                    ]);
                }
                t
            }
            _ => return Ok(None),
        };
        Ok(Some(t.build()?))
    }
}

#[async_trait]
impl SchemaProvider for PgCatalog {
    fn table_names(&self) -> Vec<String> {
        TABLE_NAMES.iter().map(|s| s.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.build(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLE_NAMES.contains(&name)
    }
}

/// The catalog functions psql and drivers call.
#[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
enum PgFn {
    GetUserById,
    TableIsVisible,
    IsPublishable,
    FormatType,
    GetExpr,
    EncodingToChar,
    GetIndexDef,
    GetConstraintDef,
    ObjDescription,
    CurrentSchema,
    Version,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct PgFunction {
    kind: PgFn,
    name: &'static str,
    signature: Signature,
    engine_catalog: Option<EngineRef>,
}

/// Functions that describe tables need the engine; compared by identity.
#[derive(Clone)]
struct EngineRef(Arc<Engine>);
impl fmt::Debug for EngineRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Engine")
    }
}
impl PartialEq for EngineRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for EngineRef {}
impl std::hash::Hash for EngineRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state)
    }
}

impl ScalarUDFImpl for PgFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            PgFn::TableIsVisible | PgFn::IsPublishable => DataType::Boolean,
            _ => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let int_arg = |k: usize| -> DfResult<Vec<Option<i64>>> {
            match args.args.get(k) {
                None => Ok(vec![None; n]),
                Some(v) => {
                    let array = v.to_array(n)?;
                    let array = datafusion::arrow::compute::cast(&array, &DataType::Int64)?;
                    Ok(as_int64_array(&array)?.iter().collect())
                }
            }
        };
        let text = |values: Vec<Option<String>>| -> ColumnarValue {
            ColumnarValue::Array(Arc::new(datafusion::arrow::array::StringArray::from(
                values,
            )))
        };
        Ok(match self.kind {
            PgFn::GetUserById => text(vec![Some("eddy".into()); n]),
            PgFn::TableIsVisible => ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))),
            PgFn::IsPublishable => ColumnarValue::Scalar(ScalarValue::Boolean(Some(false))),
            PgFn::EncodingToChar => text(vec![Some("UTF8".into()); n]),
            PgFn::GetExpr | PgFn::ObjDescription => ColumnarValue::Scalar(ScalarValue::Utf8(None)),
            PgFn::CurrentSchema => ColumnarValue::Scalar(ScalarValue::Utf8(Some("public".into()))),
            PgFn::Version => ColumnarValue::Scalar(ScalarValue::Utf8(Some(format!(
                "PostgreSQL {} (Eddy {}), a streaming SQL database",
                crate::SERVER_VERSION,
                env!("CARGO_PKG_VERSION")
            )))),
            PgFn::FormatType => {
                let oids = int_arg(0)?;
                let mods = int_arg(1)?;
                text(
                    oids.iter()
                        .zip(mods)
                        .map(|(o, m)| o.and_then(|o| format_type(o, m.unwrap_or(-1))))
                        .collect(),
                )
            }
            PgFn::GetIndexDef | PgFn::GetConstraintDef => {
                let oids = int_arg(0)?;
                let catalog = self.engine_catalog.as_ref().map(|e| e.0.catalog());
                text(
                    oids.iter()
                        .map(|o| {
                            let o = (*o)?;
                            let catalog = catalog.as_ref()?;
                            let def = catalog.tables().find(|d| index_oid(d) == o)?;
                            let cols: Vec<String> = def
                                .primary_key
                                .iter()
                                .map(|k| crate::catalog::quote_ident(&def.columns[*k].name))
                                .collect();
                            Some(if self.kind == PgFn::GetIndexDef {
                                format!(
                                    "CREATE UNIQUE INDEX {}_pkey ON public.{} USING btree ({})",
                                    def.name,
                                    crate::catalog::quote_ident(&def.name),
                                    cols.join(", ")
                                )
                            } else {
                                format!("PRIMARY KEY ({})", cols.join(", "))
                            })
                        })
                        .collect(),
                )
            }
        })
    }
}

/// A function whose value is fixed for the session (`current_user`, `pg_backend_pid()`…).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_type_inverts_type_oid() {
        for t in [
            SqlType::Integer,
            SqlType::Varchar(Some(20)),
            SqlType::Numeric(Some((8, 2))),
            SqlType::TimestampTz,
        ] {
            let (oid, typmod) = type_oid(t);
            assert_eq!(format_type(oid, typmod as i64), Some(t.to_string()));
        }
        assert_eq!(format_type(1043, -1).as_deref(), Some("character varying"));
        assert_eq!(format_type(19, -1).as_deref(), Some("name"));
        assert_eq!(format_type(99999, -1), None);
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct SessionConstant {
    name: &'static str,
    value: ScalarValue,
    signature: Signature,
}

impl ScalarUDFImpl for SessionConstant {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(self.value.data_type())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

/// Functions whose value depends on the connection.
pub fn register_session_functions(ctx: &SessionContext, user: &str, backend_pid: i32) {
    let constants = [
        ("current_user", s(user)),
        ("session_user", s(user)),
        ("current_role", s(user)),
        ("current_database", s("eddy")),
        ("current_catalog", s("eddy")),
        ("pg_backend_pid", ScalarValue::Int32(Some(backend_pid))),
    ];
    for (name, value) in constants {
        ctx.register_udf(ScalarUDF::from(SessionConstant {
            name,
            value,
            signature: Signature::nullary(Volatility::Stable),
        }));
    }
}

pub fn register_functions(ctx: &SessionContext, engine: Arc<Engine>) {
    let functions = [
        (PgFn::GetUserById, "pg_get_userbyid"),
        (PgFn::TableIsVisible, "pg_table_is_visible"),
        (PgFn::IsPublishable, "pg_relation_is_publishable"),
        (PgFn::FormatType, "format_type"),
        (PgFn::GetExpr, "pg_get_expr"),
        (PgFn::EncodingToChar, "pg_encoding_to_char"),
        (PgFn::GetIndexDef, "pg_get_indexdef"),
        (PgFn::GetConstraintDef, "pg_get_constraintdef"),
        (PgFn::ObjDescription, "obj_description"),
        (PgFn::ObjDescription, "col_description"),
        (PgFn::ObjDescription, "shobj_description"),
        (PgFn::ObjDescription, "pg_get_statisticsobjdef_columns"),
        (PgFn::ObjDescription, "pg_get_partkeydef"),
        (PgFn::ObjDescription, "pg_get_viewdef"),
        (PgFn::CurrentSchema, "current_schema"),
        (PgFn::Version, "version"),
    ];
    for (kind, name) in functions {
        let signature = match kind {
            PgFn::CurrentSchema | PgFn::Version => Signature::nullary(Volatility::Stable),
            _ => Signature::variadic_any(Volatility::Stable),
        };
        ctx.register_udf(ScalarUDF::from(PgFunction {
            kind,
            name,
            signature,
            engine_catalog: Some(EngineRef(engine.clone())),
        }));
    }
}
