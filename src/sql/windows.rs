//! Window table functions in `FROM`: `TUMBLE(t, ts, size)` and `HOP(t, ts, slide, size)`.
//!
//! Each is rewritten, before planning, into a query over `t` that adds the columns
//! `window_start` and `window_end`, so ad-hoc `SELECT`s and materialized views get the same
//! meaning and views maintain windows with the operators they already have:
//!
//! ```text
//!  TUMBLE(bid, date_time, INTERVAL '10' SECOND)
//!    ─► (SELECT *, date_bin(size, date_time) AS window_start,
//!                  date_bin(size, date_time) + size AS window_end FROM bid) AS bid
//!  HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)   (size / slide = 5 windows a row)
//!    ─► (SELECT *, date_bin(slide, date_time) - 0 × slide AS window_start, … FROM bid
//!        UNION ALL … - 1 × slide …  UNION ALL … - 4 × slide …) AS bid
//! ```
//!
//! Windows are aligned to the Unix epoch (as `date_bin` with its default origin) and include
//! their start, not their end. Without an alias the derived table keeps the input's name, so
//! `bid.price` still resolves. Sizes are interval literals of days or less; months and years
//! vary in length and are refused.

use std::ops::ControlFlow;

use datafusion::arrow::compute::kernels::cast_utils::parse_interval_month_day_nano;
use datafusion::sql::sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, Statement, TableFactor, VisitMut, VisitorMut,
};

use crate::error::{Result, sqlstate};
use crate::unsupported;

/// The most windows one row may fall into with `HOP` (size / slide).
pub const MAX_HOP_WINDOWS: i64 = 1000;

