//! Window table functions in `FROM`: `TUMBLE(t, ts, size)`, `HOP(t, ts, slide, size)` and
//! `SESSION(t, ts, gap [, key …])`.
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
//!  SESSION(clicks, ts, INTERVAL '30' SECOND, usr)
//!    ─► window functions (lag → new-session flags → running sum → session id → min/max per
//!       session), marked so that a view replaces them by one operator (`sql::session`)
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
    if kind == Window::Session {
        let query = session_query(&exprs)?;
        let table = table_arg(&exprs[0], fname)?;
        return derived(factor, query, &table, fname);
    }
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
    let table = table_arg(&exprs[0], fname)?;
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
    derived(factor, parse_query(&text)?, &table, fname)
}

/// The first argument of a window function: the table or view it reads.
fn table_arg(e: &Expr, fname: &str) -> Result<ast::ObjectName> {
    match e {
        Expr::Identifier(i) => Ok(ast::ObjectName::from(vec![i.clone()])),
        Expr::CompoundIdentifier(parts) => Ok(ast::ObjectName::from(parts.clone())),
        other => Err(crate::err!(
            sqlstate::SYNTAX_ERROR,
            "the first argument of {fname} must name a table or view, not {other}"
        )),
    }
}

fn parse_query(text: &str) -> Result<Box<ast::Query>> {
    let parsed = super::parse_all(text)?;
    match parsed.into_iter().next().map(|p| p.stmt) {
        Some(Statement::Query(query)) => Ok(query),
        _ => Err(crate::internal!("window rewrite produced no query: {text}")),
    }
}

/// Replaces `factor` by the derived table `query`, under the factor's alias or, without one,
/// the name of `table`.
fn derived(
    factor: &mut TableFactor,
    query: Box<ast::Query>,
    table: &ast::ObjectName,
    fname: &str,
) -> Result<()> {
    let TableFactor::Table { alias, .. } = factor else {
        return Err(crate::internal!(
            "a window function that is not a table factor"
        ));
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

/// The marker of a SESSION window's input in the rewritten query (see [`session_query`]).
pub const SESSION_INPUT: &str = "__eddy_session_input";
/// The marker of a SESSION window's output; its parameters follow, each after a
/// [`SESSION_SEPARATOR`]: the gap (µs), the time column, the key columns.
pub const SESSION_OUTPUT: &str = "__eddy_session";
pub const SESSION_SEPARATOR: char = '\u{1f}';
/// Helper columns of the rewritten query, not in its output.
const SESSION_NEW: &str = "__eddy_session_new";
const SESSION_ID: &str = "__eddy_session_id";

/// `SESSION(t, ts, gap [, key …])`: the rows of `t` with the bounds of their session — a
/// maximal run of rows (per key, by `ts`) each less than `gap` after the one before:
/// `window_start` is its first `ts`, `window_end` its last plus `gap`. As SQL window functions,
/// which ad-hoc queries run as they are; in a view the marked part becomes one incremental
/// operator (see `sql::lower`).
fn session_query(exprs: &[Expr]) -> Result<Box<ast::Query>> {
    let fname = "SESSION";
    if exprs.len() < 3 {
        return Err(crate::err!(
            sqlstate::UNDEFINED_FUNCTION,
            "SESSION takes at least 3 arguments: SESSION(table, time_column, gap [, key_column …])"
        ));
    }
    let table = table_arg(&exprs[0], fname)?;
    let column = |e: &Expr, what: &str| match e {
        Expr::Identifier(i) => Ok((e.to_string(), super::normalize_ident(i))),
        other => Err(crate::err!(
            sqlstate::SYNTAX_ERROR,
            "the {what} of SESSION must be a column name, not {other}"
        )),
    };
    let (ts, ts_name) = column(&exprs[1], "time column")?;
    let gap = interval_nanos(&exprs[2], fname, "gap")?;
    if gap % 1000 != 0 {
        return Err(crate::err!(
            sqlstate::INVALID_PARAMETER_VALUE,
            "the gap of SESSION must be a whole number of microseconds"
        ));
    }
    let keys = exprs[3..]
        .iter()
        .map(|e| column(e, "key columns"))
        .collect::<Result<Vec<_>>>()?;
    let gap_sql = interval_sql(gap);
    let key_list: Vec<&str> = keys.iter().map(|(sql, _)| sql.as_str()).collect();
    let by_key = if keys.is_empty() {
        String::new()
    } else {
        format!("PARTITION BY {} ", key_list.join(", "))
    };
    let session_partition = key_list
        .iter()
        .copied()
        .chain(std::iter::once(SESSION_ID))
        .collect::<Vec<_>>()
        .join(", ");
    let mut marker = format!("{SESSION_OUTPUT}{SESSION_SEPARATOR}{}", gap / 1000);
    for name in std::iter::once(&ts_name).chain(keys.iter().map(|(_, n)| n)) {
        marker.push(SESSION_SEPARATOR);
        marker.push_str(name);
    }
    let marker = marker.replace('"', "\"\"");
    let text = format!(
        "SELECT * FROM (SELECT * FROM (\
           SELECT *, min({ts}) OVER (PARTITION BY {session_partition}) AS window_start, \
             max({ts}) OVER (PARTITION BY {session_partition}) + {gap_sql} AS window_end \
           FROM (\
             SELECT *, sum({SESSION_NEW}) OVER ({by_key}ORDER BY {ts} \
               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS {SESSION_ID} \
             FROM (\
               SELECT *, CASE WHEN lag({ts}) OVER ({by_key}ORDER BY {ts}) + {gap_sql} > {ts} \
                 THEN 0 ELSE 1 END AS {SESSION_NEW} \
               FROM (SELECT * FROM {table}) AS {SESSION_INPUT}\
             ) AS __eddy_session_a\
           ) AS __eddy_session_b\
         ) AS __eddy_session_c) AS \"{marker}\""
    );
    let mut query = parse_query(&text)?;
    // The helper columns stay out of the marked part's `*` (sqlparser's PostgreSQL dialect has
    // no EXCLUDE to parse, but DataFusion plans it).
    let ast::SetExpr::Select(outer) = query.body.as_mut() else {
        return Err(crate::internal!("SESSION rewrite: unexpected query shape"));
    };
    let Some(ast::TableFactor::Derived { subquery, .. }) =
        outer.from.first_mut().map(|t| &mut t.relation)
    else {
        return Err(crate::internal!("SESSION rewrite: unexpected query shape"));
    };
    if let ast::SetExpr::Select(select) = subquery.body.as_mut()
        && let Some(ast::SelectItem::Wildcard(options)) = select.projection.first_mut()
    {
        options.opt_exclude = Some(ast::ExcludeSelectItem::Multiple(vec![
            ast::Ident::new(SESSION_NEW).into(),
            ast::Ident::new(SESSION_ID).into(),
        ]));
    }
    Ok(query)
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
        assert!(err("SELECT * FROM SESSION(t, ts)").contains("at least 3 arguments"));
        assert!(err("SELECT * FROM SESSION(t, ts, INTERVAL '1 minute', k + 1)").contains("key"));
    }
}
