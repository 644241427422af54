//! `pg_catalog`: the PostgreSQL system catalogs that psql, drivers, GUI clients and Grafana
//! read, generated from Eddy's catalog each time they are scanned. The functions they call
//! (`format_type`, `pg_get_viewdef`, …) are in `pg_functions`; `information_schema` is built
//! from the same [`Relation`]s.
//!
//! Object ids: namespaces `pg_catalog` = 11, `public` = 2200, `information_schema` = 13000,
//! `eddy_catalog` = 13500; a table, view or materialized view `id` has oid `16384 + 2·id` and a
//! table's primary key index `16385 + 2·id`; catalog tables keep PostgreSQL's oids where they
//! have fixed ones; type oids are PostgreSQL's.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use parking_lot::Mutex;

use super::Engine;
use crate::catalog::TableDef;
use crate::types::SqlType;

pub const PG_CATALOG_NS: i64 = 11;
pub const PUBLIC_NS: i64 = 2200;
pub const INFORMATION_SCHEMA_NS: i64 = 13_000;
pub const EDDY_CATALOG_NS: i64 = 13_500;
pub const OWNER: i64 = 10;
pub const DATABASE_OID: i64 = 16_383;
pub const DATABASE: &str = "eddy";

/// A session's settings (`SET`, `SHOW`, `current_setting`, `pg_settings`), shared by the
/// session and its catalog.
pub type Settings = Arc<Mutex<BTreeMap<String, String>>>;

/// The namespaces, by oid.
pub const NAMESPACES: &[(i64, &str)] = &[
    (PG_CATALOG_NS, "pg_catalog"),
    (PUBLIC_NS, "public"),
    (INFORMATION_SCHEMA_NS, "information_schema"),
    (EDDY_CATALOG_NS, super::system::SCHEMA),
];

pub fn namespace_name(oid: i64) -> &'static str {
    NAMESPACES
        .iter()
        .find(|(o, _)| *o == oid)
        .map_or("public", |(_, n)| n)
}

/// A role's oid: 10 for the bootstrap role (PostgreSQL's), a stable one from the name for
/// the others.
pub fn role_oid(name: &str) -> i64 {
    if name == crate::catalog::BOOTSTRAP_ROLE {
        OWNER
    } else {
        20_000_000 + (crc32fast::hash(name.as_bytes()) % 1_000_000_000) as i64
    }
}

pub fn table_oid(def: &TableDef) -> i64 {
    object_oid(def.id)
}

pub fn object_oid(id: crate::types::ObjectId) -> i64 {
    16_384 + 2 * id as i64
}

fn index_oid(def: &TableDef) -> i64 {
    table_oid(def) + 1
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

/// A type in `pg_type`: oid, name, length, category, and its array type's oid.
pub struct PgType {
    pub oid: i64,
    pub name: &'static str,
    pub len: i64,
    pub category: &'static str,
    pub array: i64,
}

const fn ty(oid: i64, name: &'static str, len: i64, category: &'static str, array: i64) -> PgType {
    PgType {
        oid,
        name,
        len,
        category,
        array,
    }
}

/// The types Eddy has, plus those its catalogs use (`oid`, `name`, `"char"`).
pub const TYPES: &[PgType] = &[
    ty(16, "bool", 1, "B", 1000),
    ty(17, "bytea", -1, "U", 1001),
    ty(20, "int8", 8, "N", 1016),
    ty(21, "int2", 2, "N", 1005),
    ty(23, "int4", 4, "N", 1007),
    ty(25, "text", -1, "S", 1009),
    ty(700, "float4", 4, "N", 1021),
    ty(701, "float8", 8, "N", 1022),
    ty(1043, "varchar", -1, "S", 1015),
    ty(1082, "date", 4, "D", 1182),
    ty(1083, "time", 8, "D", 1183),
    ty(1114, "timestamp", 8, "D", 1115),
    ty(1184, "timestamptz", 8, "D", 1185),
    ty(1186, "interval", 16, "T", 1187),
    ty(1700, "numeric", -1, "N", 1231),
    ty(26, "oid", 4, "N", 1028),
    ty(19, "name", 64, "S", 1003),
    ty(18, "char", 1, "S", 1002),
];

/// The SQL type of an oid (the types a column can have), with a typmod.
fn sql_type_of(oid: i64, typmod: i64) -> Option<SqlType> {
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
    let t = ALL.into_iter().find(|t| type_oid(*t).0 == oid)?;
    Some(match t {
        SqlType::Varchar(_) if m >= 0 => SqlType::Varchar(Some(m as u32)),
        SqlType::Numeric(_) if m >= 0 => {
            SqlType::Numeric(Some(((m >> 16) as u8, (m & 0xffff) as i8)))
        }
        t => t,
    })
}

/// `format_type(oid, typmod)` as PostgreSQL prints it: the inverse of [`type_oid`], printed by
/// `SqlType`'s Display (which follows `format_type`), plus the catalog-only and array types.
pub fn format_type(oid: i64, typmod: i64) -> Option<String> {
    if let Some(t) = sql_type_of(oid, typmod) {
        return Some(t.to_string());
    }
    if let Some(elem) = TYPES.iter().find(|t| t.array == oid) {
        return format_type(elem.oid, -1).map(|e| format!("{e}[]"));
    }
    Some(
        match oid {
            18 => "\"char\"",
            19 => "name",
            26 => "oid",
            _ => return None,
        }
        .to_string(),
    )
}

/// The type oid of an Arrow type, for the columns of catalog and system tables.
fn arrow_type_oid(t: &DataType) -> (i64, i32) {
    match t {
        DataType::List(f) => {
            let elem = arrow_type_oid(f.data_type()).0;
            (
                TYPES
                    .iter()
                    .find(|t| t.oid == elem)
                    .map_or(1009, |t| t.array),
                -1,
            )
        }
        DataType::UInt32 => (26, -1),
        t => SqlType::from_arrow(t).map_or((25, -1), type_oid),
    }
}

/// A column of a relation, as `pg_attribute` and `information_schema.columns` show it.
pub struct Attribute {
    pub name: String,
    pub type_oid: i64,
    pub typmod: i32,
    pub not_null: bool,
}

impl Attribute {
    fn of_arrow(f: &Field) -> Attribute {
        let (type_oid, typmod) = arrow_type_oid(f.data_type());
        Attribute {
            name: f.name().clone(),
            type_oid,
            typmod,
            not_null: !f.is_nullable(),
        }
    }

    fn of_sql(name: &str, t: SqlType, not_null: bool) -> Attribute {
        let (type_oid, typmod) = type_oid(t);
        Attribute {
            name: name.to_string(),
            type_oid,
            typmod,
            not_null,
        }
    }

    /// The SQL type, for user relations' columns.
    pub fn sql_type(&self) -> Option<SqlType> {
        sql_type_of(self.type_oid, self.typmod as i64)
    }
}

/// What a relation is (`pg_class.relkind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelKind {
    Table,
    View,
    MaterializedView,
    Index,
}

