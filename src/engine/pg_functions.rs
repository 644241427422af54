//! The PostgreSQL catalog and system functions that psql, drivers, GUI clients and Grafana
//! call: `format_type`, `pg_get_viewdef`, `pg_size_pretty`, `current_setting`, the
//! `*_is_visible` and `has_*_privilege` checks, and the lookups that stand for casts to
//! `regclass`/`regtype`/`regproc`/`regnamespace` of a string literal (see
//! `sql::rewrite_catalog_idioms`).

use std::fmt;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use datafusion::common::DFSchema;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawFieldAccessExpr};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, GetFieldAccess, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

use super::Engine;
use super::pg_catalog::{self, RelKind, Settings, TYPES};
use crate::error::sqlstate;

/// The catalog functions, by what they compute.
#[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
enum PgFn {
    GetUserById,
    /// In a schema on the search path (`public`, `pg_catalog`).
    TableIsVisible,
    IsVisible,
    IsPublishable,
    FormatType,
    /// Descriptions, expressions and definitions of things Eddy does not have: NULL.
    Null,
    EncodingToChar,
    GetIndexDef,
    GetConstraintDef,
    GetViewDef,
    CurrentSchema,
    CurrentSchemas,
    Version,
    SizePretty,
    RelationSize,
    TablespaceLocation,
    HasPrivilege,
    IsInRecovery,
    StartTime,
    CurrentSetting,
    SetConfig,
    QuoteIdent,
    RegClass,
    ToRegClass,
    RegType,
    ToRegType,
    RegProc,
    RegNamespace,
    /// `array_lower(a, 1)`/`array_upper(a, 1)`: the bounds of a one-dimensional array.
    ArrayLower,
    ArrayUpper,
    /// `parse_ident('a."B"')`: the parts of a qualified name, as `text[]`.
    ParseIdent,
    /// `indkey[0]`: an element of an `int2vector`/`oidvector` (text such as `"1 2"` in Eddy's
    /// catalogs), whose subscripts start at 0; planned by [`VectorSubscripts`].
    VectorElement,
    /// Statistics counters Eddy does not keep (`pg_stat_get_numscans`): 0.
    StatCounter,
    /// `pg_database_size(oid | name)`: the relations' estimated sizes added up.
    DatabaseSize,
    /// `pg_advisory_unlock_all()`: Eddy has no advisory locks, so none is held to release
    /// (connection pools call it on release); void, sent as an empty string.
    Void,
    /// `information_schema._pg_expandarray(a)` as an array of (x, n) records, unnested by the
    /// rewrite in `sql` (`int2vector` text such as pg_index.indkey "1 2" is read as an array).
    ExpandArray,
}

const FUNCTIONS: &[(PgFn, &str)] = &[
    (PgFn::GetUserById, "pg_get_userbyid"),
    (PgFn::TableIsVisible, "pg_table_is_visible"),
    (PgFn::IsVisible, "pg_type_is_visible"),
    (PgFn::IsVisible, "pg_function_is_visible"),
    (PgFn::IsVisible, "pg_collation_is_visible"),
    (PgFn::IsVisible, "pg_operator_is_visible"),
    (PgFn::IsVisible, "pg_opclass_is_visible"),
    (PgFn::IsVisible, "pg_conversion_is_visible"),
    (PgFn::IsVisible, "pg_statistics_obj_is_visible"),
    (PgFn::IsPublishable, "pg_relation_is_publishable"),
    (PgFn::FormatType, "format_type"),
    (PgFn::Null, "pg_get_expr"),
    (PgFn::Null, "obj_description"),
    (PgFn::Null, "col_description"),
    (PgFn::Null, "shobj_description"),
    (PgFn::Null, "pg_get_statisticsobjdef_columns"),
    (PgFn::Null, "pg_get_partkeydef"),
    (PgFn::Null, "pg_get_serial_sequence"),
    (PgFn::Null, "pg_get_function_arguments"),
    (PgFn::Null, "pg_get_function_result"),
    (PgFn::Null, "pg_get_function_identity_arguments"),
    (PgFn::Null, "pg_get_triggerdef"),
    (PgFn::Null, "pg_get_ruledef"),
    (PgFn::EncodingToChar, "pg_encoding_to_char"),
    (PgFn::GetIndexDef, "pg_get_indexdef"),
    (PgFn::GetConstraintDef, "pg_get_constraintdef"),
    (PgFn::GetViewDef, "pg_get_viewdef"),
    (PgFn::CurrentSchema, "current_schema"),
    (PgFn::CurrentSchemas, "current_schemas"),
    (PgFn::Version, "version"),
    (PgFn::SizePretty, "pg_size_pretty"),
    (PgFn::RelationSize, "pg_table_size"),
    (PgFn::RelationSize, "pg_relation_size"),
    (PgFn::RelationSize, "pg_total_relation_size"),
    (PgFn::RelationSize, "pg_indexes_size"),
    (PgFn::TablespaceLocation, "pg_tablespace_location"),
    (PgFn::HasPrivilege, "has_table_privilege"),
    (PgFn::HasPrivilege, "has_schema_privilege"),
    (PgFn::HasPrivilege, "has_database_privilege"),
    (PgFn::HasPrivilege, "has_column_privilege"),
    (PgFn::HasPrivilege, "has_any_column_privilege"),
    (PgFn::HasPrivilege, "has_function_privilege"),
    (PgFn::HasPrivilege, "has_sequence_privilege"),
    (PgFn::HasPrivilege, "has_tablespace_privilege"),
    (PgFn::HasPrivilege, "pg_has_role"),
    (PgFn::IsInRecovery, "pg_is_in_recovery"),
    (PgFn::StartTime, "pg_postmaster_start_time"),
    (PgFn::StartTime, "pg_conf_load_time"),
    (PgFn::CurrentSetting, "current_setting"),
    (PgFn::SetConfig, "set_config"),
    (PgFn::QuoteIdent, "quote_ident"),
    (PgFn::RegClass, REGCLASS),
    (PgFn::ToRegClass, "to_regclass"),
    (PgFn::RegType, REGTYPE),
    (PgFn::ToRegType, "to_regtype"),
    (PgFn::RegProc, REGPROC),
    (PgFn::RegNamespace, REGNAMESPACE),
    (PgFn::ArrayLower, "array_lower"),
    (PgFn::ArrayUpper, "array_upper"),
    (PgFn::ParseIdent, "parse_ident"),
    (PgFn::VectorElement, VECTOR_ELEMENT),
    (PgFn::StatCounter, "pg_stat_get_numscans"),
    (PgFn::DatabaseSize, "pg_database_size"),
    (PgFn::Void, "pg_advisory_unlock_all"),
    (PgFn::ExpandArray, "eddy_expandarray"),
];

