//! Lowering of `CREATE TABLE` into a catalog [`TableDef`].

use datafusion::sql::sqlparser::ast::{self, ColumnOption, TableConstraint};

use crate::catalog::{ColumnDef, TableDef, WatermarkDef};
use crate::error::{Result, sqlstate};
use crate::types::{SqlType, parse_sql_type};
use crate::unsupported;

use super::{Parsed, normalize_ident, table_name};

/// What `CREATE TABLE … WITH (…)` asks for besides the definition.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableOptions {
    /// `late_rows = 'keep'`: late rows go to a table `<name>_late` instead of being dropped.
    pub keep_late_rows: bool,
}

/// The options of `CREATE TABLE … WITH (late_rows = 'keep' | 'drop')`.
fn table_options(ct: &ast::CreateTable) -> Result<TableOptions> {
    let mut out = TableOptions::default();
    let options = match &ct.table_options {
        ast::CreateTableOptions::None => return Ok(out),
        ast::CreateTableOptions::With(options) => options,
        other => {
            return Err(unsupported!(
                "table options {other} are not supported (only WITH (late_rows = …))"
            ));
        }
    };
    for option in options {
        let ast::SqlOption::KeyValue { key, value } = option else {
            return Err(unsupported!(
                "table option {option} is not supported (only late_rows = 'keep' | 'drop')"
            ));
        };
        let value = match value {
            ast::Expr::Value(v) => match &v.value {
                ast::Value::SingleQuotedString(s) => s.to_lowercase(),
                other => other.to_string().to_lowercase(),
            },
            ast::Expr::Identifier(i) => i.value.to_lowercase(),
            other => other.to_string(),
        };
        match (normalize_ident(key).as_str(), value.as_str()) {
            ("late_rows", "keep") => out.keep_late_rows = true,
            ("late_rows", "drop") => out.keep_late_rows = false,
            ("late_rows", other) => {
                return Err(crate::err!(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    "late_rows must be 'keep' or 'drop', not '{other}'"
                ));
            }
            (other, _) => {
                return Err(unsupported!(
                    "table option {other} is not supported (only late_rows = 'keep' | 'drop')"
                ));
            }
        }
    }
    Ok(out)
}

/// Builds the definition of a new table (its id is assigned by the catalog) and its options.
pub fn table_def(parsed: &Parsed, ct: &ast::CreateTable) -> Result<(TableDef, TableOptions)> {
    if ct.query.is_some() {
        return Err(unsupported!("CREATE TABLE … AS"));
    }
    if ct.or_replace {
        return Err(unsupported!("CREATE OR REPLACE TABLE"));
    }
    if ct.temporary {
        return Err(unsupported!("temporary tables"));
    }
    let name = table_name(&ct.name)?;
    if ct.columns.is_empty() {
        return Err(unsupported!("tables without columns"));
    }
    let mut columns: Vec<ColumnDef> = Vec::new();
    let mut primary_key: Vec<usize> = Vec::new();
    for col in &ct.columns {
        let col_name = normalize_ident(&col.name);
        if columns.iter().any(|c| c.name == col_name) {
            return Err(crate::err!(
                sqlstate::DUPLICATE_COLUMN,
                "column \"{col_name}\" specified more than once"
            ));
        }
        let sql_type = parse_sql_type(&col.data_type)?;
        let mut not_null = false;
        for opt in &col.options {
            match &opt.option {
                ColumnOption::NotNull => not_null = true,
                ColumnOption::Null => not_null = false,
                ColumnOption::PrimaryKey(_) => {
                    if !primary_key.is_empty() {
                        return Err(multiple_pk(&name));
                    }
                    primary_key.push(columns.len());
                    not_null = true;
                }
                other => return Err(unsupported!("column option {other}")),
            }
        }
        columns.push(ColumnDef {
            name: col_name,
            sql_type,
            not_null,
        });
    }
    for constraint in &ct.constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) => {
                if !primary_key.is_empty() {
                    return Err(multiple_pk(&name));
                }
                for col in &pk.columns {
                    let col_name = match &col.column.expr {
                        ast::Expr::Identifier(ident) => normalize_ident(ident),
                        other => return Err(unsupported!("primary key on expression {other}")),
                    };
                    let idx = columns
                        .iter()
                        .position(|c| c.name == col_name)
                        .ok_or_else(|| {
                            crate::err!(
                                sqlstate::UNDEFINED_COLUMN,
                                "column \"{col_name}\" named in key does not exist"
                            )
                        })?;
                    if primary_key.contains(&idx) {
                        return Err(crate::err!(
                            sqlstate::DUPLICATE_COLUMN,
                            "column \"{col_name}\" appears twice in primary key constraint"
                        ));
                    }
                    columns[idx].not_null = true;
                    primary_key.push(idx);
                }
            }
            other => return Err(unsupported!("table constraint {other}")),
        }
    }
    let watermark = match &parsed.watermark {
        None => None,
        Some((col, expr)) => {
            let column = normalize_ident(col);
            let c = columns.iter().find(|c| c.name == column).ok_or_else(|| {
                crate::err!(
                    sqlstate::UNDEFINED_COLUMN,
                    "column \"{column}\" named in WATERMARK FOR does not exist"
                )
            })?;
            if !matches!(
                c.sql_type,
                SqlType::Timestamp | SqlType::TimestampTz | SqlType::Date
            ) {
                return Err(crate::err!(
                    sqlstate::DATATYPE_MISMATCH,
                    "WATERMARK FOR column \"{column}\" must be a timestamp, timestamptz or date, not {}",
                    c.sql_type
                ));
            }
            Some(WatermarkDef {
                column,
                expr: expr.to_string(),
            })
        }
    };
    let options = table_options(ct)?;
    if options.keep_late_rows && watermark.is_none() {
        return Err(crate::err!(
            sqlstate::INVALID_TABLE_DEFINITION,
            "late_rows = 'keep' needs a WATERMARK FOR: without one no row is late"
        ));
    }
    Ok((
        TableDef {
            id: 0,
            name,
            columns,
            primary_key,
            append_only: parsed.append_only,
            watermark,
            late_rows_table: None,
            source: None,
        },
        options,
    ))
}

fn multiple_pk(table: &str) -> crate::error::Error {
    crate::err!(
        sqlstate::INVALID_TABLE_DEFINITION,
        "multiple primary keys for table \"{table}\" are not allowed"
    )
}