impl RelKind {
    pub fn code(self) -> &'static str {
        match self {
            RelKind::Table => "r",
            RelKind::View => "v",
            RelKind::MaterializedView => "m",
            RelKind::Index => "i",
        }
    }
}

/// A relation as the catalogs show it: a table, view, materialized view or primary key index
/// of the user's, or a catalog or system table.
pub struct Relation {
    pub oid: i64,
    pub name: String,
    pub namespace: i64,
    pub kind: RelKind,
    pub columns: Vec<Attribute>,
    /// Column positions (0-based) of the primary key, for tables that have one.
    pub primary_key: Vec<usize>,
    /// Rows now (tables, materialized views), an estimate for `reltuples`.
    pub rows: f64,
    /// The defining query (views).
    pub definition: Option<String>,
    /// For an index: the table it indexes.
    pub indexed: Option<i64>,
    /// Relations a view reads.
    pub depends_on: Vec<i64>,
}

impl Relation {
    pub fn schema(&self) -> &'static str {
        namespace_name(self.namespace)
    }

    /// The name of the primary key's index and constraint.
    pub fn pkey_name(&self) -> String {
        format!("{}_pkey", self.name)
    }

    /// An estimate of the bytes the relation's rows take: rows × the columns' widths, with
    /// 32 bytes for a variable-length value.
    pub fn estimated_bytes(&self) -> i64 {
        let width: i64 = self
            .columns
            .iter()
            .map(|c| {
                TYPES
                    .iter()
                    .find(|t| t.oid == c.type_oid)
                    .map_or(32, |t| if t.len > 0 { t.len } else { 32 })
            })
            .sum();
        (self.rows as i64) * width
    }
}

/// Every relation the catalogs list, in oid order within each namespace.
pub fn relations(engine: &Arc<Engine>) -> Vec<Relation> {
    let catalog = engine.catalog();
    let mut out = Vec::new();
    for def in catalog.tables() {
        let rows = engine.row_count(def.id) as f64;
        out.push(Relation {
            oid: table_oid(def),
            name: def.name.clone(),
            namespace: PUBLIC_NS,
            kind: RelKind::Table,
            columns: def
                .columns
                .iter()
                .map(|c| Attribute::of_sql(&c.name, c.sql_type, c.not_null))
                .collect(),
            primary_key: def.primary_key.clone(),
            rows,
            definition: None,
            indexed: None,
            depends_on: vec![],
        });
        if !def.primary_key.is_empty() {
            out.push(Relation {
                oid: index_oid(def),
                name: format!("{}_pkey", def.name),
                namespace: PUBLIC_NS,
                kind: RelKind::Index,
                columns: def
                    .primary_key
                    .iter()
                    .map(|k| &def.columns[*k])
                    .map(|c| Attribute::of_sql(&c.name, c.sql_type, false))
                    .collect(),
                primary_key: vec![],
                rows,
                definition: None,
                indexed: Some(table_oid(def)),
                depends_on: vec![],
            });
        }
    }
    for v in catalog.views() {
        let state = engine.view_state(v.id).filter(|_| v.materialized);
        let columns = if v.column_types.len() == v.columns.len() {
            v.columns
                .iter()
                .zip(&v.column_types)
                .map(|(name, t)| Attribute::of_sql(name, *t, false))
                .collect()
        } else if let Some(state) = &state {
            state
                .schema()
                .fields()
                .iter()
                .map(|f| Attribute::of_arrow(f))
                .collect()
        } else {
            v.columns
                .iter()
                .map(|name| Attribute::of_sql(name, SqlType::Text, false))
                .collect()
        };
        out.push(Relation {
            oid: object_oid(v.id),
            name: v.name.clone(),
            namespace: PUBLIC_NS,
            kind: if v.materialized {
                RelKind::MaterializedView
            } else {
                RelKind::View
            },
            columns,
            primary_key: vec![],
            rows: state.map_or(0, |s| s.rows()) as f64,
            definition: Some(v.query.clone()),
            indexed: None,
            depends_on: v.depends_on.iter().map(|id| object_oid(*id)).collect(),
        });
    }
    for (n, name) in TABLE_NAMES.iter().enumerate() {
        out.push(Relation {
            oid: catalog_table_oid(name).unwrap_or(12_000 + n as i64),
            name: name.to_string(),
            namespace: PG_CATALOG_NS,
            kind: if CATALOG_VIEWS.contains(name) {
                RelKind::View
            } else {
                RelKind::Table
            },
            columns: columns(name)
                .unwrap_or_default()
                .iter()
                .map(|(c, t)| Attribute::of_arrow(&Field::new(*c, t.data_type(), true)))
                .collect(),
            primary_key: vec![],
            rows: 0.0,
            definition: None,
            indexed: None,
            depends_on: vec![],
        });
    }
    for (n, name) in super::information_schema::TABLE_NAMES.iter().enumerate() {
        out.push(Relation {
            oid: 13_001 + n as i64,
            name: name.to_string(),
            namespace: INFORMATION_SCHEMA_NS,
            kind: RelKind::View,
            columns: super::information_schema::columns(name)
                .iter()
                .map(Attribute::of_arrow)
                .collect(),
            primary_key: vec![],
            rows: 0.0,
            definition: None,
            indexed: None,
            depends_on: vec![],
        });
    }
    for (n, (name, schema)) in super::system::schemas(engine.clone()).iter().enumerate() {
        out.push(Relation {
            oid: 13_501 + n as i64,
            name: name.to_string(),
            namespace: EDDY_CATALOG_NS,
            kind: RelKind::View,
            columns: schema
                .fields()
                .iter()
                .map(|f| Attribute::of_arrow(f))
                .collect(),
            primary_key: vec![],
            rows: 0.0,
            definition: None,
            indexed: None,
            depends_on: vec![],
        });
    }
    out
}

/// Oids PostgreSQL fixes for its catalog tables (`'pg_catalog.pg_class'::regclass`).
fn catalog_table_oid(name: &str) -> Option<i64> {
    Some(match name {
        "pg_type" => 1247,
        "pg_attribute" => 1249,
        "pg_proc" => 1255,
        "pg_class" => 1259,
        "pg_database" => 1262,
        "pg_tablespace" => 1213,
        "pg_shdescription" => 2396,
        "pg_am" => 2601,
        "pg_attrdef" => 2604,
        "pg_constraint" => 2606,
        "pg_depend" => 2608,
        "pg_description" => 2609,
        "pg_index" => 2610,
        "pg_inherits" => 2611,
        "pg_namespace" => 2615,
        "pg_trigger" => 2620,
        "pg_extension" => 3079,
        "pg_policy" => 3256,
        "pg_statistic_ext" => 3381,
        "pg_collation" => 3456,
        "pg_enum" => 3501,
        "pg_range" => 3541,
        "pg_publication" => 6104,
        "pg_publication_rel" => 6106,
        "pg_publication_namespace" => 6237,
        "pg_rewrite" => 2618,
        _ => return None,
    })
}

