//! Event-time watermarks of tables (`WATERMARK FOR col AS expr`) and late rows.
//!
//! A table's watermark is the largest value of its watermark expression over the rows it holds
//! (`max(ts - INTERVAL '5 seconds')`): the promise that no row with an earlier event time
//! will be accepted any more. It moves once per write, at commit, in log order:
//!
//! ```text
//!  commit (commit lock held) ── rows with col < watermark before this write ──► late: counted,
//!         │                                                                     not written
//!         └─ the other rows ──► log record ──► table, views;  watermark = max(it, expr(rows))
//! ```
//!
//! All rows of one write are judged against the watermark as it stood before the write, so
//! the order of rows inside an INSERT or COPY does not matter. The log holds only the rows
//! that were on time, so a replay recomputes the same watermarks from the records; checkpoints
//! store each table's value (and its late-row count) at their LSN.
//!
//! Values are microseconds since 1970-01-01 UTC whatever the column's type (`timestamp`,
//! `timestamptz` or `date`).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::kernels::cmp::lt;
use datafusion::arrow::compute::{cast, filter, filter_record_batch, max};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

use crate::catalog::TableDef;
use crate::error::{Result, sqlstate};
use crate::types::{Lsn, ObjectId, TableWatermark, ZBatch};

/// Log records carry the number of late rows they refused as a change of this pseudo-table —
/// rows of (table id, late rows) — so that the counts are durable with the write. No table has
/// this id: replay and the dataflows skip it like the changes of a dropped table.
pub const LATE_ROWS: ObjectId = u64::MAX;

/// The [`LATE_ROWS`] change of a record.
pub fn late_rows_change(late: &HashMap<ObjectId, u64>) -> Result<ZBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("table", DataType::Int64, false),
        Field::new("late_rows", DataType::Int64, false),
    ]));
    let tables = Int64Array::from_iter_values(late.keys().map(|t| *t as i64));
    let counts = Int64Array::from_iter_values(late.values().map(|n| *n as i64));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(tables), Arc::new(counts)])?;
    Ok(ZBatch::uniform(batch, 1))
}

/// What a [`LATE_ROWS`] change says: (table, late rows).
pub fn late_rows_of(change: &ZBatch) -> Result<Vec<(ObjectId, u64)>> {
    let column = |i: usize| {
        change
            .data
            .columns()
            .get(i)
            .and_then(|c| c.as_primitive_opt::<Int64Type>())
            .ok_or_else(|| crate::err!(sqlstate::DATA_CORRUPTED, "malformed late-rows change"))
    };
    let (tables, counts) = (column(0)?, column(1)?);
    Ok(tables
        .values()
        .iter()
        .zip(counts.values())
        .map(|(t, n)| (*t as ObjectId, *n as u64))
        .collect())
}

/// Follows one table's watermark through its writes.
pub struct WatermarkTracker {
    column: usize,
    expr: Arc<dyn PhysicalExpr>,
    /// The value after each write not yet below the read horizon, oldest first (kept to undo
    /// writes whose log record failed); the last one is current.
    history: Vec<(Lsn, TableWatermark)>,
}

impl WatermarkTracker {
    /// The tracker of table `def`, starting at `initial` (its checkpointed value), or `None`
    /// when the table has no watermark.
    pub fn new(def: &TableDef, initial: Option<TableWatermark>) -> Result<Option<Self>> {
        let Some(w) = &def.watermark else {
            return Ok(None);
        };
        let column = def.column_index(&w.column).ok_or_else(|| {
            crate::internal!("watermark column {} of {} is missing", w.column, def.name)
        })?;
        let schema = DFSchema::try_from(def.schema().as_ref().clone())?;
        let ctx = SessionContext::new();
        let expr = ctx.parse_sql_expr(&w.expr, &schema)?;
        let expr = ctx.create_physical_expr(expr, &schema)?;
        let initial = initial.unwrap_or(TableWatermark {
            table: def.id,
            ..TableWatermark::default()
        });
        Ok(Some(WatermarkTracker {
            column,
            expr,
            history: vec![(Lsn(0), initial)],
        }))
    }

    pub fn current(&self) -> TableWatermark {
        self.history.last().map(|(_, w)| *w).unwrap_or_default()
    }

