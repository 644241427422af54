//! `information_schema`, as PostgreSQL defines it (SQL-standard names and PostgreSQL's type
//! names), built from the same relations as `pg_catalog` each time it is scanned. It replaces
//! DataFusion's own, whose `data_type` column holds Arrow type names.
//!
//! Materialized views are listed in `tables` with `table_type` 'MATERIALIZED VIEW' (as
//! RisingWave does; PostgreSQL leaves them out), so tools that list tables from here — Grafana,
//! many GUI clients — offer them, which is what Eddy's users read.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;

use super::Engine;
use super::pg_catalog::{
    Attribute, Builder, DATABASE, NAMESPACES, RelKind, format_type, i, relations, s,
};
use crate::types::SqlType;

pub const TABLE_NAMES: &[&str] = &[
    "columns",
    "key_column_usage",
    "referential_constraints",
    "routines",
    "schemata",
    "table_constraints",
    "tables",
    "views",
];

fn text(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}
fn int(name: &str) -> Field {
    Field::new(name, DataType::Int64, true)
}

/// The columns of each table.
pub fn columns(name: &str) -> Vec<Field> {
    let t = |names: &[&str]| names.iter().map(|n| text(n)).collect::<Vec<_>>();
    match name {
        "schemata" => t(&[
            "catalog_name",
            "schema_name",
            "schema_owner",
            "default_character_set_catalog",
            "default_character_set_schema",
            "default_character_set_name",
            "sql_path",
        ]),
        "tables" => t(&[
            "table_catalog",
            "table_schema",
            "table_name",
            "table_type",
            "self_referencing_column_name",
            "reference_generation",
            "user_defined_type_catalog",
            "user_defined_type_schema",
            "user_defined_type_name",
            "is_insertable_into",
            "is_typed",
            "commit_action",
        ]),
        "views" => t(&[
            "table_catalog",
            "table_schema",
            "table_name",
            "view_definition",
            "check_option",
            "is_updatable",
            "is_insertable_into",
            "is_trigger_updatable",
            "is_trigger_deletable",
            "is_trigger_insertable_into",
        ]),
        "columns" => {
            let mut c = t(&["table_catalog", "table_schema", "table_name", "column_name"]);
            c.push(int("ordinal_position"));
            c.extend(t(&["column_default", "is_nullable", "data_type"]));
            c.extend(
                [
                    "character_maximum_length",
                    "character_octet_length",
                    "numeric_precision",
                    "numeric_precision_radix",
                    "numeric_scale",
                    "datetime_precision",
                ]
                .map(int),
            );
            c.extend(t(&["interval_type"]));
            c.push(int("interval_precision"));
            c.extend(t(&[
                "character_set_catalog",
                "character_set_schema",
                "character_set_name",
                "collation_catalog",
                "collation_schema",
                "collation_name",
                "domain_catalog",
                "domain_schema",
                "domain_name",
                "udt_catalog",
                "udt_schema",
                "udt_name",
                "scope_catalog",
                "scope_schema",
                "scope_name",
            ]));
            c.push(int("maximum_cardinality"));
            c.extend(t(&[
                "dtd_identifier",
                "is_self_referencing",
                "is_identity",
                "identity_generation",
                "identity_start",
                "identity_increment",
                "identity_maximum",
                "identity_minimum",
                "identity_cycle",
                "is_generated",
                "generation_expression",
                "is_updatable",
            ]));
            c
        }
        "table_constraints" => t(&[
            "constraint_catalog",
            "constraint_schema",
            "constraint_name",
            "table_catalog",
            "table_schema",
            "table_name",
            "constraint_type",
            "is_deferrable",
            "initially_deferred",
            "enforced",
            "nulls_distinct",
        ]),
        "key_column_usage" => {
            let mut c = t(&[
                "constraint_catalog",
                "constraint_schema",
                "constraint_name",
                "table_catalog",
                "table_schema",
                "table_name",
                "column_name",
            ]);
            c.push(int("ordinal_position"));
            c.push(int("position_in_unique_constraint"));
            c
        }
        "referential_constraints" => t(&[
            "constraint_catalog",
            "constraint_schema",
            "constraint_name",
            "unique_constraint_catalog",
            "unique_constraint_schema",
            "unique_constraint_name",
            "match_option",
            "update_rule",
            "delete_rule",
        ]),
        "routines" => t(&[
            "specific_catalog",
            "specific_schema",
            "specific_name",
            "routine_catalog",
            "routine_schema",
            "routine_name",
            "routine_type",
            "data_type",
            "routine_definition",
            "external_language",
        ]),
        _ => vec![],
    }
}