/// The functions `'literal'::regclass` (…) are rewritten into.
pub const REGCLASS: &str = "eddy_regclass";
pub const REGTYPE: &str = "eddy_regtype";
pub const REGPROC: &str = "eddy_regproc";
pub const REGNAMESPACE: &str = "eddy_regnamespace";
/// The function `vector[i]` is planned as when `vector` is text (see [`VectorSubscripts`]).
const VECTOR_ELEMENT: &str = "eddy_vector_element";

static STARTED: OnceLock<i64> = OnceLock::new();

/// When the server started (`pg_postmaster_start_time()`), as microseconds since the epoch.
pub fn note_start() {
    STARTED.get_or_init(|| chrono::Utc::now().timestamp_micros());
}

#[derive(Clone)]
struct Shared {
    engine: Arc<Engine>,
    settings: Settings,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Session")
    }
}

/// Functions are compared by what they compute; one session registers each once.
impl PartialEq for Shared {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.settings, &other.settings)
    }
}
impl Eq for Shared {}
impl std::hash::Hash for Shared {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.settings) as usize).hash(state)
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct PgFunction {
    kind: PgFn,
    name: &'static str,
    signature: Signature,
    shared: Shared,
}

fn external(e: crate::error::Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// `pg_size_pretty`: PostgreSQL's rounding, in bytes up to 10 kB, then kB, MB, GB, TB, PB.
pub fn size_pretty(size: i64) -> String {
    const LIMIT: i64 = 10 * 1024;
    const LIMIT2: i64 = LIMIT * 2 - 1;
    if size.abs() < LIMIT {
        return format!("{size} bytes");
    }
    let half_rounded = |x: i64| (x + if x < 0 { -1 } else { 1 }) / 2;
    // One extra bit is kept for rounding.
    let mut size = size >> 9;
    for unit in ["kB", "MB", "GB", "TB"] {
        if size.abs() < LIMIT2 {
            return format!("{} {unit}", half_rounded(size));
        }
        size >>= 10;
    }
    format!("{} PB", half_rounded(size))
}

/// The oid of a type named as `'name'::regtype` would look it up.
fn type_by_name(name: &str) -> Option<i64> {
    let (_, name) = pg_catalog::split_qualified(name);
    let name = name.trim();
    if let Some(elem) = name.strip_suffix("[]") {
        let elem = type_by_name(elem)?;
        return TYPES.iter().find(|t| t.oid == elem).map(|t| t.array);
    }
    if let Some(t) = TYPES
        .iter()
        .find(|t| t.name == name || format!("_{}", t.name) == name)
    {
        return Some(if t.name == name { t.oid } else { t.array });
    }
    let aliases: &[(&str, i64)] = &[
        ("boolean", 16),
        ("bigint", 20),
        ("smallint", 21),
        ("integer", 23),
        ("int", 23),
        ("real", 700),
        ("double precision", 701),
        ("character varying", 1043),
        ("timestamp without time zone", 1114),
        ("timestamp with time zone", 1184),
        ("time without time zone", 1083),
        ("decimal", 1700),
        ("\"char\"", 18),
    ];
    aliases.iter().find(|(a, _)| *a == name).map(|(_, o)| *o)
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
            PgFn::TableIsVisible
            | PgFn::IsVisible
            | PgFn::IsPublishable
            | PgFn::HasPrivilege
            | PgFn::IsInRecovery => DataType::Boolean,
            PgFn::RelationSize
            | PgFn::RegClass
            | PgFn::ToRegClass
            | PgFn::RegType
            | PgFn::ToRegType
            | PgFn::RegNamespace
            | PgFn::ArrayLower
            | PgFn::ArrayUpper
            | PgFn::VectorElement
            | PgFn::StatCounter
            | PgFn::DatabaseSize => DataType::Int64,
            PgFn::StartTime => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            PgFn::CurrentSchemas | PgFn::ParseIdent => {
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
            }
            PgFn::ExpandArray => expand_array_type(),
            _ => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<DfResult<_>>()?;
        let int_arg = |k: usize| -> DfResult<Vec<Option<i64>>> {
            match arrays.get(k) {
                None => Ok(vec![None; n]),
                Some(a) if matches!(a.data_type(), DataType::Utf8 | DataType::Utf8View) => {
                    Ok(text_values(a)?
                        .iter()
                        .map(|t| t.as_deref().and_then(|t| t.parse().ok()))
                        .collect())
                }
                Some(a) => {
                    let a = datafusion::arrow::compute::cast(a, &DataType::Int64)?;
                    Ok(a.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                        .iter()
                        .collect())
                }
            }
        };
        let text_arg = |k: usize| -> DfResult<Vec<Option<String>>> {
            match arrays.get(k) {
                None => Ok(vec![None; n]),
                Some(a) => text_values(a),
            }
        };
        let text = |values: Vec<Option<String>>| -> ColumnarValue {
            ColumnarValue::Array(Arc::new(StringArray::from(values)))
        };
        let ints = |values: Vec<Option<i64>>| -> ColumnarValue {
            ColumnarValue::Array(Arc::new(Int64Array::from(values)))
        };
        let engine = &self.shared.engine;
        Ok(match self.kind {
            PgFn::GetUserById => text(vec![Some("eddy".into()); n]),
            PgFn::IsVisible | PgFn::HasPrivilege => {
                ColumnarValue::Array(Arc::new(BooleanArray::from(vec![true; n])))
            }
            PgFn::TableIsVisible => {
                let rels = pg_catalog::relations(engine);
                let visible: BooleanArray = int_arg(0)?
                    .into_iter()
                    .map(|o| {
                        let r = rels.iter().find(|r| Some(r.oid) == o)?;
                        Some(
                            [pg_catalog::PUBLIC_NS, pg_catalog::PG_CATALOG_NS]
                                .contains(&r.namespace),
                        )
                    })
                    .collect();
                ColumnarValue::Array(Arc::new(visible))
            }
            PgFn::IsPublishable | PgFn::IsInRecovery => {
                ColumnarValue::Array(Arc::new(BooleanArray::from(vec![false; n])))
            }
            PgFn::EncodingToChar => text(vec![Some("UTF8".into()); n]),
            PgFn::Void => text(vec![Some(String::new()); n]),
            PgFn::Null => ColumnarValue::Scalar(ScalarValue::Utf8(None)),
            PgFn::TablespaceLocation => text(vec![Some(String::new()); n]),
            PgFn::CurrentSchema => ColumnarValue::Scalar(ScalarValue::Utf8(Some("public".into()))),
            PgFn::CurrentSchemas => {
                let implicit = arrays
                    .first()
                    .and_then(|a| a.as_boolean_opt().map(|b| b.value(0)))
                    .unwrap_or(false);
                let mut schemas = vec![];
                if implicit {
                    schemas.push(ScalarValue::from("pg_catalog"));
                }
                schemas.push(ScalarValue::from("public"));
                ColumnarValue::Scalar(ScalarValue::List(ScalarValue::new_list_nullable(
                    &schemas,
                    &DataType::Utf8,
                )))
            }
            PgFn::Version => ColumnarValue::Scalar(ScalarValue::Utf8(Some(format!(
                "PostgreSQL {} (Eddy {}), a streaming SQL database",
                crate::SERVER_VERSION,
                env!("CARGO_PKG_VERSION")
            )))),
            PgFn::StartTime => ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(
                STARTED.get().copied(),
                Some("+00:00".into()),
            )),
            PgFn::FormatType => {
                let oids = int_arg(0)?;
                let mods = int_arg(1)?;
                text(
                    oids.iter()
                        .zip(mods)
                        .map(|(o, m)| o.and_then(|o| pg_catalog::format_type(o, m.unwrap_or(-1))))
                        .collect(),
                )
            }
            PgFn::SizePretty => text(
                int_arg(0)?
                    .into_iter()
                    .map(|v| v.map(size_pretty))
                    .collect(),
            ),
            PgFn::RelationSize => {
                let rels = pg_catalog::relations(engine);
                let index = self.name == "pg_indexes_size";
                // PostgreSQL casts a name to regclass: `pg_table_size('users')`.
                let oids = match arrays.first() {
                    Some(a) if matches!(a.data_type(), DataType::Utf8 | DataType::Utf8View) => {
                        let mut oids = Vec::with_capacity(n);
                        for name in text_arg(0)? {
                            oids.push(match name {
                                Some(name) => Some(
                                    name.parse()
                                        .ok()
                                        .or_else(|| pg_catalog::regclass(engine, &name))
                                        .ok_or_else(|| {
                                            external(crate::err!(
                                                sqlstate::UNDEFINED_TABLE,
                                                "relation \"{name}\" does not exist"
                                            ))
                                        })?,
                                ),
                                None => None,
                            });
                        }
                        oids
                    }
                    _ => int_arg(0)?,
                };
                ints(
                    oids.into_iter()
                        .map(|o| {
                            let r = rels.iter().find(|r| Some(r.oid) == o)?;
                            Some(if index { 0 } else { r.estimated_bytes() })
                        })
                        .collect(),
                )
            }
            PgFn::GetIndexDef | PgFn::GetConstraintDef | PgFn::GetViewDef => {
                let rels = pg_catalog::relations(engine);
                // pg_get_viewdef also takes the view's name.
                let keys: Vec<Option<i64>> = if self.kind == PgFn::GetViewDef
                    && arrays
                        .first()
                        .is_some_and(|a| a.data_type() == &DataType::Utf8)
                {
                    text_arg(0)?
                        .into_iter()
                        .map(|name| {
                            let name = name?;
                            // An oid literal (`'16392'::oid`, whose cast is dropped) or a name.
                            name.parse()
                                .ok()
                                .or_else(|| pg_catalog::regclass(engine, &name))
                        })
                        .collect()
                } else {
                    int_arg(0)?
                };
                let column_numbers = int_arg(1)?;
                text(
                    keys.into_iter()
                        .enumerate()
                        .map(|(k, o)| {
                            let o = o?;
                            match self.kind {
                                PgFn::GetViewDef => {
                                    let r = rels.iter().find(|r| r.oid == o)?;
                                    r.definition.as_deref().map(pg_catalog::view_definition)
                                }
                                _ => {
                                    // An index's or a primary key constraint's oid.
                                    let index = rels
                                        .iter()
                                        .find(|r| r.oid == o && r.kind == RelKind::Index)?;
                                    let table =
                                        rels.iter().find(|t| Some(t.oid) == index.indexed)?;
                                    Some(if self.kind == PgFn::GetIndexDef {
                                        match column_numbers.get(k).copied().flatten() {
                                            // pg_get_indexdef(index, column > 0, pretty): that
                                            // key column's name ('' beyond the last).
                                            Some(c) if c > 0 => table
                                                .primary_key
                                                .get(c as usize - 1)
                                                .map(|i| {
                                                    crate::catalog::quote_ident(
                                                        &table.columns[*i].name,
                                                    )
                                                })
                                                .unwrap_or_default(),
                                            _ => pg_catalog::index_definition(table),
                                        }
                                    } else {
                                        let cols: Vec<String> = table
                                            .primary_key
                                            .iter()
                                            .map(|k| {
                                                crate::catalog::quote_ident(&table.columns[*k].name)
                                            })
                                            .collect();
                                        format!("PRIMARY KEY ({})", cols.join(", "))
                                    })
                                }
                            }
                        })
                        .collect(),
                )
            }
            PgFn::CurrentSetting => {
                let missing_ok = arrays
                    .get(1)
                    .and_then(|a| a.as_boolean_opt().map(|b| b.value(0)))
                    .unwrap_or(false);
                let settings = self.shared.settings.lock();
                let mut out = Vec::with_capacity(n);
                for name in text_arg(0)? {
                    let Some(name) = name else {
                        out.push(None);
                        continue;
                    };
                    match settings.get(&name.to_lowercase()) {
                        Some(v) => out.push(Some(v.clone())),
                        None if missing_ok => out.push(None),
                        None => {
                            return Err(external(crate::err!(
                                sqlstate::UNDEFINED_OBJECT,
                                "unrecognized configuration parameter \"{name}\""
                            )));
                        }
                    }
                }
                text(out)
            }
            PgFn::SetConfig => {
                // set_config(name, value, is_local): as SET (is_local is not honoured: Eddy
                // has no SET LOCAL), returning the new value.
                let names = text_arg(0)?;
                let values = text_arg(1)?;
                let mut settings = self.shared.settings.lock();
                let mut out = Vec::with_capacity(n);
                for (name, value) in names.into_iter().zip(values) {
                    let (Some(name), Some(value)) = (name, value) else {
                        out.push(None);
                        continue;
                    };
                    super::session::apply_setting(
                        &mut settings,
                        name.to_lowercase(),
                        value.clone(),
                    )
                    .map_err(external)?;
                    out.push(Some(value));
                }
                text(out)
            }
            PgFn::QuoteIdent => text(
                text_arg(0)?
                    .into_iter()
                    .map(|v| v.map(|v| crate::catalog::quote_ident(&v)))
                    .collect(),
            ),
            PgFn::RegClass | PgFn::ToRegClass => {
                let mut out = Vec::with_capacity(n);
                for name in text_arg(0)? {
                    let oid = name
                        .as_deref()
                        .and_then(|name| pg_catalog::regclass(engine, name));
                    if let (Some(name), None, PgFn::RegClass) = (&name, oid, self.kind) {
                        return Err(external(crate::err!(
                            sqlstate::UNDEFINED_TABLE,
                            "relation \"{name}\" does not exist"
                        )));
                    }
                    out.push(oid);
                }
                ints(out)
            }
            PgFn::RegType | PgFn::ToRegType => {
                let mut out = Vec::with_capacity(n);
                for name in text_arg(0)? {
                    let oid = name.as_deref().and_then(type_by_name);
                    if let (Some(name), None, PgFn::RegType) = (&name, oid, self.kind) {
                        return Err(external(crate::err!(
                            sqlstate::UNDEFINED_OBJECT,
                            "type \"{name}\" does not exist"
                        )));
                    }
                    out.push(oid);
                }
                ints(out)
            }
            PgFn::ExpandArray => {
                let values: Vec<Option<Vec<i64>>> = match arrays.first() {
                    None => vec![None; n],
                    Some(a) if matches!(a.data_type(), DataType::List(_)) => {
                        let list = a.as_list::<i32>();
                        (0..n)
                            .map(|k| {
                                if list.is_null(k) {
                                    return Ok(None);
                                }
                                let v = datafusion::arrow::compute::cast(
                                    &list.value(k),
                                    &DataType::Int64,
                                )?;
                                Ok(Some(
                                    v.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                                        .iter()
                                        .map(|x| x.unwrap_or(0))
                                        .collect(),
                                ))
                            })
                            .collect::<DfResult<_>>()?
                    }
                    Some(_) => text_arg(0)?
                        .into_iter()
                        .map(|t| {
                            t.map(|t| {
                                t.trim_matches(|c| c == '{' || c == '}')
                                    .split([' ', ','])
                                    .filter_map(|x| x.trim().parse().ok())
                                    .collect()
                            })
                        })
                        .collect(),
                };
                ColumnarValue::Array(expand_array(values)?)
            }
            PgFn::ArrayLower | PgFn::ArrayUpper => {
                let Some(array) = arrays.first() else {
                    return Ok(ints(vec![None; n]));
                };
                let dims = int_arg(1)?;
                let lengths: Vec<Option<i64>> = match array.data_type() {
                    DataType::List(_) => {
                        let list = array.as_list::<i32>();
                        (0..n)
                            .map(|k| (!list.is_null(k)).then(|| list.value_length(k) as i64))
                            .collect()
                    }
                    DataType::LargeList(_) => {
                        let list = array.as_list::<i64>();
                        (0..n)
                            .map(|k| (!list.is_null(k)).then(|| list.value_length(k)))
                            .collect()
                    }
                    DataType::Null => vec![None; n],
                    other => {
                        return Err(external(crate::err!(
                            sqlstate::UNDEFINED_FUNCTION,
                            "function {}({other}, integer) does not exist",
                            self.name
                        )));
                    }
                };
                // Eddy's arrays have one dimension, starting at 1; empty ones have no bounds.
                ints(
                    lengths
                        .into_iter()
                        .zip(dims)
                        .map(|(len, dim)| match (len, dim) {
                            (Some(len), Some(1)) if len > 0 => {
                                Some(if self.kind == PgFn::ArrayLower {
                                    1
                                } else {
                                    len
                                })
                            }
                            _ => None,
                        })
                        .collect(),
                )
            }
            PgFn::ParseIdent => {
                let strict = arrays
                    .get(1)
                    .and_then(|a| a.as_boolean_opt().map(|b| b.is_null(0) || b.value(0)))
                    .unwrap_or(true);
                let mut builder = datafusion::arrow::array::ListBuilder::new(
                    datafusion::arrow::array::StringBuilder::new(),
                );
                for name in text_arg(0)? {
                    match name {
                        None => builder.append_null(),
                        Some(name) => {
                            let parts = parse_ident(&name, strict).map_err(external)?;
                            builder.append_value(parts.into_iter().map(Some));
                        }
                    }
                }
                ColumnarValue::Array(Arc::new(builder.finish()))
            }
            PgFn::VectorElement => {
                let mut out = Vec::with_capacity(n);
                for (vector, i) in text_arg(0)?.into_iter().zip(int_arg(1)?) {
                    let (Some(vector), Some(i)) = (vector, i) else {
                        out.push(None);
                        continue;
                    };
                    let Ok(elements) = vector
                        .split_ascii_whitespace()
                        .map(str::parse::<i64>)
                        .collect::<Result<Vec<i64>, _>>()
                    else {
                        return Err(external(crate::err!(
                            sqlstate::DATATYPE_MISMATCH,
                            "cannot subscript type text because it does not support subscripting"
                        )));
                    };
                    out.push(
                        usize::try_from(i)
                            .ok()
                            .and_then(|i| elements.get(i).copied()),
                    );
                }
                ints(out)
            }
            PgFn::StatCounter => ints(vec![Some(0); n]),
            PgFn::DatabaseSize => {
                // The one database, by oid (another oid: NULL) or by name (another: an error).
                let total: i64 = pg_catalog::relations(engine)
                    .iter()
                    .map(|r| r.estimated_bytes())
                    .sum();
                let by_name = arrays
                    .first()
                    .is_some_and(|a| matches!(a.data_type(), DataType::Utf8 | DataType::Utf8View));
                let mut out = Vec::with_capacity(n);
                if by_name {
                    for name in text_arg(0)? {
                        match name {
                            None => out.push(None),
                            Some(name) if name == pg_catalog::DATABASE => out.push(Some(total)),
                            Some(name) => {
                                return Err(external(crate::err!(
                                    sqlstate::INVALID_CATALOG_NAME,
                                    "database \"{name}\" does not exist"
                                )));
                            }
                        }
                    }
                } else {
                    for oid in int_arg(0)? {
                        out.push((oid == Some(pg_catalog::DATABASE_OID)).then_some(total));
                    }
                }
                ints(out)
            }
            PgFn::RegProc => text(
                text_arg(0)?
                    .into_iter()
                    .map(|v| v.map(|v| pg_catalog::split_qualified(&v).1))
                    .collect(),
            ),
            PgFn::RegNamespace => {
                let mut out = Vec::with_capacity(n);
                for name in text_arg(0)? {
                    let Some(name) = name else {
                        out.push(None);
                        continue;
                    };
                    let (_, folded) = pg_catalog::split_qualified(&name);
                    let oid = pg_catalog::NAMESPACES
                        .iter()
                        .find(|(_, n)| *n == folded)
                        .map(|(o, _)| *o)
                        .ok_or_else(|| {
                            external(crate::err!(
                                sqlstate::INVALID_SCHEMA_NAME,
                                "schema \"{name}\" does not exist"
                            ))
                        })?;
                    out.push(Some(oid));
                }
                ints(out)
            }
        })
    }
}

