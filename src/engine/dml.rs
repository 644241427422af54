//! INSERT, UPDATE, DELETE and COPY rows: each statement computes its change as a [`ZBatch`]
//! (+1 new rows, -1 old rows); the session then commits it or adds it to the transaction.
//!
//! INSERT … VALUES with literals and parameters takes a fast path that builds the Arrow columns
//! directly (no query planning); everything else runs its source through DataFusion. UPDATE and
//! DELETE run `SELECT t.*, <new values> FROM t WHERE <cond>` against the latest state, which
//! gives the old rows (-1) and their replacements (+1).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, UInt32Array, new_null_array,
};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::sql::sqlparser::ast::{self, SetExpr, Statement};

use super::convert::{parse_text_column, to_column_type};
use super::session::{CopyIn, Session, target_columns};
use crate::catalog::TableDef;
use crate::error::{Error, Result, sqlstate};
use crate::sql::{self, Parsed};
use crate::types::{ObjectId, ZBatch};
use crate::unsupported;

fn insert_target(session: &Session, insert: &ast::Insert) -> Result<(Arc<TableDef>, Vec<usize>)> {
    if insert.on.is_some() {
        return Err(unsupported!("INSERT … ON CONFLICT"));
    }
    if insert.returning.is_some() {
        return Err(unsupported!("INSERT … RETURNING"));
    }
    let ast::TableObject::TableName(name) = &insert.table else {
        return Err(unsupported!("INSERT INTO a table function"));
    };
    let table = session.table_to_write(&sql::table_name(name)?)?;
    let idents: Vec<ast::Ident> = insert
        .columns
        .iter()
        .map(|c| {
            c.0.last()
                .and_then(|p| p.as_ident())
                .cloned()
                .unwrap_or_else(|| ast::Ident::new(c.to_string()))
        })
        .collect();
    let columns = target_columns(&table, &idents)?;
    Ok((table, columns))
}

/// Parameter types of an INSERT: the types of the columns the VALUES cells go to.
pub async fn insert_param_types(
    session: &Session,
    insert: &ast::Insert,
) -> Result<Vec<Option<DataType>>> {
    let (table, columns) = insert_target(session, insert)?;
    let Some(source) = &insert.source else {
        return Ok(Vec::new());
    };
    // Parameters inside expressions (`$2 + 1`), or in a SELECT: what DataFusion infers.
    let mut types: Vec<Option<DataType>> = Vec::new();
    let values = match source.body.as_ref() {
        SetExpr::Values(values) => Some(values),
        _ => None,
    };
    if values.is_none() || values_with_nested_placeholders(source.body.as_ref()) {
        session.read_state().read_latest();
        let plan = session.plan(&Statement::Query(source.clone())).await?;
        let inferred = plan.get_parameter_types()?;
        types = (1..=inferred.len())
            .map(|i| inferred.get(&format!("${i}")).cloned().flatten())
            .collect();
    }
    // A VALUES cell that is a parameter: its column's type.
    for row in values.iter().flat_map(|v| &v.rows) {
        for (i, cell) in row.content.iter().enumerate() {
            if let Some(n) = placeholder_index(cell) {
                if types.len() <= n {
                    types.resize(n + 1, None);
                }
                if let Some(col) = columns.get(i) {
                    types[n] = Some(table.columns[*col].sql_type.to_arrow());
                }
            }
        }
    }
    Ok(types)
}

/// Parameter types of an UPDATE or DELETE, from the equivalent SELECT.
pub async fn param_types(session: &Session, stmt: &Statement) -> Result<Vec<Option<DataType>>> {
    let (_, select, _) = rewrite_as_select(session, stmt)?;
    session.read_state().read_latest();
    let parsed = sql::parse_all(&select)?;
    let Some(p) = parsed.into_iter().next() else {
        return Ok(vec![]);
    };
    let plan = session.plan(&p.stmt).await?;
    super::session::param_types_of(&plan)
}