struct InformationSchema {
    engine: Arc<Engine>,
}

impl fmt::Debug for InformationSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InformationSchema")
    }
}

pub fn schema(engine: Arc<Engine>) -> Arc<dyn SchemaProvider> {
    Arc::new(InformationSchema { engine })
}

fn yes_no(v: bool) -> ScalarValue {
    s(if v { "YES" } else { "NO" })
}

fn null_int() -> ScalarValue {
    ScalarValue::Int64(None)
}

fn table_type(kind: RelKind) -> &'static str {
    match kind {
        RelKind::Table => "BASE TABLE",
        RelKind::View => "VIEW",
        RelKind::MaterializedView => "MATERIALIZED VIEW",
        RelKind::Index => "INDEX",
    }
}

/// `columns`' type description of a column: data_type, the length/precision columns, udt_name.
/// (`position` is the column's, 1-based.)
fn column_type(c: &Attribute, position: usize) -> Vec<(&'static str, ScalarValue)> {
    let udt = super::pg_catalog::TYPES
        .iter()
        .find(|t| t.oid == c.type_oid)
        .map(|t| t.name.to_string())
        .or_else(|| {
            super::pg_catalog::TYPES
                .iter()
                .find(|t| t.array == c.type_oid)
                .map(|t| format!("_{}", t.name))
        })
        .unwrap_or_else(|| "text".into());
    let is_array = udt.starts_with('_');
    let data_type = if is_array {
        "ARRAY".to_string()
    } else {
        format_type(c.type_oid, -1).unwrap_or_else(|| "text".into())
    };
    let mut out = vec![
        ("data_type", s(&data_type)),
        ("udt_catalog", s(DATABASE)),
        ("udt_schema", s("pg_catalog")),
        ("udt_name", s(&udt)),
        ("dtd_identifier", s(&position.to_string())),
    ];
    let (max_len, octet_len, precision, radix, scale, datetime) = match c.sql_type() {
        Some(SqlType::Varchar(n)) => (
            n.map(|n| n as i64),
            Some(n.map_or(1_073_741_824, |n| n as i64 * 4)),
            None,
            None,
            None,
            None,
        ),
        Some(SqlType::Text) => (None, Some(1_073_741_824), None, None, None, None),
        Some(SqlType::SmallInt) => (None, None, Some(16), Some(2), Some(0), None),
        Some(SqlType::Integer) => (None, None, Some(32), Some(2), Some(0), None),
        Some(SqlType::BigInt) => (None, None, Some(64), Some(2), Some(0), None),
        Some(SqlType::Real) => (None, None, Some(24), Some(2), None, None),
        Some(SqlType::Double) => (None, None, Some(53), Some(2), None, None),
        Some(SqlType::Numeric(ps)) => (
            None,
            None,
            ps.map(|(p, _)| p as i64),
            Some(10),
            ps.map(|(_, s)| s as i64),
            None,
        ),
        Some(SqlType::Date) => (None, None, None, None, None, Some(0)),
        Some(SqlType::Time | SqlType::Timestamp | SqlType::TimestampTz | SqlType::Interval) => {
            (None, None, None, None, None, Some(6))
        }
        _ => (None, None, None, None, None, None),
    };
    let opt = |v: Option<i64>| v.map_or_else(null_int, i);
    out.extend([
        ("character_maximum_length", opt(max_len)),
        ("character_octet_length", opt(octet_len)),
        ("numeric_precision", opt(precision)),
        ("numeric_precision_radix", opt(radix)),
        ("numeric_scale", opt(scale)),
        ("datetime_precision", opt(datetime)),
    ]);
    out
}