/// The oid of a relation named as `'name'::regclass` would look it up: optionally
/// schema-qualified, optionally quoted.
pub fn regclass(engine: &Arc<Engine>, name: &str) -> Option<i64> {
    let (schema, rel) = split_qualified(name);
    relations(engine)
        .into_iter()
        .find(|r| {
            r.name == rel
                && match &schema {
                    Some(s) => r.schema() == s,
                    None => [PUBLIC_NS, PG_CATALOG_NS].contains(&r.namespace),
                }
        })
        .map(|r| r.oid)
}

/// `schema.name`, `"Quoted"."Name"`, or `name` (folded to lower case unless quoted).
pub fn split_qualified(name: &str) -> (Option<String>, String) {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    let mut chars = name.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                current.push('"');
            }
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            '.' if !quoted => {
                parts.push(std::mem::take(&mut current));
                was_quoted = false;
            }
            c if quoted || was_quoted => current.push(c),
            c => current.extend(c.to_lowercase()),
        }
    }
    parts.push(current);
    let rel = parts.pop().unwrap_or_default();
    (parts.pop(), rel)
}

/// Column types of the catalog tables.
#[derive(Clone, Copy)]
enum Ty {
    Int,
    Int4,
    /// PostgreSQL's `oid`: unsigned 32-bit, as Arrow's UInt32 (sent as `oid`).
    Oid,
    Text,
    Bool,
    Float,
    TextList,
    IntList,
    OidList,
    /// `timestamp with time zone`.
    Timestamp,
}

impl Ty {
    fn data_type(self) -> DataType {
        match self {
            Ty::Int => DataType::Int64,
            Ty::Int4 => DataType::Int32,
            Ty::Oid => DataType::UInt32,
            Ty::Text => DataType::Utf8,
            Ty::Bool => DataType::Boolean,
            Ty::Float => DataType::Float64,
            Ty::TextList => list_of(DataType::Utf8),
            Ty::IntList => list_of(DataType::Int64),
            Ty::OidList => list_of(DataType::UInt32),
            Ty::Timestamp => SqlType::TimestampTz.to_arrow(),
        }
    }
}

fn list_of(t: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", t, true)))
}

use Ty::{Bool, Float, Int, Int4, IntList, Oid, OidList, Text, TextList, Timestamp};

const TABLE_NAMES: &[&str] = &[
    "pg_am",
    "pg_attrdef",
    "pg_attribute",
    "pg_auth_members",
    "pg_class",
    "pg_collation",
    "pg_constraint",
    "pg_database",
    "pg_depend",
    "pg_description",
    "pg_enum",
    "pg_extension",
    "pg_index",
    "pg_indexes",
    "pg_inherits",
    "pg_matviews",
    "pg_namespace",
    "pg_policy",
    "pg_proc",
    "pg_publication",
    "pg_publication_namespace",
    "pg_publication_rel",
    "pg_range",
    "pg_rewrite",
    "pg_roles",
    "pg_settings",
    "pg_shdescription",
    "pg_stat_activity",
    "pg_statistic_ext",
    "pg_tables",
    "pg_tablespace",
    "pg_trigger",
    "pg_type",
    "pg_user",
    "pg_views",
];

/// The catalogs that are views in PostgreSQL.
const CATALOG_VIEWS: &[&str] = &[
    "pg_indexes",
    "pg_matviews",
    "pg_roles",
    "pg_settings",
    "pg_stat_activity",
    "pg_tables",
    "pg_user",
    "pg_views",
];

