//! Watermarks through a dataflow: which columns of each operator's output are bounded below
//! by a watermark, and by what value.
//!
//! A watermark `w` on a column is the promise that every change (insert or delete) the
//! operator emits in a later epoch has a value ≥ `w` in that column. Tables with
//! `WATERMARK FOR` give their event-time column one (late rows are refused at commit, so it
//! holds from the source on); operators carry it to their output where the promise still holds:
//!
//! | operator | output watermarks |
//! |---|---|
//! | source | the table's watermark column; a view's output watermarks |
//! | filter | the input's |
//! | projection | a column, or an expression non-decreasing in one watermarked column (`+`/`−` a constant, `date_bin`, `date_trunc`, casts between time types), evaluated at the watermark |
//! | union | per column, the smallest of the inputs' (all must have one) |
//! | aggregate | group keys, as a projection; none on aggregate values |
//! | inner and semi join | an equi-join key with a watermark on both sides: the smaller |
//! | inner join, interval | a column `c` in a residual `c ≥ y` across the sides: the smaller of its own and `y` at the other side's watermark |
//! | top-k | partition keys that are columns |
//! | emit on window close | the input's |
//! | temporal filter | none: its rows enter and leave with the clock, whatever their event time |
//! | session window | `window_end`: the time column's (a change only touches sessions a new row reaches) |
//!
//! At an epoch's barrier an operator may treat every key below its input's watermark as
//! final: aggregates free those groups, EMIT ON WINDOW CLOSE emits those rows.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, new_null_array};
use datafusion::arrow::compute::kernels::cmp::lt;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Operator as BinaryOp;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column, Literal, TryCastExpr};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};

use super::spec::{DataflowSpec, Input, JoinKind, NodeId, NodeKind};
use crate::error::Result;
use crate::types::ObjectId;

/// Per output column: its watermark, if it has one.
pub type Watermarks = Vec<Option<ScalarValue>>;

/// The watermark `micros` (µs since 1970 UTC) as a value of a column of type `data_type`
/// (rounded down for dates); `None` for other types.
pub fn scalar_for(micros: i64, data_type: &DataType) -> Option<ScalarValue> {
    match data_type {
        DataType::Timestamp(unit, tz) => {
            let us = ScalarValue::TimestampMicrosecond(Some(micros), tz.clone());
            if *unit == TimeUnit::Microsecond {
                Some(us)
            } else {
                us.cast_to(data_type).ok()
            }
        }
        DataType::Date32 => Some(ScalarValue::Date32(Some(
            micros.div_euclid(86_400_000_000) as i32
        ))),
        _ => None,
    }
}

/// Which output columns of `spec` have a watermark once its sources have one (whatever their
/// values now): a table's `WATERMARK FOR` column, and the columns `views` names for an upstream
/// view (its own [`watermarked_columns`]).
pub fn watermarked_columns(
    spec: &DataflowSpec,
    views: &dyn Fn(ObjectId) -> Vec<bool>,
) -> Result<Vec<bool>> {
    let all = propagate_all(spec, &|input| {
        let Some(node) = spec
            .nodes
            .iter()
            .find(|n| matches!(n.kind, NodeKind::Source(i) if i == input))
        else {
            return Vec::new();
        };
        let fields = node.schema.fields();
        let marked: Vec<bool> = match input {
            Input::Table(id) => (0..fields.len())
                .map(|c| spec.table_watermarks.contains(&(id, c)))
                .collect(),
            Input::View(id) => views(id),
        };
        fields
            .iter()
            .enumerate()
            .map(|(c, f)| {
                marked
                    .get(c)
                    .copied()
                    .unwrap_or(false)
                    .then(|| scalar_for(0, f.data_type()))
                    .flatten()
            })
            .collect()
    })?;
    Ok(all[spec.output()].iter().map(Option::is_some).collect())
}