    /// Splits a write's rows (inserts only: the table is APPEND ONLY) into those on time and
    /// those late — `None` when none is late. A NULL event time is refused.
    pub fn split(&self, table: &str, change: &ZBatch) -> Result<Option<(ZBatch, ZBatch)>> {
        let column = change.data.column(self.column);
        if column.null_count() > 0 {
            let name = change.data.schema().field(self.column).name().clone();
            return Err(crate::err!(
                sqlstate::NOT_NULL_VIOLATION,
                "null value in column \"{name}\" of relation \"{table}\" violates not-null constraint"
            )
            .with_detail(format!(
                "\"{name}\" is the table's event time (WATERMARK FOR): every row needs one."
            )));
        }
        let Some(w) = self.current().micros else {
            return Ok(None);
        };
        let late_mask = lt(&micros(column)?, &Int64Array::new_scalar(w))?;
        if late_mask.true_count() == 0 {
            return Ok(None);
        }
        let keep = datafusion::arrow::compute::not(&late_mask)?;
        Ok(Some((
            filter_zbatch(change, &keep)?,
            filter_zbatch(change, &late_mask)?,
        )))
    }

    /// The watermark after `rows` (on time) are written, from `current`.
    pub fn advanced(&self, current: Option<i64>, rows: &ZBatch) -> Result<Option<i64>> {
        if rows.num_rows() == 0 {
            return Ok(current);
        }
        let values = self
            .expr
            .evaluate(&rows.data)?
            .into_array(rows.num_rows())?;
        let top = max(&micros(&values)?);
        Ok(match (current, top) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        })
    }

    /// Records the value after the write at `lsn`; values at or below `horizon` (no reader or
    /// failed write can go back to them) are folded into one.
    pub fn record(&mut self, lsn: Lsn, value: TableWatermark, horizon: Lsn) {
        self.history.push((lsn, value));
        let below = self.history.iter().filter(|(l, _)| *l <= horizon).count();
        if below > 1 {
            self.history.drain(..below - 1);
        }
    }

    /// Undoes the writes after `lsn` (their log record failed).
    pub fn rollback_after(&mut self, lsn: Lsn) {
        while self.history.len() > 1 && self.history.last().is_some_and(|(l, _)| *l > lsn) {
            self.history.pop();
        }
    }
}

/// The rows of `z` where `keep` is true.
fn filter_zbatch(z: &ZBatch, keep: &BooleanArray) -> Result<ZBatch> {
    let data = filter_record_batch(&z.data, keep)?;
    let weights = filter(&z.weights, keep)?
        .as_primitive::<Int64Type>()
        .clone();
    Ok(ZBatch::new(data, weights))
}

/// Timestamps or dates as µs since 1970 UTC.
fn micros(a: &dyn Array) -> Result<Int64Array> {
    let as_ts = match a.data_type() {
        DataType::Timestamp(TimeUnit::Microsecond, None) => None,
        _ => Some(cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None))?),
    };
    let a = as_ts.as_deref().unwrap_or(a);
    Ok(cast(a, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{ColumnDef, WatermarkDef};
    use crate::types::SqlType;
    use datafusion::arrow::array::{RecordBatch, TimestampMicrosecondArray};

    fn def() -> TableDef {
        TableDef {
            id: 7,
            name: "t".into(),
            columns: vec![ColumnDef {
                name: "ts".into(),
                sql_type: SqlType::Timestamp,
                not_null: true,
            }],
            primary_key: vec![],
            append_only: true,
            watermark: Some(WatermarkDef {
                column: "ts".into(),
                expr: "ts - INTERVAL '5 seconds'".into(),
            }),
            late_rows_table: None,
            source: None,
        }
    }

    fn rows(secs: &[i64]) -> ZBatch {
        let ts =
            TimestampMicrosecondArray::from(secs.iter().map(|s| s * 1_000_000).collect::<Vec<_>>());
        ZBatch::uniform(
            RecordBatch::try_new(def().schema(), vec![Arc::new(ts)]).unwrap(),
            1,
        )
    }

    #[test]
    fn rows_behind_the_watermark_before_the_write_are_late() {
        let mut t = WatermarkTracker::new(&def(), None).unwrap().unwrap();
        // The first write sets the watermark; none of its rows can be late.
        let first = rows(&[100, 90]);
        assert!(t.split("t", &first).unwrap().is_none());
        let next = t.advanced(None, &first).unwrap();
        assert_eq!(next, Some(95_000_000));
        t.record(
            Lsn(1),
            TableWatermark {
                table: 7,
                micros: next,
                late_rows: 0,
            },
            Lsn(0),
        );
        let (on_time, late) = t.split("t", &rows(&[94, 95, 200])).unwrap().unwrap();
        assert_eq!((on_time.num_rows(), late.num_rows()), (2, 1));
        let next = t.advanced(next, &on_time).unwrap();
        assert_eq!(next, Some(195_000_000));
        t.record(
            Lsn(2),
            TableWatermark {
                table: 7,
                micros: next,
                late_rows: 1,
            },
            Lsn(0),
        );
        t.rollback_after(Lsn(1));
        assert_eq!(t.current().micros, Some(95_000_000));
        assert_eq!(t.current().late_rows, 0);
    }
}