/// The columns of each catalog table.
fn columns(name: &str) -> Option<&'static [(&'static str, Ty)]> {
    Some(match name {
        "pg_namespace" => &[
            ("oid", Oid),
            ("nspname", Text),
            ("nspowner", Oid),
            ("nspacl", TextList),
        ],
        "pg_class" => &[
            ("oid", Oid),
            ("relname", Text),
            ("relnamespace", Oid),
            ("reltype", Oid),
            ("reloftype", Oid),
            ("relowner", Oid),
            ("relam", Oid),
            ("relfilenode", Oid),
            ("reltablespace", Oid),
            ("relpages", Int),
            ("reltuples", Float),
            ("relallvisible", Int),
            ("reltoastrelid", Oid),
            ("relhasindex", Bool),
            ("relisshared", Bool),
            ("relpersistence", Text),
            ("relkind", Text),
            ("relnatts", Int),
            ("relchecks", Int),
            ("relhasrules", Bool),
            ("relhastriggers", Bool),
            ("relhassubclass", Bool),
            ("relrowsecurity", Bool),
            ("relforcerowsecurity", Bool),
            ("relispopulated", Bool),
            ("relreplident", Text),
            ("relispartition", Bool),
            ("relrewrite", Oid),
            ("relfrozenxid", Int),
            ("relminmxid", Int),
            ("relacl", TextList),
            ("reloptions", TextList),
            ("relpartbound", Text),
        ],
        "pg_am" => &[
            ("oid", Oid),
            ("amname", Text),
            ("amhandler", Text),
            ("amtype", Text),
        ],
        "pg_attribute" => &[
            ("attrelid", Oid),
            ("attname", Text),
            ("atttypid", Oid),
            ("attstattarget", Int),
            ("attlen", Int),
            ("attnum", Int),
            ("attndims", Int),
            ("attcacheoff", Int),
            ("atttypmod", Int),
            ("attbyval", Bool),
            ("attalign", Text),
            ("attstorage", Text),
            ("attcompression", Text),
            ("attnotnull", Bool),
            ("atthasdef", Bool),
            ("atthasmissing", Bool),
            ("attidentity", Text),
            ("attgenerated", Text),
            ("attisdropped", Bool),
            ("attislocal", Bool),
            ("attinhcount", Int),
            ("attcollation", Oid),
            ("attacl", TextList),
            ("attoptions", TextList),
            ("attfdwoptions", TextList),
            ("attmissingval", Text),
        ],
        "pg_type" => &[
            ("oid", Oid),
            ("typname", Text),
            ("typnamespace", Oid),
            ("typowner", Oid),
            ("typlen", Int),
            ("typbyval", Bool),
            ("typtype", Text),
            ("typcategory", Text),
            ("typispreferred", Bool),
            ("typisdefined", Bool),
            ("typdelim", Text),
            ("typrelid", Oid),
            ("typsubscript", Text),
            ("typelem", Oid),
            ("typarray", Oid),
            ("typinput", Text),
            ("typoutput", Text),
            ("typreceive", Text),
            ("typsend", Text),
            ("typmodin", Text),
            ("typmodout", Text),
            ("typanalyze", Text),
            ("typalign", Text),
            ("typstorage", Text),
            ("typnotnull", Bool),
            ("typbasetype", Oid),
            ("typtypmod", Int),
            ("typndims", Int),
            ("typcollation", Oid),
            ("typdefaultbin", Text),
            ("typdefault", Text),
            ("typacl", TextList),
        ],
        "pg_index" => &[
            ("indexrelid", Oid),
            ("indrelid", Oid),
            ("indnatts", Int),
            ("indnkeyatts", Int),
            ("indisunique", Bool),
            ("indnullsnotdistinct", Bool),
            ("indisprimary", Bool),
            ("indisexclusion", Bool),
            ("indimmediate", Bool),
            ("indisclustered", Bool),
            ("indisvalid", Bool),
            ("indcheckxmin", Bool),
            ("indisready", Bool),
            ("indislive", Bool),
            ("indisreplident", Bool),
            ("indkey", Text),
            ("indcollation", Text),
            ("indclass", Text),
            ("indoption", Text),
            ("indexprs", Text),
            ("indpred", Text),
        ],
        "pg_constraint" => &[
            ("oid", Oid),
            ("conname", Text),
            ("connamespace", Oid),
            ("contype", Text),
            ("condeferrable", Bool),
            ("condeferred", Bool),
            ("convalidated", Bool),
            ("conrelid", Oid),
            ("contypid", Oid),
            ("conindid", Oid),
            ("conparentid", Oid),
            ("confrelid", Oid),
            ("confupdtype", Text),
            ("confdeltype", Text),
            ("confmatchtype", Text),
            ("conislocal", Bool),
            ("coninhcount", Int),
            ("connoinherit", Bool),
            ("conkey", IntList),
            ("confkey", IntList),
            ("conbin", Text),
        ],
        "pg_attrdef" => &[
            ("oid", Oid),
            ("adrelid", Oid),
            ("adnum", Int),
            ("adbin", Text),
        ],
        "pg_collation" => &[
            ("oid", Oid),
            ("collname", Text),
            ("collnamespace", Oid),
            ("collowner", Oid),
            ("collprovider", Text),
            ("collisdeterministic", Bool),
            ("collencoding", Int),
            ("collcollate", Text),
            ("collctype", Text),
        ],
        "pg_inherits" => &[
            ("inhrelid", Oid),
            ("inhparent", Oid),
            ("inhseqno", Int),
            ("inhdetachpending", Bool),
        ],
        "pg_policy" => &[
            ("oid", Oid),
            ("polname", Text),
            ("polrelid", Oid),
            ("polcmd", Text),
            ("polpermissive", Bool),
            // oid[] in PostgreSQL; text here, which psql compares with '{0}' (Eddy has no
            // policies).
            ("polroles", Text),
            ("polqual", Text),
            ("polwithcheck", Text),
        ],
        "pg_statistic_ext" => &[
            ("oid", Oid),
            ("stxrelid", Oid),
            ("stxname", Text),
            ("stxnamespace", Oid),
            ("stxowner", Oid),
            ("stxstattarget", Int),
            ("stxkeys", Text),
            ("stxkind", TextList),
            ("stxexprs", Text),
        ],
        "pg_publication" => &[
            ("oid", Oid),
            ("pubname", Text),
            ("pubowner", Oid),
            ("puballtables", Bool),
            ("pubinsert", Bool),
            ("pubupdate", Bool),
            ("pubdelete", Bool),
            ("pubtruncate", Bool),
            ("pubviaroot", Bool),
        ],
        "pg_publication_rel" => &[
            ("oid", Oid),
            ("prpubid", Oid),
            ("prrelid", Oid),
            ("prqual", Text),
            ("prattrs", Text),
        ],
        "pg_publication_namespace" => &[("oid", Oid), ("pnpubid", Oid), ("pnnspid", Oid)],
        "pg_trigger" => &[
            ("oid", Oid),
            ("tgrelid", Oid),
            ("tgparentid", Oid),
            ("tgname", Text),
            ("tgfoid", Oid),
            ("tgtype", Int),
            ("tgenabled", Text),
            ("tgisinternal", Bool),
            ("tgconstrrelid", Oid),
            ("tgconstrindid", Oid),
            ("tgconstraint", Oid),
            ("tgdeferrable", Bool),
            ("tginitdeferred", Bool),
            ("tgnargs", Int),
        ],
        "pg_description" => &[
            ("objoid", Oid),
            ("classoid", Oid),
            ("objsubid", Int),
            ("description", Text),
        ],
        "pg_rewrite" => &[
            ("oid", Oid),
            ("rulename", Text),
            ("ev_class", Oid),
            ("ev_type", Text),
            ("ev_enabled", Text),
            ("is_instead", Bool),
            ("ev_qual", Text),
            ("ev_action", Text),
        ],
        "pg_shdescription" => &[("objoid", Oid), ("classoid", Oid), ("description", Text)],
        "pg_depend" => &[
            ("classid", Oid),
            ("objid", Oid),
            ("objsubid", Int),
            ("refclassid", Oid),
            ("refobjid", Oid),
            ("refobjsubid", Int),
            ("deptype", Text),
        ],
        "pg_proc" => &[
            ("oid", Oid),
            ("proname", Text),
            ("pronamespace", Oid),
            ("proowner", Oid),
            ("prolang", Oid),
            ("procost", Float),
            ("prorows", Float),
            ("provariadic", Oid),
            ("prosupport", Text),
            ("prokind", Text),
            ("prosecdef", Bool),
            ("proleakproof", Bool),
            ("proisstrict", Bool),
            ("proretset", Bool),
            ("provolatile", Text),
            ("proparallel", Text),
            ("pronargs", Int),
            ("pronargdefaults", Int),
            ("prorettype", Oid),
            ("proargtypes", Text),
            ("proallargtypes", OidList),
            ("proargmodes", TextList),
            ("proargnames", TextList),
            ("proargdefaults", Text),
            ("prosrc", Text),
            ("probin", Text),
            ("proconfig", TextList),
            ("proacl", TextList),
        ],
        "pg_database" => &[
            ("oid", Oid),
            ("datname", Text),
            ("datdba", Oid),
            ("encoding", Int),
            ("datlocprovider", Text),
            ("datistemplate", Bool),
            ("datallowconn", Bool),
            ("datconnlimit", Int),
            ("datfrozenxid", Int),
            ("datminmxid", Int),
            ("dattablespace", Oid),
            ("datcollate", Text),
            ("datctype", Text),
            ("daticulocale", Text),
            ("datcollversion", Text),
            ("datacl", TextList),
        ],
        "pg_tablespace" => &[
            ("oid", Oid),
            ("spcname", Text),
            ("spcowner", Oid),
            ("spcacl", TextList),
            ("spcoptions", TextList),
        ],
        "pg_extension" => &[
            ("oid", Oid),
            ("extname", Text),
            ("extowner", Oid),
            ("extnamespace", Oid),
            ("extrelocatable", Bool),
            ("extversion", Text),
            ("extconfig", OidList),
            ("extcondition", TextList),
        ],
        "pg_enum" => &[
            ("oid", Oid),
            ("enumtypid", Oid),
            ("enumsortorder", Float),
            ("enumlabel", Text),
        ],
        "pg_range" => &[
            ("rngtypid", Oid),
            ("rngsubtype", Oid),
            ("rngmultitypid", Oid),
            ("rngcollation", Oid),
            ("rngsubopc", Oid),
            ("rngcanonical", Text),
            ("rngsubdiff", Text),
        ],
        "pg_roles" => &[
            ("rolname", Text),
            ("rolsuper", Bool),
            ("rolinherit", Bool),
            ("rolcreaterole", Bool),
            ("rolcreatedb", Bool),
            ("rolcanlogin", Bool),
            ("rolreplication", Bool),
            ("rolconnlimit", Int),
            ("rolpassword", Text),
            ("rolvaliduntil", Text),
            ("rolbypassrls", Bool),
            ("rolconfig", TextList),
            ("oid", Oid),
        ],
        "pg_user" => &[
            ("usename", Text),
            ("usesysid", Oid),
            ("usecreatedb", Bool),
            ("usesuper", Bool),
            ("userepl", Bool),
            ("usebypassrls", Bool),
            ("passwd", Text),
            ("valuntil", Text),
            ("useconfig", TextList),
        ],
        "pg_stat_activity" => &[
            ("datid", Oid),
            ("datname", Text),
            ("pid", Int4),
            ("leader_pid", Int4),
            ("usesysid", Oid),
            ("usename", Text),
            ("application_name", Text),
            ("client_addr", Text),
            ("client_hostname", Text),
            ("client_port", Int4),
            ("backend_start", Timestamp),
            ("xact_start", Timestamp),
            ("query_start", Timestamp),
            ("state_change", Timestamp),
            ("wait_event_type", Text),
            ("wait_event", Text),
            ("state", Text),
            ("backend_xid", Text),
            ("backend_xmin", Text),
            ("query_id", Int),
            ("query", Text),
            ("backend_type", Text),
        ],
        "pg_auth_members" => &[
            ("oid", Int),
            ("roleid", Oid),
            ("member", Oid),
            ("grantor", Oid),
            ("admin_option", Bool),
        ],
        "pg_settings" => &[
            ("name", Text),
            ("setting", Text),
            ("unit", Text),
            ("category", Text),
            ("short_desc", Text),
            ("extra_desc", Text),
            ("context", Text),
            ("vartype", Text),
            ("source", Text),
            ("min_val", Text),
            ("max_val", Text),
            ("enumvals", TextList),
            ("boot_val", Text),
            ("reset_val", Text),
            ("sourcefile", Text),
            ("sourceline", Int4),
            ("pending_restart", Bool),
        ],
        "pg_tables" => &[
            ("schemaname", Text),
            ("tablename", Text),
            ("tableowner", Text),
            ("tablespace", Text),
            ("hasindexes", Bool),
            ("hasrules", Bool),
            ("hastriggers", Bool),
            ("rowsecurity", Bool),
        ],
        "pg_views" => &[
            ("schemaname", Text),
            ("viewname", Text),
            ("viewowner", Text),
            ("definition", Text),
        ],
        "pg_matviews" => &[
            ("schemaname", Text),
            ("matviewname", Text),
            ("matviewowner", Text),
            ("tablespace", Text),
            ("hasindexes", Bool),
            ("ispopulated", Bool),
            ("definition", Text),
        ],
        "pg_indexes" => &[
            ("schemaname", Text),
            ("tablename", Text),
            ("indexname", Text),
            ("tablespace", Text),
            ("indexdef", Text),
        ],
        _ => return None,
    })
}