/// The output watermarks of every node of `spec`, in node order, given those of its sources.
pub fn propagate_all(
    spec: &DataflowSpec,
    sources: &dyn Fn(Input) -> Watermarks,
) -> Result<Vec<Watermarks>> {
    let mut all: Vec<Watermarks> = Vec::with_capacity(spec.nodes.len());
    for id in 0..spec.nodes.len() {
        let inputs: Vec<&Watermarks> = spec.nodes[id].inputs.iter().map(|i| &all[*i]).collect();
        let out = propagate(spec, id, &inputs, sources)?;
        all.push(out);
    }
    Ok(all)
}

/// The output watermarks of node `id` given its inputs'.
pub fn propagate(
    spec: &DataflowSpec,
    id: NodeId,
    inputs: &[&Watermarks],
    sources: &dyn Fn(Input) -> Watermarks,
) -> Result<Watermarks> {
    let node = &spec.nodes[id];
    let width = node.schema.fields().len();
    let none = || vec![None; width];
    let input_schema = |port: usize| spec.nodes[node.inputs[port]].schema.clone();
    Ok(match &node.kind {
        NodeKind::Source(input) => {
            let mut w = sources(*input);
            w.resize(width, None);
            w
        }
        // A temporal filter's rows enter and leave with the clock, at any event time.
        NodeKind::Constant(_) | NodeKind::TemporalFilter(_) => none(),
        // A change touches only sessions a row at or above the time watermark joins or
        // starts: their ends are above it. (Their rows and starts may be far older.)
        NodeKind::SessionWindow(s) => {
            let mut w = none();
            let end_type = node.schema.field(width - 1).data_type();
            if let Some(v) = inputs[0].get(s.ts).cloned().flatten() {
                w[width - 1] = v.cast_to(end_type).ok();
            }
            w
        }
        NodeKind::FilterProject { exprs: None, .. } | NodeKind::EmitOnWindowClose => {
            inputs[0].clone()
        }
        NodeKind::FilterProject {
            exprs: Some(exprs), ..
        } => exprs
            .iter()
            .map(|e| at_watermark(e, &input_schema(0), inputs[0]))
            .collect::<Result<_>>()?,
        NodeKind::Union => (0..width)
            .map(|c| {
                inputs
                    .iter()
                    .map(|w| w.get(c).cloned().flatten())
                    .try_fold(None::<ScalarValue>, |low, w| {
                        let w = w?;
                        Some(Some(match low {
                            Some(l) if l <= w => l,
                            _ => w,
                        }))
                    })
                    .flatten()
            })
            .collect(),
        NodeKind::Aggregate { group_by, .. } => {
            let mut out = group_by
                .iter()
                .map(|e| at_watermark(e, &input_schema(0), inputs[0]))
                .collect::<Result<Watermarks>>()?;
            out.resize(width, None);
            out
        }
        NodeKind::Join(j) if matches!(j.kind, JoinKind::Inner | JoinKind::LeftSemi) => {
            let left_width = input_schema(0).fields().len();
            let mut out = none();
            for (l, r) in &j.on {
                let (Some(l), Some(r)) = (as_column(l), as_column(r)) else {
                    continue;
                };
                let (Some(Some(wl)), Some(Some(wr))) = (inputs[0].get(l), inputs[1].get(r)) else {
                    continue;
                };
                let low = if wl <= wr { wl.clone() } else { wr.clone() };
                out[l] = Some(low.clone());
                if j.kind == JoinKind::Inner && left_width + r < width {
                    out[left_width + r] = Some(low);
                }
            }
            if j.kind == JoinKind::Inner {
                // Interval joins: for a conjunct `c ≥ y` with `c` a column of one side, a
                // later output row has c ≥ its side's watermark (a new row) or c ≥ y at the
                // other side's watermark (an old row meeting a new partner).
                let pair = pair_watermarks(inputs[0], inputs[1], left_width);
                for b in interval_bounds(j.filter.as_ref(), left_width) {
                    let Some(c) = as_column(&b.x).filter(|c| *c < width) else {
                        continue;
                    };
                    let Some(Some(own)) = pair.get(c) else {
                        continue;
                    };
                    let Some(met) = at_watermark(&b.y, &node.schema, &pair)? else {
                        continue;
                    };
                    let low = if *own <= met { own.clone() } else { met };
                    if out[c].as_ref().is_none_or(|prev| *prev < low) {
                        out[c] = Some(low);
                    }
                }
            }
            out
        }
        NodeKind::Join(_) => none(),
        NodeKind::TopK(t) => {
            let mut out = none();
            for e in &t.partition_by {
                if let Some(c) = as_column(e)
                    && c < width
                {
                    out[c] = inputs[0].get(c).cloned().flatten();
                }
            }
            out
        }
    })
}