/// PostgreSQL's `parse_ident`: splits a qualified name at its dots; unquoted parts fold to
/// lower case, quoted ones keep theirs (with `""` for a quote). Without `strict`, anything after
/// the last complete name is ignored.
fn parse_ident(name: &str, strict: bool) -> crate::error::Result<Vec<String>> {
    let invalid = |detail: Option<&str>| {
        let e = crate::err!(
            sqlstate::INVALID_PARAMETER_VALUE,
            "string is not a valid identifier: \"{name}\""
        );
        match detail {
            Some(d) => e.with_detail(d),
            None => e,
        }
    };
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || !c.is_ascii();
    let is_cont = |c: char| is_start(c) || c.is_ascii_digit() || c == '$';
    let mut chars = name.chars().peekable();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::Chars>| {
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
    };
    let mut parts = Vec::new();
    let mut after_dot = false;
    skip_space(&mut chars);
    loop {
        match chars.peek().copied() {
            Some('"') => {
                chars.next();
                let mut part = String::new();
                loop {
                    match chars.next() {
                        None => return Err(invalid(Some("String has unclosed double quotes."))),
                        Some('"') if chars.next_if_eq(&'"').is_some() => part.push('"'),
                        Some('"') => break,
                        Some(c) => part.push(c),
                    }
                }
                if part.is_empty() {
                    return Err(invalid(Some("Quoted identifier must not be empty.")));
                }
                parts.push(part);
            }
            Some(c) if is_start(c) => {
                let mut part = String::new();
                while let Some(c) = chars.next_if(|c| is_cont(*c)) {
                    part.push(c.to_ascii_lowercase());
                }
                parts.push(part);
            }
            Some('.') if !after_dot => {
                return Err(invalid(Some("No valid identifier before \".\".")));
            }
            _ if after_dot => return Err(invalid(Some("No valid identifier after \".\"."))),
            _ => return Err(invalid(None)),
        }
        skip_space(&mut chars);
        match chars.peek() {
            Some('.') => {
                chars.next();
                after_dot = true;
                skip_space(&mut chars);
            }
            None => break,
            Some(_) if strict => return Err(invalid(None)),
            Some(_) => break,
        }
    }
    Ok(parts)
}