/// A small in-memory table built from rows of scalars. A row given by name fills the columns
/// it names and leaves the others NULL.
pub(super) struct Builder {
    fields: Vec<Field>,
    rows: Vec<Vec<ScalarValue>>,
}

pub(super) fn i(v: i64) -> ScalarValue {
    ScalarValue::Int64(Some(v))
}
pub(super) fn s(v: &str) -> ScalarValue {
    ScalarValue::Utf8(Some(v.to_string()))
}
pub(super) fn b(v: bool) -> ScalarValue {
    ScalarValue::Boolean(Some(v))
}
fn f(v: f64) -> ScalarValue {
    ScalarValue::Float64(Some(v))
}
fn int_list(values: &[i64]) -> ScalarValue {
    let values: Vec<ScalarValue> = values.iter().map(|v| i(*v)).collect();
    ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Int64))
}

impl Builder {
    pub(super) fn new(fields: Vec<Field>) -> Builder {
        Builder {
            fields,
            rows: Vec::new(),
        }
    }

    fn of(name: &str) -> Builder {
        Builder::new(
            columns(name)
                .unwrap_or_default()
                .iter()
                .map(|(n, t)| Field::new(*n, t.data_type(), true))
                .collect(),
        )
    }

    /// A row of `(column, value)` pairs; unnamed columns are NULL.
    pub(super) fn row(&mut self, values: &[(&str, ScalarValue)]) {
        let row = self
            .fields
            .iter()
            .map(|field| {
                values
                    .iter()
                    .find(|(n, _)| *n == field.name())
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| {
                        ScalarValue::try_from(field.data_type()).unwrap_or(ScalarValue::Null)
                    })
            })
            .collect();
        debug_assert!(
            values
                .iter()
                .all(|(n, _)| self.fields.iter().any(|f| f.name() == n)),
            "a value for a column the table does not have: {:?}",
            values.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        self.rows.push(row);
    }

    pub(super) fn build(self) -> DfResult<Arc<dyn TableProvider>> {
        let schema = Arc::new(Schema::new(self.fields));
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (c, field) in schema.fields().iter().enumerate() {
            let values: Vec<ScalarValue> = self.rows.iter().map(|r| r[c].clone()).collect();
            let array = if values.is_empty() {
                datafusion::arrow::array::new_empty_array(field.data_type())
            } else {
                ScalarValue::iter_to_array(values)?
            };
            let array = if array.data_type() == field.data_type() {
                array
            } else {
                datafusion::arrow::compute::cast(&array, field.data_type())?
            };
            columns.push(array);
        }
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

/// The functions a session can call, for `pg_proc`: name and kind (`f`unction, `a`ggregate,
/// `w`indow); the same for every session, so listed once.
pub static FUNCTIONS: OnceLock<Vec<(String, &'static str)>> = OnceLock::new();

struct PgCatalog {
    engine: Arc<Engine>,
    settings: Settings,
}

impl fmt::Debug for PgCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PgCatalog")
    }
}

pub fn schema(engine: Arc<Engine>, settings: Settings) -> Arc<dyn SchemaProvider> {
    Arc::new(PgCatalog { engine, settings })
}

/// What each setting is, for `pg_settings.short_desc` and `SHOW ALL`.
pub(super) fn setting_description(name: &str) -> &'static str {
    match name {
        "application_name" => "Sets the application name to be reported in statistics and logs.",
        "backfill_progress_interval" => {
            "How often CREATE MATERIALIZED VIEW reports its backfill's progress (0: never)."
        }
        "client_encoding" => "Sets the client's character set encoding.",
        "client_min_messages" => "Sets the message levels that are sent to the client.",
        "datestyle" => "Sets the display format for date and time values.",
        "default_transaction_isolation" => {
            "Sets the transaction isolation level of each new transaction."
        }
        "default_transaction_read_only" => "Sets the default read-only status of new transactions.",
        "extra_float_digits" => "Sets the number of digits displayed for floating-point values.",
        "idle_in_transaction_session_timeout" => {
            "Sets the maximum allowed idle time between queries, when in a transaction."
        }
        "integer_datetimes" => "Shows whether datetimes are integer based.",
        "intervalstyle" => "Sets the display format for interval values.",
        "is_superuser" => "Shows whether the current user is a superuser.",
        "lc_messages" => "Sets the language in which messages are displayed.",
        "max_identifier_length" => "Shows the maximum identifier length.",
        "search_path" => "Sets the schema search order for names that are not schema-qualified.",
        "server_encoding" => "Shows the server (database) encoding.",
        "server_version" => "Shows the server version.",
        "server_version_num" => "Shows the server version as an integer.",
        "session_authorization" => "Sets the session user name.",
        "standard_conforming_strings" => "Causes '...' strings to treat backslashes literally.",
        "statement_timeout" => "Sets the maximum allowed duration of any statement.",
        "timezone" => "Sets the time zone for displaying and interpreting time stamps.",
        "transaction_isolation" => "Sets the current transaction's isolation level.",
        "transaction_read_only" => "Sets the current transaction's read-only status.",
        _ => "",
    }
}