/// A residual conjunct `x ≥ y`, `x` over the columns of side `side` only, `y` over the
/// other side's column `other_column` (as a column of the pair schema) only.
pub struct IntervalBound {
    /// 0: left, 1: right.
    pub side: usize,
    pub x: Arc<dyn PhysicalExpr>,
    pub y: Arc<dyn PhysicalExpr>,
    pub other_column: usize,
}

/// The interval bounds in `filter` (an inner join's residual over `left_width` left columns
/// and then the right ones).
pub fn interval_bounds(
    filter: Option<&Arc<dyn PhysicalExpr>>,
    left_width: usize,
) -> Vec<IntervalBound> {
    use datafusion::logical_expr::Operator as Op;
    use datafusion::physical_expr::expressions::BinaryExpr;
    let mut conjuncts = Vec::new();
    let mut todo: Vec<Arc<dyn PhysicalExpr>> = filter.into_iter().cloned().collect();
    while let Some(e) = todo.pop() {
        match e.downcast_ref::<BinaryExpr>() {
            Some(b) if *b.op() == Op::And => {
                todo.push(b.left().clone());
                todo.push(b.right().clone());
            }
            Some(b) => conjuncts.push((b.left().clone(), *b.op(), b.right().clone())),
            None => {}
        }
    }
    let side_of = |c: usize| usize::from(c >= left_width);
    let mut out = Vec::new();
    for (l, op, r) in conjuncts {
        let (x, y) = match op {
            Op::GtEq | Op::Gt => (l, r),
            Op::LtEq | Op::Lt => (r, l),
            _ => continue,
        };
        let (Some(xc), Some(yc)) = (monotone_in(&x), monotone_in(&y)) else {
            continue;
        };
        if side_of(xc) != side_of(yc) {
            out.push(IntervalBound {
                side: side_of(xc),
                x,
                y,
                other_column: yc,
            });
        }
    }
    out
}

/// Per row of `columns`: whether some bounded column (index, watermark) is below its
/// watermark, so the row (a group, a window, a key) is final.
pub fn below_any<'a>(
    columns: &[ArrayRef],
    bounds: impl IntoIterator<Item = (usize, &'a ScalarValue)>,
) -> Result<Vec<bool>> {
    let rows = columns.first().map_or(0, |c| c.len());
    let mut out = vec![false; rows];
    for (c, w) in bounds {
        let Some(column) = columns.get(c) else {
            continue;
        };
        let below = lt(column, &w.to_scalar()?)?;
        for (row, b) in below.iter().enumerate() {
            out[row] |= b == Some(true);
        }
    }
    Ok(out)
}

/// The watermarks of a join's pair of rows (the left side's columns, then the right's).
pub fn pair_watermarks(left: &Watermarks, right: &Watermarks, left_width: usize) -> Watermarks {
    left.iter()
        .cloned()
        .chain(std::iter::repeat(None))
        .take(left_width)
        .chain(right.iter().cloned())
        .collect()
}

fn as_column(e: &Arc<dyn PhysicalExpr>) -> Option<usize> {
    e.downcast_ref::<Column>().map(|c| c.index())
}

