//! Temporal filters: the `WHERE` conditions of a view that compare a row with `now()`.
//!
//! ```text
//!  ts > now() - INTERVAL '1 hour'   ⇔  now() < ts + INTERVAL '1 hour'   → Before(ts + 1 hour)
//!  now() - ts < INTERVAL '1 hour'   ⇔  now() < ts + INTERVAL '1 hour'   → Before(ts + 1 hour)
//!  ts <= now()                      ⇔  now() >= ts                      → After(ts)
//!  now() BETWEEN a AND b            ⇔  now() >= a AND now() <= b        → After(a), Before(b)
//! ```
//!
//! Each condition is solved for `now()`: the other side minus (or plus) the terms added to
//! `now()` is an expression of the row alone, which the dataflow's
//! [`crate::dataflow::ops::temporal::TemporalFilter`] evaluates once per row to know when the
//! row enters and leaves the view. Anything else mentioning `now()` in a view is refused with
//! 0A000: its value could not be maintained as time passes.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, ExprSchemable, Operator};

use datafusion::arrow::compute::kernels::cast_utils::parse_interval_month_day_nano;
use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;

use crate::dataflow::spec::TemporalBoundKind;
use crate::error::{Result, sqlstate};
use crate::unsupported;

/// Whether `e` is a call of `now()` (also written `current_timestamp`).
pub fn is_now(e: &Expr) -> bool {
    matches!(e, Expr::ScalarFunction(f) if f.func.name() == "now")
}

/// Whether `e` calls `now()` anywhere.
pub fn contains_now(e: &Expr) -> bool {
    e.exists(|e| Ok(is_now(e))).unwrap_or(false)
}

/// The error for `now()` where a temporal filter cannot take it.
pub fn unsupported_now(e: &Expr) -> crate::error::Error {
    unsupported!(
        "now() in a materialized view is supported only in WHERE conditions that compare now(), plus or minus an expression of the row, with an expression of the row, such as ts > now() - INTERVAL '1 hour' (with >, >=, <, <= or BETWEEN, joined by AND); not in {e}"
    )
}

/// Splits a filter's conjuncts into plain conditions and temporal ones, each of the latter
/// solved for `now()`: an expression of the row (over `schema`) and how `now()` compares with
/// it.
#[allow(clippy::type_complexity)]
pub fn split(
    conjuncts: &[&Expr],
    schema: &DFSchema,
) -> Result<(Vec<Expr>, Vec<(Expr, TemporalBoundKind)>)> {
    let mut plain = Vec::new();
    let mut temporal = Vec::new();
    let mut conditions: Vec<Expr> = Vec::new();
    for c in conjuncts {
        match c {
            // x BETWEEN lo AND hi with now() in a bound: two comparisons.
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) if contains_now(expr) || contains_now(low) || contains_now(high) => {
                conditions.push(Expr::BinaryExpr(BinaryExpr::new(
                    expr.clone(),
                    Operator::GtEq,
                    low.clone(),
                )));
                conditions.push(Expr::BinaryExpr(BinaryExpr::new(
                    expr.clone(),
                    Operator::LtEq,
                    high.clone(),
                )));
            }
            other => conditions.push((*other).clone()),
        }
    }
    for c in conditions {
        if !contains_now(&c) {
            plain.push(c);
            continue;
        }
        temporal.push(solve_condition(&c, schema)?);
    }
    Ok((plain, temporal))
}

/// A comparison with `now()` on one side, solved for it: `now() OP bound` with `bound` an
/// expression of the row alone.
fn solve_condition(c: &Expr, schema: &DFSchema) -> Result<(Expr, TemporalBoundKind)> {
    let Expr::BinaryExpr(b) = c else {
        return Err(unsupported_now(c));
    };
    let (now_side, op, other) = match (contains_now(&b.left), contains_now(&b.right)) {
        (true, false) => (b.left.as_ref(), b.op, b.right.as_ref()),
        (false, true) => match b.op.swap() {
            Some(op) => (b.right.as_ref(), op, b.left.as_ref()),
            None => return Err(unsupported_now(c)),
        },
        _ => return Err(unsupported_now(c)),
    };
    let kind = match op {
        Operator::Gt => TemporalBoundKind::After { inclusive: false },
        Operator::GtEq => TemporalBoundKind::After { inclusive: true },
        Operator::Lt => TemporalBoundKind::Before { inclusive: false },
        Operator::LtEq => TemporalBoundKind::Before { inclusive: true },
        _ => return Err(unsupported_now(c)),
    };
    let bound = solve(now_side, other.clone(), schema)?.ok_or_else(|| unsupported_now(c))?;
    let data_type = bound.get_type(schema)?;
    if !is_time(&data_type) {
        return Err(unsupported!(
            "a temporal filter comparing now() with a value of type {data_type} (it must be a timestamp or date): {c}"
        ));
    }
    Ok((bound, kind))
}