impl PgCatalog {
    fn build(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let mut t = Builder::of(name);
        match name {
            "pg_namespace" => {
                for (oid, nspname) in NAMESPACES {
                    t.row(&[
                        ("oid", i(*oid)),
                        ("nspname", s(nspname)),
                        ("nspowner", i(OWNER)),
                    ]);
                }
            }
            "pg_class" => {
                for r in relations(&self.engine) {
                    t.row(&[
                        ("oid", i(r.oid)),
                        ("relname", s(&r.name)),
                        ("relnamespace", i(r.namespace)),
                        ("reltype", i(0)),
                        ("reloftype", i(0)),
                        ("relowner", i(OWNER)),
                        ("relam", i(relam(r.kind))),
                        ("relfilenode", i(r.oid)),
                        ("reltablespace", i(0)),
                        ("relpages", i(0)),
                        ("reltuples", f(r.rows)),
                        ("relallvisible", i(0)),
                        ("reltoastrelid", i(0)),
                        ("relhasindex", b(!r.primary_key.is_empty())),
                        ("relisshared", b(false)),
                        ("relpersistence", s("p")),
                        ("relkind", s(r.kind.code())),
                        ("relnatts", i(r.columns.len() as i64)),
                        ("relchecks", i(0)),
                        ("relhasrules", b(r.kind == RelKind::View)),
                        ("relhastriggers", b(false)),
                        ("relhassubclass", b(false)),
                        ("relrowsecurity", b(false)),
                        ("relforcerowsecurity", b(false)),
                        ("relispopulated", b(true)),
                        (
                            "relreplident",
                            s(match r.kind {
                                _ if r.namespace != PUBLIC_NS => "n",
                                RelKind::Table | RelKind::MaterializedView => "d",
                                _ => "n",
                            }),
                        ),
                        ("relispartition", b(false)),
                        ("relrewrite", i(0)),
                        ("relfrozenxid", i(0)),
                        ("relminmxid", i(0)),
                    ]);
                }
            }
            "pg_am" => {
                t.row(&[("oid", i(2)), ("amname", s("heap")), ("amtype", s("t"))]);
                t.row(&[("oid", i(403)), ("amname", s("btree")), ("amtype", s("i"))]);
            }
            "pg_attribute" => {
                for r in relations(&self.engine) {
                    for (n, c) in r.columns.iter().enumerate() {
                        let pg_type = TYPES.iter().find(|t| t.oid == c.type_oid);
                        let len = pg_type.map_or(-1, |t| t.len);
                        let collation = if [25, 1043].contains(&c.type_oid) {
                            100
                        } else {
                            0
                        };
                        t.row(&[
                            ("attrelid", i(r.oid)),
                            ("attname", s(&c.name)),
                            ("atttypid", i(c.type_oid)),
                            ("attstattarget", i(-1)),
                            ("attlen", i(len)),
                            ("attnum", i(n as i64 + 1)),
                            ("attndims", i(pg_type.is_none() as i64)),
                            ("attcacheoff", i(-1)),
                            ("atttypmod", i(c.typmod as i64)),
                            ("attbyval", b((1..=8).contains(&len))),
                            ("attalign", s(if len == 8 { "d" } else { "i" })),
                            ("attstorage", s(if len == -1 { "x" } else { "p" })),
                            ("attcompression", s("")),
                            ("attnotnull", b(c.not_null)),
                            ("atthasdef", b(false)),
                            ("atthasmissing", b(false)),
                            ("attidentity", s("")),
                            ("attgenerated", s("")),
                            ("attisdropped", b(false)),
                            ("attislocal", b(true)),
                            ("attinhcount", i(0)),
                            ("attcollation", i(collation)),
                        ]);
                    }
                }
            }
            "pg_type" => {
                for pt in TYPES {
                    let collation = if pt.category == "S" && pt.oid != 18 {
                        100
                    } else {
                        0
                    };
                    let base = [
                        ("typnamespace", i(PG_CATALOG_NS)),
                        ("typowner", i(OWNER)),
                        ("typtype", s("b")),
                        ("typispreferred", b(false)),
                        ("typisdefined", b(true)),
                        ("typdelim", s(",")),
                        ("typrelid", i(0)),
                        ("typnotnull", b(false)),
                        ("typbasetype", i(0)),
                        ("typtypmod", i(-1)),
                        ("typndims", i(0)),
                        ("typcollation", i(collation)),
                    ];
                    let mut row = vec![
                        ("oid", i(pt.oid)),
                        ("typname", s(pt.name)),
                        ("typlen", i(pt.len)),
                        ("typbyval", b((1..=8).contains(&pt.len))),
                        ("typcategory", s(pt.category)),
                        ("typsubscript", s("-")),
                        ("typelem", i(0)),
                        ("typarray", i(pt.array)),
                        ("typinput", s(&format!("{}in", pt.name))),
                        ("typoutput", s(&format!("{}out", pt.name))),
                        ("typreceive", s(&format!("{}recv", pt.name))),
                        ("typsend", s(&format!("{}send", pt.name))),
                        ("typalign", s(if pt.len == 8 { "d" } else { "i" })),
                        ("typstorage", s(if pt.len == -1 { "x" } else { "p" })),
                    ];
                    row.extend(base.iter().cloned());
                    t.row(&row);
                    let array_name = format!("_{}", pt.name);
                    let mut row = vec![
                        ("oid", i(pt.array)),
                        ("typname", s(&array_name)),
                        ("typlen", i(-1)),
                        ("typbyval", b(false)),
                        ("typcategory", s("A")),
                        ("typsubscript", s("array_subscript_handler")),
                        ("typelem", i(pt.oid)),
                        ("typarray", i(0)),
                        ("typinput", s("array_in")),
                        ("typoutput", s("array_out")),
                        ("typreceive", s("array_recv")),
                        ("typsend", s("array_send")),
                        ("typalign", s(if pt.len == 8 { "d" } else { "i" })),
                        ("typstorage", s("x")),
                    ];
                    row.extend(base.iter().cloned());
                    t.row(&row);
                }
            }
            "pg_index" => {
                let rels = relations(&self.engine);
                for r in &rels {
                    let Some(table) = r.indexed else { continue };
                    let n = r.columns.len() as i64;
                    let key: Vec<i64> = rels
                        .iter()
                        .find(|t| t.oid == table)
                        .map(|t| t.primary_key.iter().map(|k| *k as i64 + 1).collect())
                        .unwrap_or_default();
                    t.row(&[
                        ("indexrelid", i(r.oid)),
                        ("indrelid", i(table)),
                        ("indnatts", i(n)),
                        ("indnkeyatts", i(n)),
                        ("indisunique", b(true)),
                        ("indnullsnotdistinct", b(false)),
                        ("indisprimary", b(true)),
                        ("indisexclusion", b(false)),
                        ("indimmediate", b(true)),
                        ("indisclustered", b(false)),
                        ("indisvalid", b(true)),
                        ("indcheckxmin", b(false)),
                        ("indisready", b(true)),
                        ("indislive", b(true)),
                        ("indisreplident", b(false)),
                        (
                            "indkey",
                            s(&key
                                .iter()
                                .map(|k| k.to_string())
                                .collect::<Vec<_>>()
                                .join(" ")),
                        ),
                        ("indoption", s(&vec!["0"; key.len()].join(" "))),
                    ]);
                }
            }
            "pg_constraint" => {
                for r in relations(&self.engine) {
                    if r.primary_key.is_empty() {
                        continue;
                    }
                    let key: Vec<i64> = r.primary_key.iter().map(|k| *k as i64 + 1).collect();
                    t.row(&[
                        ("oid", i(r.oid + 1)),
                        ("conname", s(&r.pkey_name())),
                        ("connamespace", i(r.namespace)),
                        ("contype", s("p")),
                        ("condeferrable", b(false)),
                        ("condeferred", b(false)),
                        ("convalidated", b(true)),
                        ("conrelid", i(r.oid)),
                        ("contypid", i(0)),
                        ("conindid", i(r.oid + 1)),
                        ("conparentid", i(0)),
                        ("confrelid", i(0)),
                        ("conislocal", b(true)),
                        ("coninhcount", i(0)),
                        ("connoinherit", b(true)),
                        ("conkey", int_list(&key)),
                    ]);
                }
            }
            "pg_depend" => {
                for r in relations(&self.engine) {
                    for on in &r.depends_on {
                        t.row(&[
                            ("classid", i(1259)),
                            ("objid", i(r.oid)),
                            ("objsubid", i(0)),
                            ("refclassid", i(1259)),
                            ("refobjid", i(*on)),
                            ("refobjsubid", i(0)),
                            ("deptype", s("n")),
                        ]);
                    }
                }
            }
            "pg_collation" => {
                t.row(&[
                    ("oid", i(100)),
                    ("collname", s("default")),
                    ("collnamespace", i(PG_CATALOG_NS)),
                    ("collowner", i(OWNER)),
                    ("collprovider", s("d")),
                    ("collisdeterministic", b(true)),
                    ("collencoding", i(-1)),
                ]);
            }
            "pg_proc" => {
                let functions = FUNCTIONS.get().cloned().unwrap_or_default();
                for (n, (name, kind)) in functions.iter().enumerate() {
                    t.row(&[
                        ("oid", i(20_000 + n as i64)),
                        ("proname", s(name)),
                        ("pronamespace", i(PG_CATALOG_NS)),
                        ("proowner", i(OWNER)),
                        ("prolang", i(12)),
                        ("procost", f(1.0)),
                        ("prorows", f(0.0)),
                        ("provariadic", i(0)),
                        ("prosupport", s("-")),
                        ("prokind", s(kind)),
                        ("prosecdef", b(false)),
                        ("proleakproof", b(false)),
                        ("proisstrict", b(false)),
                        ("proretset", b(false)),
                        ("provolatile", s("i")),
                        ("proparallel", s("s")),
                        ("pronargs", i(0)),
                        ("pronargdefaults", i(0)),
                        ("prorettype", i(0)),
                        ("proargtypes", s("")),
                        ("prosrc", s(name)),
                    ]);
                }
            }
            "pg_database" => {
                t.row(&[
                    ("oid", i(DATABASE_OID)),
                    ("datname", s(DATABASE)),
                    ("datdba", i(OWNER)),
                    ("encoding", i(6)),
                    ("datlocprovider", s("c")),
                    ("datistemplate", b(false)),
                    ("datallowconn", b(true)),
                    ("datconnlimit", i(-1)),
                    ("datfrozenxid", i(0)),
                    ("datminmxid", i(1)),
                    ("dattablespace", i(1663)),
                    ("datcollate", s("C.UTF-8")),
                    ("datctype", s("C.UTF-8")),
                ]);
            }
            "pg_tablespace" => {
                for (oid, name) in [(1663, "pg_default"), (1664, "pg_global")] {
                    t.row(&[
                        ("oid", i(oid)),
                        ("spcname", s(name)),
                        ("spcowner", i(OWNER)),
                    ]);
                }
            }
            "pg_roles" | "pg_user" => {
                for role in self.engine.catalog().roles() {
                    let hidden = s("********");
                    if name == "pg_roles" {
                        t.row(&[
                            ("rolname", s(&role.name)),
                            ("rolsuper", b(role.superuser)),
                            ("rolinherit", b(true)),
                            ("rolcreaterole", b(role.superuser)),
                            ("rolcreatedb", b(role.superuser)),
                            ("rolcanlogin", b(role.login)),
                            ("rolreplication", b(false)),
                            ("rolconnlimit", i(-1)),
                            ("rolpassword", hidden),
                            ("rolbypassrls", b(role.superuser)),
                            ("oid", i(role_oid(&role.name))),
                        ]);
                    } else if role.login {
                        t.row(&[
                            ("usename", s(&role.name)),
                            ("usesysid", i(role_oid(&role.name))),
                            ("usecreatedb", b(role.superuser)),
                            ("usesuper", b(role.superuser)),
                            ("userepl", b(false)),
                            ("usebypassrls", b(role.superuser)),
                            ("passwd", hidden),
                        ]);
                    }
                }
            }
            "pg_stat_activity" => {
                let time = |t: std::time::SystemTime| {
                    let us = t
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as i64);
                    ScalarValue::TimestampMicrosecond(Some(us), Some("+00:00".into()))
                };
                let null_time = ScalarValue::TimestampMicrosecond(None, Some("+00:00".into()));
                let time_or_null =
                    |t: Option<std::time::SystemTime>| t.map_or(null_time.clone(), time);
                // As in PostgreSQL, what another role's session is doing is for superusers.
                let reader = self.settings.lock().get("session_authorization").cloned();
                let superuser = reader
                    .as_deref()
                    .and_then(|r| self.engine.catalog().role(r))
                    .is_some_and(|r| r.superuser);
                for backend in self.engine.backends().list() {
                    let mut row = vec![
                        ("datid", i(DATABASE_OID)),
                        ("datname", s(DATABASE)),
                        ("pid", ScalarValue::Int32(Some(backend.pid))),
                        ("usesysid", i(role_oid(&backend.user))),
                        ("usename", s(&backend.user)),
                        ("application_name", s(&backend.application_name())),
                        ("backend_start", time(backend.started)),
                        ("backend_type", s("client backend")),
                    ];
                    if !superuser && reader.as_deref() != Some(backend.user.as_str()) {
                        row.push(("query", s("<insufficient privilege>")));
                        t.row(&row);
                        continue;
                    }
                    let a = backend.activity();
                    // Waiting for the client's next message, as PostgreSQL reports it.
                    let (wait_event_type, wait_event) = if a.state == "active" {
                        (ScalarValue::Utf8(None), ScalarValue::Utf8(None))
                    } else {
                        (s("Client"), s("ClientRead"))
                    };
                    row.extend([
                        (
                            "client_addr",
                            backend
                                .client
                                .map_or(ScalarValue::Utf8(None), |c| s(&c.ip().to_string())),
                        ),
                        (
                            "client_port",
                            ScalarValue::Int32(Some(
                                backend.client.map_or(-1, |c| c.port().into()),
                            )),
                        ),
                        ("xact_start", time_or_null(a.xact_start)),
                        ("query_start", time_or_null(a.query_start)),
                        ("state_change", time(a.state_change)),
                        ("wait_event_type", wait_event_type),
                        ("wait_event", wait_event),
                        ("state", s(a.state)),
                        ("query", s(&a.query)),
                    ]);
                    t.row(&row);
                }
            }
            "pg_settings" => {
                let defaults = super::session::default_settings();
                let settings = self.settings.lock().clone();
                for (name, value) in &settings {
                    let read_only = super::session::READ_ONLY_SETTINGS.contains(&name.as_str());
                    let default = defaults.get(name);
                    t.row(&[
                        ("name", s(name)),
                        ("setting", s(value)),
                        ("category", s("Client Connection Defaults")),
                        ("short_desc", s(setting_description(name))),
                        ("context", s(if read_only { "internal" } else { "user" })),
                        (
                            "vartype",
                            s(if name == "extra_float_digits" {
                                "integer"
                            } else {
                                "string"
                            }),
                        ),
                        (
                            "source",
                            s(if default == Some(value) {
                                "default"
                            } else {
                                "session"
                            }),
                        ),
                        ("boot_val", default.map_or_else(|| s(value), |d| s(d))),
                        ("reset_val", default.map_or_else(|| s(value), |d| s(d))),
                        ("pending_restart", b(false)),
                    ]);
                }
            }
            "pg_tables" => {
                for r in relations(&self.engine) {
                    if r.kind != RelKind::Table {
                        continue;
                    }
                    t.row(&[
                        ("schemaname", s(r.schema())),
                        ("tablename", s(&r.name)),
                        ("tableowner", s("eddy")),
                        ("hasindexes", b(!r.primary_key.is_empty())),
                        ("hasrules", b(false)),
                        ("hastriggers", b(false)),
                        ("rowsecurity", b(false)),
                    ]);
                }
            }
            "pg_views" | "pg_matviews" => {
                let kind = if name == "pg_views" {
                    RelKind::View
                } else {
                    RelKind::MaterializedView
                };
                for r in relations(&self.engine) {
                    if r.kind != kind {
                        continue;
                    }
                    let definition = r.definition.as_deref().map(view_definition);
                    if kind == RelKind::View {
                        t.row(&[
                            ("schemaname", s(r.schema())),
                            ("viewname", s(&r.name)),
                            ("viewowner", s("eddy")),
                            (
                                "definition",
                                definition.map_or(ScalarValue::Utf8(None), |d| s(&d)),
                            ),
                        ]);
                    } else {
                        t.row(&[
                            ("schemaname", s(r.schema())),
                            ("matviewname", s(&r.name)),
                            ("matviewowner", s("eddy")),
                            ("hasindexes", b(false)),
                            ("ispopulated", b(true)),
                            (
                                "definition",
                                definition.map_or(ScalarValue::Utf8(None), |d| s(&d)),
                            ),
                        ]);
                    }
                }
            }
            "pg_indexes" => {
                let rels = relations(&self.engine);
                for r in &rels {
                    let Some(table) = r.indexed else { continue };
                    let Some(table) = rels.iter().find(|t| t.oid == table) else {
                        continue;
                    };
                    t.row(&[
                        ("schemaname", s(r.schema())),
                        ("tablename", s(&table.name)),
                        ("indexname", s(&r.name)),
                        ("indexdef", s(&index_definition(table))),
                    ]);
                }
            }
            _ if columns(name).is_some() => {} // catalogs Eddy keeps empty
            _ => return Ok(None),
        }
        Ok(Some(t.build()?))
    }
}