impl InformationSchema {
    fn build(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if !TABLE_NAMES.contains(&name) {
            return Ok(None);
        }
        let mut t = Builder::new(columns(name));
        let rels = || {
            relations(&self.engine)
                .into_iter()
                .filter(|r| r.kind != RelKind::Index)
        };
        match name {
            "schemata" => {
                for (_, schema) in NAMESPACES {
                    t.row(&[
                        ("catalog_name", s(DATABASE)),
                        ("schema_name", s(schema)),
                        ("schema_owner", s("eddy")),
                    ]);
                }
            }
            "tables" => {
                for r in rels() {
                    t.row(&[
                        ("table_catalog", s(DATABASE)),
                        ("table_schema", s(r.schema())),
                        ("table_name", s(&r.name)),
                        ("table_type", s(table_type(r.kind))),
                        ("is_insertable_into", yes_no(r.kind == RelKind::Table)),
                        ("is_typed", s("NO")),
                    ]);
                }
            }
            "views" => {
                for r in rels().filter(|r| r.kind == RelKind::View) {
                    t.row(&[
                        ("table_catalog", s(DATABASE)),
                        ("table_schema", s(r.schema())),
                        ("table_name", s(&r.name)),
                        (
                            "view_definition",
                            r.definition
                                .as_deref()
                                .map_or(ScalarValue::Utf8(None), |d| {
                                    s(&super::pg_catalog::view_definition(d))
                                }),
                        ),
                        ("check_option", s("NONE")),
                        ("is_updatable", s("NO")),
                        ("is_insertable_into", s("NO")),
                        ("is_trigger_updatable", s("NO")),
                        ("is_trigger_deletable", s("NO")),
                        ("is_trigger_insertable_into", s("NO")),
                    ]);
                }
            }
            "columns" => {
                for r in rels() {
                    for (n, c) in r.columns.iter().enumerate() {
                        let mut row = vec![
                            ("table_catalog", s(DATABASE)),
                            ("table_schema", s(r.schema())),
                            ("table_name", s(&r.name)),
                            ("column_name", s(&c.name)),
                            ("ordinal_position", i(n as i64 + 1)),
                            ("is_nullable", yes_no(!c.not_null)),
                            ("is_self_referencing", s("NO")),
                            ("is_identity", s("NO")),
                            ("identity_cycle", s("NO")),
                            ("is_generated", s("NEVER")),
                            ("is_updatable", yes_no(r.kind == RelKind::Table)),
                        ];
                        row.extend(column_type(c, n + 1));
                        t.row(&row);
                    }
                }
            }
            "table_constraints" | "key_column_usage" => {
                for r in rels().filter(|r| !r.primary_key.is_empty()) {
                    let common = [
                        ("constraint_catalog", s(DATABASE)),
                        ("constraint_schema", s(r.schema())),
                        ("constraint_name", s(&r.pkey_name())),
                        ("table_catalog", s(DATABASE)),
                        ("table_schema", s(r.schema())),
                        ("table_name", s(&r.name)),
                    ];
                    if name == "table_constraints" {
                        let mut row = common.to_vec();
                        row.extend([
                            ("constraint_type", s("PRIMARY KEY")),
                            ("is_deferrable", s("NO")),
                            ("initially_deferred", s("NO")),
                            ("enforced", s("YES")),
                            ("nulls_distinct", s("YES")),
                        ]);
                        t.row(&row);
                        continue;
                    }
                    for (n, k) in r.primary_key.iter().enumerate() {
                        let mut row = common.to_vec();
                        row.extend([
                            ("column_name", s(&r.columns[*k].name)),
                            ("ordinal_position", i(n as i64 + 1)),
                        ]);
                        t.row(&row);
                    }
                }
            }
            _ => {} // referential_constraints, routines: Eddy has no foreign keys or routines
        }
        Ok(Some(t.build()?))
    }
}

#[async_trait]
impl SchemaProvider for InformationSchema {
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