/// Rewrites every window table function of `stmt` into a derived table. Statements without one
/// come back unchanged.
pub fn rewrite(stmt: &Statement) -> Result<Statement> {
    struct Rewriter {
        error: Option<crate::error::Error>,
    }
    impl VisitorMut for Rewriter {
        type Break = ();
        fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            match rewrite_factor(factor) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    self.error = Some(e);
                    ControlFlow::Break(())
                }
            }
        }
    }
    let mut stmt = stmt.clone();
    let mut rewriter = Rewriter { error: None };
    let _ = VisitMut::visit(&mut stmt, &mut rewriter);
    match rewriter.error {
        Some(e) => Err(e),
        None => Ok(stmt),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Window {
    Tumble,
    Hop,
    Session,
}

fn window_kind(name: &ast::ObjectName) -> Option<Window> {
    let [part] = name.0.as_slice() else {
        return None;
    };
    let ident = part.as_ident()?;
    match super::normalize_ident(ident).as_str() {
        "tumble" => Some(Window::Tumble),
        "hop" => Some(Window::Hop),
        "session" => Some(Window::Session),
        _ => None,
    }
}

fn rewrite_factor(factor: &mut TableFactor) -> Result<()> {
    let TableFactor::Table {
        name,
        alias,
        args: Some(args),
        ..
    } = factor
    else {
        return Ok(());
    };
    let Some(kind) = window_kind(name) else {
        return Ok(());
    };
    let fname = match kind {
        Window::Tumble => "TUMBLE",
        Window::Hop => "HOP",
        Window::Session => "SESSION",
    };
    if kind == Window::Session {
        return Err(unsupported!(
            "SESSION windows are not supported yet (TUMBLE and HOP windows are)"
        ));
    }
    let exprs = args
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
            other => Err(crate::err!(
                sqlstate::SYNTAX_ERROR,
                "{fname} takes plain arguments, not {other}"
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    let expected = if kind == Window::Hop { 4 } else { 3 };
    if exprs.len() != expected {
        let usage = match kind {
            Window::Hop => "HOP(table, time_column, slide, size)",
            _ => "TUMBLE(table, time_column, size)",
        };
        return Err(crate::err!(
            sqlstate::UNDEFINED_FUNCTION,
            "{fname} takes {expected} arguments: {usage}"
        ));
    }
    let table = match &exprs[0] {
        Expr::Identifier(i) => ast::ObjectName::from(vec![i.clone()]),
        Expr::CompoundIdentifier(parts) => ast::ObjectName::from(parts.clone()),
        other => {
            return Err(crate::err!(
                sqlstate::SYNTAX_ERROR,
                "the first argument of {fname} must name a table or view, not {other}"
            ));
        }
    };
    let ts = &exprs[1];
    let bins = match kind {
        Window::Tumble => {
            let size = interval_nanos(&exprs[2], fname, "size")?;
            vec![(0, size, size)]
        }
        _ => {
            let slide = interval_nanos(&exprs[2], fname, "slide")?;
            let size = interval_nanos(&exprs[3], fname, "size")?;
            if size % slide != 0 {
                return Err(crate::err!(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    "HOP window size must be a multiple of its slide"
                ));
            }
            let n = size / slide;
            if n > MAX_HOP_WINDOWS {
                return Err(crate::err!(
                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    "HOP puts each row into size / slide = {n} windows; at most {MAX_HOP_WINDOWS} are allowed"
                ));
            }
            (0..n).map(|k| (k * slide, slide, size)).collect()
        }
    };
    let selects: Vec<String> = bins
        .iter()
        .map(|(back, bin, size)| {
            let start = if *back == 0 {
                format!("date_bin({}, {ts})", interval_sql(*bin))
            } else {
                format!(
                    "date_bin({}, {ts}) - {}",
                    interval_sql(*bin),
                    interval_sql(*back)
                )
            };
            format!(
                "SELECT *, {start} AS window_start, {start} + {} AS window_end FROM {table}",
                interval_sql(*size)
            )
        })
        .collect();
    let text = selects.join(" UNION ALL ");
    let parsed = super::parse_all(&text)?;
    let Some(Statement::Query(query)) = parsed.into_iter().next().map(|p| p.stmt) else {
        return Err(crate::internal!("window rewrite produced no query: {text}"));
    };
    let alias = alias.clone().unwrap_or_else(|| ast::TableAlias {
        explicit: true,
        name: table
            .0
            .last()
            .and_then(|p| p.as_ident())
            .cloned()
            .unwrap_or_else(|| ast::Ident::new(fname.to_lowercase())),
        columns: vec![],
        at: None,
    });
    *factor = TableFactor::Derived {
        lateral: false,
        subquery: query,
        alias: Some(alias),
        sample: None,
    };
    Ok(())
}

/// An interval literal of `nanos` nanoseconds.
fn interval_sql(nanos: i64) -> String {
    format!("INTERVAL '{nanos} nanoseconds'")
}

/// The length of a window argument: an interval literal (`INTERVAL '10' SECOND`,
/// `INTERVAL '10 seconds'`, `'10 seconds'::interval`) of days or less, positive.
fn interval_nanos(e: &Expr, fname: &str, what: &str) -> Result<i64> {
    let bad = || {
        crate::err!(
            sqlstate::INVALID_PARAMETER_VALUE,
            "the {what} of {fname} must be a positive interval literal such as INTERVAL '10 seconds', not {e}"
        )
    };
    let text = match e {
        Expr::Interval(iv) => {
            let value = string_literal(&iv.value).ok_or_else(bad)?;
            match (&iv.leading_field, &iv.last_field) {
                (None, None) => value,
                (Some(field), None) => format!("{value} {field}"),
                _ => return Err(bad()),
            }
        }
        Expr::Cast {
            expr,
            data_type: ast::DataType::Interval { .. },
            ..
        } => string_literal(expr).ok_or_else(bad)?,
        Expr::Nested(inner) => return interval_nanos(inner, fname, what),
        _ => return Err(bad()),
    };
    let iv = parse_interval_month_day_nano(&text).map_err(|_| bad())?;
    if iv.months != 0 {
        return Err(unsupported!(
            "{fname} windows measured in months or years are not supported (their length varies); group by date_trunc('month', …) instead"
        ));
    }
    let nanos = i128::from(iv.days) * 86_400_000_000_000 + i128::from(iv.nanoseconds);
    if nanos <= 0 {
        return Err(bad());
    }
    i64::try_from(nanos).map_err(|_| bad())
}

fn string_literal(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) => Some(s.clone()),
            ast::Value::Number(n, _) => Some(n.clone()),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> Result<String> {
        let parsed = super::super::parse_all(sql)?;
        Ok(rewrite(&parsed[0].stmt)?.to_string())
    }

    #[test]
    fn tumble_becomes_a_projection_named_after_its_table() {
        let sql = rewritten(
            "SELECT window_start, count(*) FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) GROUP BY 1",
        )
        .unwrap();
        assert!(
            sql.contains("date_bin(INTERVAL '10000000000 nanoseconds', date_time) AS window_start"),
            "{sql}"
        );
        assert!(sql.contains("FROM bid) AS bid"), "{sql}");
    }

    #[test]
    fn hop_is_a_union_of_size_over_slide_projections() {
        let sql = rewritten(
            "SELECT * FROM HOP(bid, date_time, INTERVAL '2 seconds', INTERVAL '10 seconds') AS h",
        )
        .unwrap();
        assert_eq!(sql.matches("UNION ALL").count(), 4, "{sql}");
        assert!(sql.ends_with("AS h"), "{sql}");
    }

    #[test]
    fn bad_window_arguments_are_refused_with_a_reason() {
        let err = |sql: &str| rewritten(sql).unwrap_err().to_string();
        assert!(
            err("SELECT * FROM HOP(t, ts, INTERVAL '3 seconds', INTERVAL '10 seconds')")
                .contains("multiple")
        );
        assert!(err("SELECT * FROM TUMBLE(t, ts, INTERVAL '1 month')").contains("months"));
        assert!(err("SELECT * FROM TUMBLE(t, ts, 10)").contains("interval literal"));
        assert!(err("SELECT * FROM TUMBLE(t, ts)").contains("3 arguments"));
        assert!(err("SELECT * FROM SESSION(t, ts, INTERVAL '1 minute')").contains("SESSION"));
    }
}