fn expand_array_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(
            vec![
                Field::new("x", DataType::Int64, true),
                Field::new("n", DataType::Int64, true),
            ]
            .into(),
        ),
        true,
    )))
}

/// Each array as a list of `(x: element, n: 1-based position)` records.
fn expand_array(values: Vec<Option<Vec<i64>>>) -> DfResult<ArrayRef> {
    let DataType::List(item) = expand_array_type() else {
        unreachable!("expand_array_type is a list");
    };
    let DataType::Struct(fields) = item.data_type().clone() else {
        unreachable!("its items are records");
    };
    let mut offsets = vec![0i32];
    let (mut xs, mut ns) = (Vec::new(), Vec::new());
    let mut valid = Vec::with_capacity(values.len());
    for v in &values {
        for (k, x) in v.iter().flatten().enumerate() {
            xs.push(*x);
            ns.push(k as i64 + 1);
        }
        offsets.push(xs.len() as i32);
        valid.push(v.is_some());
    }
    let records = datafusion::arrow::array::StructArray::try_new(
        fields,
        vec![
            Arc::new(Int64Array::from(xs)) as ArrayRef,
            Arc::new(Int64Array::from(ns)) as ArrayRef,
        ],
        None,
    )?;
    Ok(Arc::new(datafusion::arrow::array::ListArray::try_new(
        item,
        datafusion::arrow::buffer::OffsetBuffer::new(offsets.into()),
        Arc::new(records),
        Some(valid.into()),
    )?))
}