/// Given `now_side OP other` where only `now_side` calls `now()`: the `bound` for which
/// `now() OP bound` says the same — terms added to or subtracted from `now()` move to the other
/// side, casts between timestamp types (or of a duration to an interval) go — or `None` for
/// another shape.
fn solve(now_side: &Expr, other: Expr, schema: &DFSchema) -> Result<Option<Expr>> {
    Ok(match now_side {
        e if is_now(e) => Some(other),
        Expr::Cast(c) if shifts_alike(c.field.data_type()) => solve(&c.expr, other, schema)?,
        Expr::TryCast(c) if shifts_alike(c.field.data_type()) => solve(&c.expr, other, schema)?,
        // now + x OP y ⇔ now OP y - x
        Expr::BinaryExpr(b) if b.op == Operator::Plus => {
            if contains_now(&b.left) && !contains_now(&b.right) {
                solve(&b.left, other - b.right.as_ref().clone(), schema)?
            } else if contains_now(&b.right) && !contains_now(&b.left) {
                solve(&b.right, other - b.left.as_ref().clone(), schema)?
            } else {
                None
            }
        }
        // now - x OP y ⇔ now OP y + x (written time first: timestamp + interval)
        Expr::BinaryExpr(b)
            if b.op == Operator::Minus && contains_now(&b.left) && !contains_now(&b.right) =>
        {
            let x = b.right.as_ref().clone();
            let sum = if is_time(&other.get_type(schema)?) {
                other + x
            } else {
                x + other
            };
            solve(&b.left, sum, schema)?
        }
        _ => None,
    })
}

/// `ADVANCE CLOCK TO '<timestamp>'` or `ADVANCE CLOCK BY '<interval>'` (a manual clock's
/// only move; see `engine::clock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockStep {
    /// To this time (µs since 1970 UTC).
    To(i64),
    /// Forward by this many µs.
    By(i64),
}

/// Parses what follows `ADVANCE CLOCK`: `TO` or `BY`, then a literal (`'…'`,
/// `TIMESTAMP '…'`, `INTERVAL '…'`, `'…'::interval`).
pub fn parse_clock_step(parser: &mut Parser<'_>) -> Result<ClockStep> {
    let syntax = |m: String| crate::err!(sqlstate::SYNTAX_ERROR, "syntax error: {m}");
    let to = if parser.parse_keyword(Keyword::TO) {
        true
    } else if parser.parse_keyword(Keyword::BY) {
        false
    } else {
        return Err(syntax(
            "expected ADVANCE CLOCK TO '<timestamp>' or ADVANCE CLOCK BY '<interval>'".into(),
        ));
    };
    let e = parser.parse_expr().map_err(|e| syntax(e.to_string()))?;
    let text = literal_text(&e).ok_or_else(|| {
        syntax(format!(
            "ADVANCE CLOCK takes a literal such as '2025-01-01 00:00:00' or INTERVAL '10 seconds', not {e}"
        ))
    })?;
    let bad = |m: String| crate::err!(sqlstate::INVALID_DATETIME_FORMAT, "{m}");
    if to {
        return parse_timestamp(&text).map(ClockStep::To).map_err(bad);
    }
    let iv = parse_interval_month_day_nano(&text)
        .map_err(|e| bad(format!("invalid interval {text:?}: {e}")))?;
    if iv.months != 0 {
        return Err(crate::err!(
            sqlstate::INVALID_PARAMETER_VALUE,
            "ADVANCE CLOCK BY takes days, hours, minutes or seconds, not months"
        ));
    }
    let micros = i64::from(iv.days) * 86_400_000_000 + iv.nanoseconds.div_euclid(1000);
    Ok(ClockStep::By(micros))
}

fn literal_text(e: &ast::Expr) -> Option<String> {
    let string = |v: &ast::Value| match v {
        ast::Value::SingleQuotedString(s) => Some(s.clone()),
        _ => None,
    };
    match e {
        ast::Expr::Value(v) => string(&v.value),
        ast::Expr::TypedString(t) => string(&t.value.value),
        ast::Expr::Interval(iv) => {
            let value = literal_text(&iv.value)?;
            Some(match &iv.leading_field {
                Some(field) => format!("{value} {field}"),
                None => value,
            })
        }
        ast::Expr::Cast { expr, .. } | ast::Expr::Nested(expr) => literal_text(expr),
        _ => None,
    }
}

/// A timestamp literal (`2025-01-01 00:00:00`, RFC 3339 with an offset) as µs since 1970 UTC;
/// times without an offset are UTC.
pub fn parse_timestamp(text: &str) -> std::result::Result<i64, String> {
    datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(text.trim())
        .map(|nanos| nanos.div_euclid(1000))
        .map_err(|e| format!("invalid timestamp {text:?}: {e}"))
}

/// Casts to these types keep what `now()`-based values mean: a timestamp to another
/// timestamp type, or `now() - ts` (a duration) to an interval.
fn shifts_alike(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(..) | DataType::Interval(_) | DataType::Duration(_)
    )
}

fn is_time(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
    )
}