fn relam(kind: RelKind) -> i64 {
    match kind {
        RelKind::Table | RelKind::MaterializedView => 2,
        RelKind::Index => 403,
        RelKind::View => 0,
    }
}

/// A view's query as `pg_get_viewdef` prints it: on its own line after a space, ending in `;`.
pub fn view_definition(query: &str) -> String {
    format!(" {query};")
}

/// `CREATE UNIQUE INDEX … USING btree (…)` for a table's primary key.
pub fn index_definition(table: &Relation) -> String {
    let cols: Vec<String> = table
        .primary_key
        .iter()
        .map(|k| crate::catalog::quote_ident(&table.columns[*k].name))
        .collect();
    format!(
        "CREATE UNIQUE INDEX {} ON {}.{} USING btree ({})",
        crate::catalog::quote_ident(&table.pkey_name()),
        table.schema(),
        crate::catalog::quote_ident(&table.name),
        cols.join(", ")
    )
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
        assert_eq!(format_type(1009, -1).as_deref(), Some("text[]"));
        assert_eq!(format_type(99999, -1), None);
    }

    #[test]
    fn qualified_names_split_and_fold_like_postgres() {
        assert_eq!(split_qualified("Bids"), (None, "bids".into()));
        assert_eq!(
            split_qualified("pg_catalog.pg_class"),
            (Some("pg_catalog".into()), "pg_class".into())
        );
        assert_eq!(
            split_qualified("public.\"My \"\"T\"\".x\""),
            (Some("public".into()), "My \"T\".x".into())
        );
    }

    #[test]
    fn every_catalog_table_has_columns() {
        for name in TABLE_NAMES {
            assert!(columns(name).is_some(), "{name}");
        }
    }
}