fn text_values(a: &ArrayRef) -> DfResult<Vec<Option<String>>> {
    let a = datafusion::arrow::compute::cast(a, &DataType::Utf8)?;
    Ok(a.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect())
}

/// `pg_get_keywords()`: PostgreSQL's keywords (word, catcode, barelabel, catdesc, baredesc),
/// which pgjdbc's `getSQLKeywords()` and DBeaver's editor read.
#[derive(Debug)]
struct GetKeywords;

impl datafusion::catalog::TableFunctionImpl for GetKeywords {
    fn call_with_args(
        &self,
        _args: datafusion::catalog::TableFunctionArgs,
    ) -> DfResult<Arc<dyn datafusion::catalog::TableProvider>> {
        use crate::catalog::keywords::keywords;
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            Field::new("word", DataType::Utf8, false),
            Field::new("catcode", DataType::Utf8, false),
            Field::new("barelabel", DataType::Boolean, false),
            Field::new("catdesc", DataType::Utf8, false),
            Field::new("baredesc", DataType::Utf8, false),
        ]));
        let all = keywords();
        let column = |f: &dyn Fn(&crate::catalog::keywords::Keyword) -> &'static str| -> ArrayRef {
            Arc::new(all.iter().map(|k| Some(f(k))).collect::<StringArray>())
        };
        let batch = datafusion::arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![
                column(&|k| k.word),
                column(&|k| k.category.code()),
                Arc::new(
                    all.iter()
                        .map(|k| Some(k.bare_label))
                        .collect::<BooleanArray>(),
                ),
                column(&|k| k.category.description()),
                column(&|k| {
                    if k.bare_label {
                        "can be bare label"
                    } else {
                        "requires AS"
                    }
                }),
            ],
        )?;
        Ok(Arc::new(datafusion::catalog::MemTable::try_new(
            schema,
            vec![vec![batch]],
        )?))
    }
}