/// Whether `body` is a VALUES list with a parameter inside an expression.
fn values_with_nested_placeholders(body: &SetExpr) -> bool {
    let SetExpr::Values(values) = body else {
        return false;
    };
    values.rows.iter().flat_map(|r| &r.content).any(|cell| {
        placeholder_index(cell).is_none()
            && ast::visit_expressions(cell, |e| {
                if placeholder_index(e).is_some() {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            })
            .is_break()
    })
}

fn placeholder_index(e: &ast::Expr) -> Option<usize> {
    match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::Placeholder(p) => {
                p.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1)
            }
            _ => None,
        },
        _ => None,
    }
}

/// A VALUES cell the fast path understands.
enum Cell {
    Text(String),
    Value(ScalarValue),
}

fn simple_cell(e: &ast::Expr, params: &[ScalarValue]) -> Option<Result<Cell>> {
    match e {
        ast::Expr::Value(v) => Some(match &v.value {
            ast::Value::Number(n, _) => Ok(Cell::Text(n.clone())),
            ast::Value::SingleQuotedString(s) => Ok(Cell::Text(s.clone())),
            ast::Value::Boolean(b) => Ok(Cell::Value(ScalarValue::Boolean(Some(*b)))),
            ast::Value::Null => Ok(Cell::Value(ScalarValue::Null)),
            ast::Value::Placeholder(p) => {
                let n = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())?;
                Ok(Cell::Value(
                    params
                        .get(n.checked_sub(1)?)
                        .cloned()
                        .unwrap_or(ScalarValue::Null),
                ))
            }
            _ => return None,
        }),
        ast::Expr::UnaryOp {
            op: ast::UnaryOperator::Minus,
            expr,
        } => match expr.as_ref() {
            ast::Expr::Value(v) => match &v.value {
                ast::Value::Number(n, _) => Some(Ok(Cell::Text(format!("-{n}")))),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Builds the rows of `INSERT … VALUES` directly when every cell is a literal or parameter.
fn values_fast_path(
    table: &TableDef,
    columns: &[usize],
    source: &ast::Query,
    params: &[ScalarValue],
) -> Option<Result<Vec<ArrayRef>>> {
    if source.with.is_some() || source.order_by.is_some() || source.limit_clause.is_some() {
        return None;
    }
    let SetExpr::Values(values) = source.body.as_ref() else {
        return None;
    };
    let mut cells: Vec<Vec<Cell>> = (0..columns.len()).map(|_| Vec::new()).collect();
    for row in &values.rows {
        let row = &row.content;
        if row.len() != columns.len() {
            return Some(Err(arity_error(row.len(), columns.len())));
        }
        for (i, e) in row.iter().enumerate() {
            match simple_cell(e, params)? {
                Ok(c) => cells[i].push(c),
                Err(e) => return Some(Err(e)),
            }
        }
    }
    let build = || -> Result<Vec<ArrayRef>> {
        let mut out = Vec::with_capacity(columns.len());
        for (cells, col) in cells.into_iter().zip(columns) {
            let col = &table.columns[*col];
            let all_text = cells
                .iter()
                .all(|c| matches!(c, Cell::Text(_) | Cell::Value(ScalarValue::Null)));
            let array = if all_text {
                let text: StringArray = cells
                    .iter()
                    .map(|c| match c {
                        Cell::Text(s) => Some(s.as_str()),
                        _ => None,
                    })
                    .collect();
                parse_text_column(&text, col.sql_type).map_err(|(_, e)| e)?
            } else {
                let target = col.sql_type.to_arrow();
                let scalars = cells
                    .into_iter()
                    .map(|c| match c {
                        Cell::Text(s) => {
                            super::convert::cast_scalar(&ScalarValue::Utf8(Some(s)), &target)
                        }
                        Cell::Value(v) => {
                            let arr = v.to_array()?;
                            let arr = to_column_type(&arr, col)?;
                            Ok(ScalarValue::try_from_array(&arr, 0)?)
                        }
                    })
                    .collect::<Result<Vec<_>>>()?;
                ScalarValue::iter_to_array(scalars)?
            };
            out.push(array);
        }
        Ok(out)
    };
    Some(build())
}

fn arity_error(got: usize, want: usize) -> Error {
    if got > want {
        crate::err!(
            sqlstate::SYNTAX_ERROR,
            "INSERT has more expressions than target columns"
        )
    } else {
        crate::err!(
            sqlstate::SYNTAX_ERROR,
            "INSERT has more target columns than expressions"
        )
    }
}

/// Assembles full table rows from values for `columns` (the others NULL).
fn table_rows(
    table: &TableDef,
    columns: &[usize],
    values: Vec<ArrayRef>,
    rows: usize,
) -> Result<RecordBatch> {
    let mut full: Vec<ArrayRef> = table
        .columns
        .iter()
        .map(|c| new_null_array(&c.sql_type.to_arrow(), rows))
        .collect();
    for (array, col) in values.into_iter().zip(columns) {
        full[*col] = to_column_type(&array, &table.columns[*col])?;
    }
    Ok(RecordBatch::try_new(table.schema(), full)?)
}

/// Table rows from values for `columns`, after checking NOT NULL (23502, naming the column).
fn build_rows(
    table: &TableDef,
    columns: &[usize],
    values: Vec<ArrayRef>,
    rows: usize,
) -> Result<RecordBatch> {
    for (i, c) in table.columns.iter().enumerate() {
        if !c.not_null || rows == 0 {
            continue;
        }
        let has_null = match columns.iter().position(|x| *x == i) {
            None => true,
            Some(pos) => values[pos].null_count() > 0 || values[pos].data_type() == &DataType::Null,
        };
        if has_null {
            return Err(crate::err!(
                sqlstate::NOT_NULL_VIOLATION,
                "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                c.name,
                table.name
            ));
        }
    }
    table_rows(table, columns, values, rows)
}

/// The change of an INSERT: its new rows, +1.
pub async fn insert(
    session: &Session,
    insert: &ast::Insert,
    params: &[ScalarValue],
) -> Result<(ObjectId, ZBatch)> {
    let (table, columns) = insert_target(session, insert)?;
    let source = insert
        .source
        .as_ref()
        .ok_or_else(|| unsupported!("INSERT … DEFAULT VALUES (Eddy has no column defaults yet)"))?;
    if let Some(values) = values_fast_path(&table, &columns, source, params) {
        let values = values?;
        let rows = values.first().map(|a| a.len()).unwrap_or(0);
        let batch = build_rows(&table, &columns, values, rows)?;
        return Ok((table.id, ZBatch::uniform(batch, 1)));
    }
    if let SetExpr::Values(v) = source.body.as_ref() {
        if let Some(row) = v.rows.iter().find(|r| r.content.len() != columns.len()) {
            return Err(arity_error(row.content.len(), columns.len()));
        }
        if v.rows.iter().flat_map(|r| r.content.iter()).any(
            |e| matches!(e, ast::Expr::Identifier(i) if i.value.eq_ignore_ascii_case("default")),
        ) {
            return Err(unsupported!(
                "DEFAULT in VALUES (Eddy has no column defaults yet)"
            ));
        }
    }
    let source = typed_string_literals(source, &table, &columns)?;
    session.read_state().read_durable(session.engine());
    let (schema, batches) = session
        .query_batches(&Statement::Query(source), params)
        .await?;
    if schema.fields().len() != columns.len() {
        return Err(arity_error(schema.fields().len(), columns.len()));
    }
    let data = concat_batches(&schema, &batches)?;
    let rows = data.num_rows();
    let batch = build_rows(&table, &columns, data.columns().to_vec(), rows)?;
    Ok((table.id, ZBatch::uniform(batch, 1)))
}

/// In `VALUES`, a string literal has no type of its own in PostgreSQL: it takes the type of the
/// column it goes to. Rewrites such cells as casts so mixed rows (`'2024-01-01'`, `now()`) unify.
fn typed_string_literals(
    source: &ast::Query,
    table: &TableDef,
    columns: &[usize],
) -> Result<Box<ast::Query>> {
    let mut source = Box::new(source.clone());
    if let SetExpr::Values(values) = source.body.as_mut() {
        let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
        for row in values.rows.iter_mut() {
            for (cell, col) in row.content.iter_mut().zip(columns) {
                let is_string = matches!(cell, ast::Expr::Value(v) if matches!(v.value, ast::Value::SingleQuotedString(_)));
                if !is_string {
                    continue;
                }
                let ty = table.columns[*col].sql_type;
                let text = format!("CAST({cell} AS {})", cast_type_name(ty));
                *cell = datafusion::sql::sqlparser::parser::Parser::new(&dialect)
                    .try_with_sql(&text)
                    .and_then(|mut p| p.parse_expr())
                    .map_err(|e| crate::internal!("rewriting a VALUES literal: {e}"))?;
            }
        }
    }
    Ok(source)
}

/// A type name DataFusion's SQL planner accepts in CAST.
fn cast_type_name(ty: crate::types::SqlType) -> String {
    use crate::types::SqlType as T;
    match ty {
        T::Varchar(_) => "text".into(),
        T::Numeric(None) => "numeric(38,10)".into(),
        T::Time => "time".into(),
        T::Timestamp => "timestamp".into(),
        T::TimestampTz => "timestamptz".into(),
        other => other.to_string(),
    }
}

/// `SELECT t.*, <new values…> FROM t WHERE …` for an UPDATE or DELETE; returns the table, the
/// query text and the updated column indices.
fn rewrite_as_select(
    session: &Session,
    stmt: &Statement,
) -> Result<(Arc<TableDef>, String, Vec<usize>)> {
    let (relation, selection, assignments): (
        &ast::TableWithJoins,
        &Option<ast::Expr>,
        &[ast::Assignment],
    ) = match stmt {
        Statement::Update(u) => {
            if u.from.is_some() {
                return Err(unsupported!("UPDATE … FROM"));
            }
            if u.returning.is_some() {
                return Err(unsupported!("UPDATE … RETURNING"));
            }
            (&u.table, &u.selection, &u.assignments)
        }
        Statement::Delete(d) => {
            if d.using.is_some() {
                return Err(unsupported!("DELETE … USING"));
            }
            if d.returning.is_some() {
                return Err(unsupported!("DELETE … RETURNING"));
            }
            let tables = match &d.from {
                ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
            };
            if tables.len() != 1 {
                return Err(unsupported!("DELETE from several tables"));
            }
            (&tables[0], &d.selection, &[])
        }
        _ => return Err(crate::internal!("not an UPDATE or DELETE")),
    };
    if !relation.joins.is_empty() {
        return Err(unsupported!("joins in UPDATE/DELETE"));
    }
    let ast::TableFactor::Table { name, alias, .. } = &relation.relation else {
        return Err(unsupported!("UPDATE/DELETE of {}", relation.relation));
    };
    let table = session.table_to_write(&sql::table_name(name)?)?;
    let verb = if matches!(stmt, Statement::Update(_)) {
        "UPDATE"
    } else {
        "DELETE"
    };
    if table.append_only {
        return Err(unsupported!(
            "{verb} on append-only table \"{}\": APPEND ONLY tables accept only INSERT and COPY",
            table.name
        ));
    }
    let mut updated = Vec::new();
    let mut exprs = Vec::new();
    for a in assignments {
        let names: Vec<String> = match &a.target {
            ast::AssignmentTarget::ColumnName(n) => vec![
                n.0.last()
                    .and_then(|p| p.as_ident())
                    .map(sql::normalize_ident)
                    .unwrap_or_else(|| n.to_string()),
            ],
            ast::AssignmentTarget::Tuple(_) => return Err(unsupported!("UPDATE SET (a, b) = …")),
        };
        for name in names {
            let idx = table.column_index(&name).ok_or_else(|| {
                crate::err!(
                    sqlstate::UNDEFINED_COLUMN,
                    "column \"{name}\" of relation \"{}\" does not exist",
                    table.name
                )
            })?;
            if updated.contains(&idx) {
                return Err(crate::err!(
                    sqlstate::SYNTAX_ERROR,
                    "multiple assignments to same column \"{name}\""
                ));
            }
            if matches!(&a.value, ast::Expr::Identifier(i) if i.value.eq_ignore_ascii_case("default"))
            {
                return Err(unsupported!(
                    "SET … = DEFAULT (Eddy has no column defaults yet)"
                ));
            }
            updated.push(idx);
            if placeholder_index(&a.value).is_some() {
                // A bare parameter takes the column's type (as in PostgreSQL), not text.
                exprs.push(format!(
                    "CAST({} AS {})",
                    a.value, table.columns[idx].sql_type
                ));
            } else {
                exprs.push(format!("({})", a.value));
            }
        }
    }
    let target = match alias {
        Some(a) => format!("{name} AS {}", a.name),
        None => name.to_string(),
    };
    let star = match alias {
        Some(a) => format!("{}.*", a.name),
        None => format!("{name}.*"),
    };
    let mut select = format!("SELECT {star}");
    for (k, e) in exprs.iter().enumerate() {
        select.push_str(&format!(", {e} AS __eddy_new_{k}"));
    }
    select.push_str(&format!(" FROM {target}"));
    if let Some(cond) = selection {
        select.push_str(&format!(" WHERE {cond}"));
    }
    Ok((table, select, updated))
}

/// The change of an UPDATE (-1 old, +1 new) or DELETE (-1 old), and the number of rows.
pub async fn update_or_delete(
    session: &Session,
    stmt: &Statement,
    params: &[ScalarValue],
) -> Result<(ObjectId, ZBatch, usize)> {
    let (table, select, updated) = rewrite_as_select(session, stmt)?;
    let parsed: Vec<Parsed> = sql::parse_all(&select)?;
    let query = parsed
        .into_iter()
        .next()
        .ok_or_else(|| crate::internal!("empty rewrite"))?;
    session.read_state().read_latest();
    let (schema, batches) = session.query_batches(&query.stmt, params).await?;
    let data = concat_batches(&schema, &batches)?;
    let n = data.num_rows();
    let width = table.columns.len();
    let old_cols: Vec<ArrayRef> = data.columns()[..width].to_vec();
    let old = RecordBatch::try_new(table.schema(), old_cols.clone())?;
    if updated.is_empty() {
        return Ok((table.id, ZBatch::uniform(old, -1), n));
    }
    let mut new_cols = old_cols;
    for (k, idx) in updated.iter().enumerate() {
        new_cols[*idx] = to_column_type(data.column(width + k), &table.columns[*idx])?;
    }
    for idx in &updated {
        let c = &table.columns[*idx];
        if c.not_null && new_cols[*idx].null_count() > 0 {
            return Err(crate::err!(
                sqlstate::NOT_NULL_VIOLATION,
                "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                c.name,
                table.name
            ));
        }
    }
    let new = RecordBatch::try_new(table.schema(), new_cols)?;
    let both = concat_batches(&table.schema(), [&old, &new])?;
    let mut weights = vec![-1i64; n];
    weights.extend(std::iter::repeat_n(1i64, n));
    Ok((table.id, ZBatch::new(both, Int64Array::from(weights)), n))
}

/// Inside a transaction, checks a statement's change against what the transaction sees
/// (23505 for a duplicate key), as PostgreSQL does at statement time; COMMIT checks again
/// against concurrent commits. Costs O(transaction size), not O(table size): only keys the
/// transaction touches are looked up in the table's index.
pub fn check_in_transaction(session: &Session, table: ObjectId, change: &ZBatch) -> Result<()> {
    let catalog = session.engine().catalog();
    let Some(def) = catalog.table_by_id(table) else {
        return Ok(());
    };
    if def.primary_key.is_empty() || change.weights.values().iter().all(|w| *w < 0) {
        return Ok(());
    }
    // The transaction's net change, this statement included.
    let mut all = session.read_state().overlay(table);
    all.push(change.clone());
    let net = ZBatch::consolidate(&all, &def.schema())?;
    let keys: Vec<ArrayRef> = def
        .primary_key
        .iter()
        .map(|i| net.data.column(*i).clone())
        .collect();
    let converter = RowConverter::new(
        keys.iter()
            .map(|k| SortField::new(k.data_type().clone()))
            .collect(),
    )?;
    let converted = converter.convert_columns(&keys)?;
    // Per key: the net change of its row count, and a row that adds it.
    let mut per_key: HashMap<&[u8], (i64, Option<usize>)> = HashMap::new();
    for (i, row) in converted.iter().enumerate() {
        let w = net.weights.value(i);
        let entry = per_key.entry(row.data()).or_insert((0, None));
        entry.0 += w;
        if w > 0 && entry.1.is_none() {
            entry.1 = Some(i);
        }
    }
    let added: Vec<(i64, usize)> = per_key
        .values()
        .filter_map(|(n, row)| row.map(|r| (*n, r)))
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    let indices = UInt32Array::from(added.iter().map(|(_, r)| *r as u32).collect::<Vec<_>>());
    let rows = take_record_batch(&net.data, &indices)?;
    let existing = session.engine().count_keys(table, &rows)?;
    for ((n, row), base) in added.iter().zip(existing) {
        if base as i64 + n > 1 {
            let key_names: Vec<&str> = def
                .primary_key
                .iter()
                .map(|k| def.columns[*k].name.as_str())
                .collect();
            let values: Vec<String> = keys
                .iter()
                .map(|k| {
                    datafusion::arrow::util::display::array_value_to_string(k, *row)
                        .unwrap_or_default()
                })
                .collect();
            return Err(crate::err!(
                sqlstate::UNIQUE_VIOLATION,
                "duplicate key value violates unique constraint \"{}_pkey\"",
                def.name
            )
            .with_detail(format!(
                "Key ({})=({}) already exists.",
                key_names.join(", "),
                values.join(", ")
            )));
        }
    }
    Ok(())
}

/// Converts COPY text columns into table rows; on error returns (row, column, error).
pub fn copy_rows(
    copy: &CopyIn,
    columns: Vec<StringArray>,
) -> std::result::Result<RecordBatch, (usize, usize, Error)> {
    let rows = columns.first().map(|c| c.len()).unwrap_or(0);
    let mut values = Vec::with_capacity(columns.len());
    for (k, (text, col)) in columns.iter().zip(&copy.columns).enumerate() {
        let def = &copy.table.columns[*col];
        let array = parse_text_column(text, def.sql_type).map_err(|(row, e)| (row, k, e))?;
        if def.not_null && array.null_count() > 0 {
            let row = (0..array.len()).find(|i| array.is_null(*i)).unwrap_or(0);
            return Err((
                row,
                k,
                crate::err!(
                    sqlstate::NOT_NULL_VIOLATION,
                    "null value in column \"{}\" of relation \"{}\" violates not-null constraint",
                    def.name,
                    copy.table.name
                ),
            ));
        }
        values.push(array);
    }
    build_rows(&copy.table, &copy.columns, values, rows).map_err(|e| (0, 0, e))
}