/// The watermark of `expr`'s value over rows whose watermarked columns are at least their
/// watermark: `expr` at the watermark when it is non-decreasing in the one column it reads and
/// that column has one.
pub fn at_watermark(
    expr: &Arc<dyn PhysicalExpr>,
    schema: &SchemaRef,
    input: &Watermarks,
) -> Result<Option<ScalarValue>> {
    let Some(column) = monotone_in(expr) else {
        return Ok(None);
    };
    let Some(Some(w)) = input.get(column) else {
        return Ok(None);
    };
    if let Some(c) = as_column(expr) {
        return Ok(input.get(c).cloned().flatten());
    }
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i == column {
                w.to_array_of_size(1)
            } else {
                Ok(new_null_array(f.data_type(), 1))
            }
        })
        .collect::<datafusion::error::Result<_>>()?;
    let batch = RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )?;
    let value = expr.evaluate(&batch)?.into_array(1)?;
    let value = ScalarValue::try_from_array(&value, 0)?;
    Ok((!value.is_null()).then_some(value))
}

/// The one column `expr` reads, if `expr` never decreases when that column increases.
pub fn monotone_in(expr: &Arc<dyn PhysicalExpr>) -> Option<usize> {
    if let Some(c) = expr.downcast_ref::<Column>() {
        return Some(c.index());
    }
    let constant = |e: &Arc<dyn PhysicalExpr>| e.downcast_ref::<Literal>().is_some();
    let time_type = |t: &DataType| matches!(t, DataType::Timestamp(_, _) | DataType::Date32);
    if let Some(b) = expr.downcast_ref::<BinaryExpr>() {
        return match b.op() {
            BinaryOp::Plus if constant(b.left()) => monotone_in(b.right()),
            BinaryOp::Plus | BinaryOp::Minus if constant(b.right()) => monotone_in(b.left()),
            _ => None,
        };
    }
    if let Some(c) = expr.downcast_ref::<CastExpr>() {
        return time_type(c.cast_type())
            .then(|| monotone_in(c.expr()))
            .flatten();
    }
    if let Some(c) = expr.downcast_ref::<TryCastExpr>() {
        return time_type(c.cast_type())
            .then(|| monotone_in(c.expr()))
            .flatten();
    }
    if let Some(f) = expr.downcast_ref::<ScalarFunctionExpr>() {
        let args = f.args();
        return match f.name() {
            // date_bin(stride, source [, origin]), date_trunc(precision, source)
            "date_bin" if args.len() >= 2 && constant(&args[0]) => {
                if args.len() == 3 && !constant(&args[2]) {
                    return None;
                }
                monotone_in(&args[1])
            }
            "date_trunc" | "datetrunc" if args.len() == 2 && constant(&args[0]) => {
                monotone_in(&args[1])
            }
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::common::DFSchema;
    use datafusion::prelude::SessionContext;

    fn expr(sql: &str, schema: &SchemaRef) -> Arc<dyn PhysicalExpr> {
        let df = DFSchema::try_from(schema.as_ref().clone()).unwrap();
        let ctx = SessionContext::new();
        let e = ctx.parse_sql_expr(sql, &df).unwrap();
        ctx.create_physical_expr(e, &df).unwrap()
    }

    #[test]
    fn monotone_expressions_carry_the_watermark() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int32, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        let w = scalar_for(10_500_000, schema.field(1).data_type()).unwrap();
        let input = vec![None, Some(w.clone())];
        let at = |sql: &str| at_watermark(&expr(sql, &schema), &schema, &input).unwrap();
        assert_eq!(at("ts"), Some(w));
        assert_eq!(
            at("date_bin(INTERVAL '10 seconds', ts)"),
            scalar_for(10_000_000, schema.field(1).data_type())
        );
        assert_eq!(
            at("date_bin(INTERVAL '10 seconds', ts) + INTERVAL '10 seconds'"),
            scalar_for(20_000_000, schema.field(1).data_type())
        );
        assert_eq!(at("id"), None);
        assert_eq!(at("TIMESTAMP '2030-01-01 00:00:00' - ts"), None);
        assert_eq!(at("extract(second from ts)"), None);
    }
}