/// Plans a subscript of text, `indkey[0]`, as [`VECTOR_ELEMENT`]: Eddy's catalogs hold
/// PostgreSQL's `int2vector` and `oidvector` columns (pg_index's `indkey`, `indoption`) as text
/// (`"1 2"`), and their subscripts start at 0 (pgjdbc's getIndexInfo reads
/// `indoption[n - 1]`). Tried before DataFusion's planners, it leaves other subscripts to them.
#[derive(Debug)]
struct VectorSubscripts {
    element: Arc<ScalarUDF>,
}

impl ExprPlanner for VectorSubscripts {
    fn plan_field_access(
        &self,
        access: RawFieldAccessExpr,
        schema: &DFSchema,
    ) -> DfResult<PlannerResult<RawFieldAccessExpr>> {
        if let GetFieldAccess::ListIndex { key } = &access.field_access
            && matches!(
                access.expr.get_type(schema),
                Ok(DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
            )
        {
            let args = vec![access.expr.clone(), key.as_ref().clone()];
            return Ok(PlannerResult::Planned(Expr::ScalarFunction(
                ScalarFunction::new_udf(self.element.clone(), args),
            )));
        }
        Ok(PlannerResult::Original(access))
    }
}

pub fn register(ctx: &SessionContext, engine: Arc<Engine>, settings: Settings) {
    ctx.register_udtf("pg_get_keywords", Arc::new(GetKeywords));
    let shared = Shared { engine, settings };
    let mut vector_element = None;
    for (kind, name) in FUNCTIONS {
        let signature = match kind {
            PgFn::CurrentSchema | PgFn::Version | PgFn::IsInRecovery | PgFn::StartTime => {
                Signature::nullary(Volatility::Stable)
            }
            PgFn::SetConfig => Signature::variadic_any(Volatility::Volatile),
            PgFn::Void => Signature::nullary(Volatility::Volatile),
            PgFn::VectorElement => Signature::variadic_any(Volatility::Immutable),
            _ => Signature::variadic_any(Volatility::Stable),
        };
        let udf = Arc::new(ScalarUDF::from(PgFunction {
            kind: *kind,
            name,
            signature,
            shared: shared.clone(),
        }));
        if *kind == PgFn::VectorElement {
            vector_element = Some(udf.clone());
        }
        ctx.register_udf(udf.as_ref().clone());
    }
    if let Some(element) = vector_element {
        // DataFusion's planners answer every subscript, so this one goes first.
        let state = ctx.state();
        let mut planners: Vec<Arc<dyn ExprPlanner>> = vec![Arc::new(VectorSubscripts { element })];
        planners.extend(state.expr_planners().iter().cloned());
        *ctx.state_ref().write() = SessionStateBuilder::new_from_existing(state)
            .with_expr_planners(planners)
            .build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_as_postgres_prints_them() {
        assert_eq!(size_pretty(0), "0 bytes");
        assert_eq!(size_pretty(10_239), "10239 bytes");
        assert_eq!(size_pretty(10_240), "10 kB");
        assert_eq!(size_pretty(1_000_000), "977 kB");
        assert_eq!(size_pretty(123_456_789), "118 MB");
        assert_eq!(size_pretty(-20_000), "-20 kB");
    }

    #[test]
    fn identifiers_parse_like_parse_ident() {
        assert_eq!(
            parse_ident("  Public . \"My\"\"T\" ", true).unwrap(),
            ["public", "My\"T"]
        );
        assert_eq!(parse_ident("a$1.Ü", true).unwrap(), ["a$1", "Ü"]);
        assert_eq!(parse_ident("a b", false).unwrap(), ["a"]);
        for bad in ["a b", "a.b.", ".a", "\"\"", "", "$a", "\"a"] {
            let e = parse_ident(bad, true).unwrap_err();
            assert_eq!(e.sqlstate, sqlstate::INVALID_PARAMETER_VALUE, "{bad}");
        }
    }

    #[test]
    fn type_names_resolve_like_regtype() {
        assert_eq!(type_by_name("int4"), Some(23));
        assert_eq!(type_by_name("pg_catalog.int8"), Some(20));
        assert_eq!(type_by_name("integer"), Some(23));
        assert_eq!(type_by_name("text[]"), Some(1009));
        assert_eq!(type_by_name("_int4"), Some(1007));
        assert_eq!(type_by_name("geometry"), None);
    }
}

/// A function whose value is fixed for the session (`current_user`, `pg_backend_pid()`…).
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

/// `pg_cancel_backend(pid)` and `pg_terminate_backend(pid [, timeout])`: true when the
/// backend was signalled, false when no session has that pid. A superuser may signal any
/// session, others only their own role's (42501).
struct SignalBackend {
    terminate: bool,
    engine: Arc<Engine>,
    user: String,
    signature: Signature,
}

impl fmt::Debug for SignalBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for SignalBackend {
    fn eq(&self, other: &Self) -> bool {
        self.terminate == other.terminate
            && Arc::ptr_eq(&self.engine, &other.engine)
            && self.user == other.user
    }
}

impl Eq for SignalBackend {}

impl std::hash::Hash for SignalBackend {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (
            self.terminate,
            &self.user,
            Arc::as_ptr(&self.engine) as usize,
        )
            .hash(state)
    }
}

impl ScalarUDFImpl for SignalBackend {
    fn name(&self) -> &str {
        if self.terminate {
            "pg_terminate_backend"
        } else {
            "pg_cancel_backend"
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let Some(pids) = args.args.first() else {
            return Err(external(crate::err!(
                sqlstate::UNDEFINED_FUNCTION,
                "function {}() does not exist: it takes a backend pid",
                self.name()
            )));
        };
        let pids = datafusion::arrow::compute::cast(&pids.to_array(n)?, &DataType::Int64)?;
        let superuser = self
            .engine
            .catalog()
            .role(&self.user)
            .is_some_and(|r| r.superuser);
        let mut out = Vec::with_capacity(n);
        for pid in pids.as_primitive::<datafusion::arrow::datatypes::Int64Type>() {
            let Some(pid) = pid else {
                out.push(None);
                continue;
            };
            let backend = i32::try_from(pid)
                .ok()
                .and_then(|pid| self.engine.backends().by_pid(pid));
            let Some(backend) = backend else {
                out.push(Some(false));
                continue;
            };
            if !superuser && backend.user != self.user {
                return Err(external(
                    crate::err!(
                        sqlstate::INSUFFICIENT_PRIVILEGE,
                        "permission denied to {} process {pid}",
                        if self.terminate {
                            "terminate"
                        } else {
                            "cancel the query of"
                        }
                    )
                    .with_detail(format!(
                        "Only superusers and the role \"{}\" may signal it.",
                        backend.user
                    )),
                ));
            }
            out.push(Some(if self.terminate {
                backend.terminate()
            } else {
                backend.cancel()
            }));
        }
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(out))))
    }
}

/// Functions whose value depends on the connection.
pub fn register_session_functions(
    ctx: &SessionContext,
    engine: &Arc<Engine>,
    user: &str,
    backend_pid: i32,
) {
    for terminate in [false, true] {
        ctx.register_udf(ScalarUDF::from(SignalBackend {
            terminate,
            engine: engine.clone(),
            user: user.to_string(),
            signature: Signature::variadic_any(Volatility::Volatile),
        }));
    }
    let constants = [
        ("current_user", ScalarValue::from(user)),
        // The SQL keyword `user` (Grafana's search-path expansion uses it).
        ("user", ScalarValue::from(user)),
        ("session_user", ScalarValue::from(user)),
        ("current_role", ScalarValue::from(user)),
        ("current_database", ScalarValue::from(pg_catalog::DATABASE)),
        ("current_catalog", ScalarValue::from(pg_catalog::DATABASE)),
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
