//! PostgreSQL query forms that DataFusion does not plan, rewritten before planning into forms
//! it does. Grafana's table and column lists send all of them:
//!
//! ```text
//!  FROM string_to_array(…) s           ─► FROM (SELECT string_to_array(…) AS s) AS s
//!       (a scalar function in FROM is a one-row table whose column is named by the alias)
//!  FROM generate_series(1, 3) AS i     ─► FROM generate_series(1, 3) AS i(i)
//!       (a set-returning function of one column: the alias names the column too)
//!  '{a,"b c",NULL}'::text[]           ─► ARRAY['a', 'b c', NULL]::text[]
//!       (DataFusion would cast the whole string into a one-element array)
//!  SELECT x IN (SELECT …), ORDER BY x IN (SELECT …)
//!                                      ─► CASE over (SELECT array_agg(…) FROM (…)) …
//!       (DataFusion plans IN (subquery) only in WHERE, HAVING and JOIN conditions)
//!  SELECT EXISTS (SELECT … FROM t WHERE c)
//!                                      ─► SELECT (SELECT count(*) > 0 FROM t WHERE c)
//!       (the same for EXISTS, which migration tools and ORMs send to ask whether a row is there)
//! ```
//!
//! What functions exist is the engine's to say: it passes which names are table functions.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, Expr, Query, Select, Statement, TableFactor, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use super::normalize_ident;

/// Table functions whose rows are single values: an alias without a column list names their
/// column as well as the table (PostgreSQL's rule for functions returning a base type).
const SCALAR_SET_RETURNING: &[&str] = &["generate_series", "range"];

/// Rewrites the forms listed in the module documentation; `is_table_function` tells whether a
/// name in FROM is a table function (otherwise a function called there is a scalar one).
pub fn rewrite(stmt: &Statement, is_table_function: &dyn Fn(&str) -> bool) -> Statement {
    struct Rewriter<'a> {
        is_table_function: &'a dyn Fn(&str) -> bool,
    }
    impl VisitorMut for Rewriter<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
            function_in_from(factor, self.is_table_function);
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            array_literal_cast(expr);
            ControlFlow::Continue(())
        }
        fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<()> {
            for item in select.projection.iter_mut() {
                match item {
                    ast::SelectItem::UnnamedExpr(e)
                    | ast::SelectItem::ExprWithAlias { expr: e, .. } => subqueries_outside_where(e),
                    _ => {}
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
            if let Some(ast::OrderBy {
                kind: ast::OrderByKind::Expressions(exprs),
                ..
            }) = query.order_by.as_mut()
            {
                for o in exprs.iter_mut() {
                    subqueries_outside_where(&mut o.expr);
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut stmt = stmt.clone();
    let _ = stmt.visit(&mut Rewriter { is_table_function });
    stmt
}

fn parse_expr(text: &str) -> Option<Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .ok()
}

/// A function call in FROM: a scalar function becomes a one-row derived table; a one-column
/// set-returning function's bare alias also names its column.
fn function_in_from(factor: &mut TableFactor, is_table_function: &dyn Fn(&str) -> bool) {
    let TableFactor::Table {
        name,
        alias,
        args: Some(args),
        with_ordinality: false,
        ..
    } = factor
    else {
        return;
    };
    let [function] = name.0.as_slice() else {
        return;
    };
    let Some(function) = function.as_ident() else {
        return;
    };
    let function_name = normalize_ident(function);
    if is_table_function(&function_name) {
        if SCALAR_SET_RETURNING.contains(&function_name.as_str())
            && let Some(alias) = alias
            && alias.columns.is_empty()
        {
            alias.columns = vec![ast::TableAliasColumnDef {
                name: alias.name.clone(),
                data_type: None,
            }];
        }
        return;
    }
    let table = alias
        .as_ref()
        .map(|a| a.name.clone())
        .unwrap_or_else(|| function.clone());
    let column = alias
        .as_ref()
        .and_then(|a| a.columns.first())
        .map(|c| c.name.clone())
        .unwrap_or_else(|| table.clone());
    let call_args: Vec<String> = args.args.iter().map(ToString::to_string).collect();
    let text = format!("SELECT {function}({}) AS {column}", call_args.join(", "));
    let Ok(subquery) = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&text)
        .and_then(|mut p| p.parse_query())
    else {
        return;
    };
    *factor = TableFactor::Derived {
        lateral: false,
        subquery,
        alias: Some(ast::TableAlias {
            explicit: true,
            name: table,
            columns: vec![],
            at: None,
        }),
        sample: None,
    };
}

/// `'{…}'::t[]`, a string literal in PostgreSQL's array syntax cast to an array type, as an
/// ARRAY constructor of its elements (one-dimensional arrays; others are left alone).
fn array_literal_cast(expr: &mut Expr) {
    let Expr::Cast {
        expr: inner,
        data_type: ast::DataType::Array(_),
        ..
    } = expr
    else {
        return;
    };
    let Expr::Value(ast::ValueWithSpan {
        value: ast::Value::SingleQuotedString(text),
        ..
    }) = inner.as_ref()
    else {
        return;
    };
    let Some(elements) = parse_array_literal(text) else {
        return;
    };
    let elem = elements
        .into_iter()
        .map(|e| {
            Expr::Value(
                match e {
                    Some(e) => ast::Value::SingleQuotedString(e),
                    None => ast::Value::Null,
                }
                .into(),
            )
        })
        .collect();
    **inner = Expr::Array(ast::Array { elem, named: true });
}

/// The elements of a one-dimensional array in PostgreSQL's text form (`{a,"b,c",NULL}`):
/// None for an unquoted NULL. None for anything else (nested arrays, bounds decoration, bad
/// syntax), which is left to the cast.
pub fn parse_array_literal(text: &str) -> Option<Vec<Option<String>>> {
    let body = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut elements = Vec::new();
    if body.trim().is_empty() {
        return Some(elements);
    }
    let mut chars = body.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        let mut element = String::new();
        let mut quoted = false;
        if chars.next_if_eq(&'"').is_some() {
            quoted = true;
            loop {
                match chars.next()? {
                    '\\' => element.push(chars.next()?),
                    '"' => break,
                    c => element.push(c),
                }
            }
            while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                match c {
                    '{' | '}' | '"' => return None,
                    '\\' => element.push(chars.next()?),
                    c => element.push(c),
                }
            }
            let trimmed = element.trim_end().len();
            element.truncate(trimmed);
            if element.is_empty() {
                return None;
            }
        }
        if !quoted && element.eq_ignore_ascii_case("null") {
            elements.push(None);
        } else {
            elements.push(Some(element));
        }
        match chars.next() {
            None => return Some(elements),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// Rewrites `x [NOT] IN (subquery)` in `expr` (not in subqueries of it, whose WHERE clauses
/// DataFusion plans) into scalar subqueries over the subquery's values, keeping PostgreSQL's
/// three-valued result: false for no rows; NULL when `x` is NULL or, unmatched, the rows hold
/// a NULL; else whether a row equals `x`. `[NOT] EXISTS (subquery)` becomes a scalar subquery
/// counting its rows.
fn subqueries_outside_where(expr: &mut Expr) {
    struct Rewriter {
        depth: usize,
    }
    impl VisitorMut for Rewriter {
        type Break = ();
        fn pre_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            if self.depth == 0
                && let Expr::Exists { subquery, negated } = expr
            {
                let text = format!(
                    "{not}({})",
                    subquery_has_rows(subquery),
                    not = if *negated { "NOT " } else { "" },
                );
                if let Some(rewritten) = parse_expr(&text) {
                    *expr = rewritten;
                }
            }
            if self.depth == 0
                && let Expr::InSubquery {
                    expr: needle,
                    subquery,
                    negated,
                } = expr
            {
                let (v, values) = subquery_values(subquery);
                // The comparisons stay inside the subqueries: DataFusion 55 cannot sort by a
                // comparison of a scalar subquery (ORDER BY (SELECT …) > 0 fails its plan
                // check).
                let text = format!(
                    "{not}(CASE WHEN (SELECT count(*) = 0 {values}) THEN false \
                     WHEN ({needle}) IS NULL THEN NULL \
                     WHEN array_has((SELECT array_agg({v}) {values}), {needle}) THEN true \
                     WHEN (SELECT count(*) > count({v}) {values}) THEN NULL \
                     ELSE false END)",
                    not = if *negated { "NOT " } else { "" },
                );
                if let Some(rewritten) = parse_expr(&text) {
                    *expr = rewritten;
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = expr.visit(&mut Rewriter { depth: 0 });
}

/// The value a subquery's rows hold and the FROM … WHERE … they come from, for aggregating
/// them in a scalar subquery: a plain one-item SELECT keeps its own FROM and WHERE (so it may
/// refer to the outer row, which DataFusion decorrelates); anything else is read as a derived
/// table `eddy_in_values(v)`.
fn subquery_values(query: &Query) -> (String, String) {
    let item = plain_select(query).and_then(|select| match select.projection.as_slice() {
        [ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. }]
            if !aggregates(e) =>
        {
            Some((e, from_where(select)))
        }
        _ => None,
    });
    match item {
        Some((item, values)) => (format!("({item})"), values),
        None => (
            "v".to_string(),
            format!("FROM ({query}) AS eddy_in_values(v)"),
        ),
    }
}

/// A scalar subquery saying whether `query` has a row: a plain SELECT counts the rows of its
/// own FROM … WHERE … (so it may refer to the outer row); anything else (one with GROUP BY,
/// LIMIT, or aggregates that make one row of none) is counted as a derived table.
fn subquery_has_rows(query: &Query) -> String {
    let plain = plain_select(query).filter(|select| {
        !select.projection.iter().any(|item| match item {
            ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. } => {
                aggregates(e)
            }
            _ => false,
        })
    });
    match plain {
        Some(select) => format!("SELECT count(*) > 0 {}", from_where(select)),
        None => format!("SELECT count(*) > 0 FROM ({query}) AS eddy_exists"),
    }
}

/// `query`'s SELECT when it is only a SELECT … FROM … WHERE … (DISTINCT at most), whose rows
/// are those of its FROM that pass its WHERE.
fn plain_select(query: &Query) -> Option<&Select> {
    let ast::SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let plain_query = query.with.is_none()
        && query.limit_clause.is_none()
        && query.fetch.is_none()
        && query.locks.is_empty();
    let plain_select = matches!(&select.group_by, ast::GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty())
        && select.having.is_none()
        && select.named_window.is_empty()
        && select.qualify.is_none()
        && matches!(select.distinct, None | Some(ast::Distinct::Distinct));
    (plain_query && plain_select).then_some(select.as_ref())
}

/// A plain SELECT's `FROM … WHERE …` (either may be absent).
fn from_where(select: &Select) -> String {
    let mut text = String::new();
    if !select.from.is_empty() {
        let from: Vec<String> = select.from.iter().map(ToString::to_string).collect();
        text = format!("FROM {}", from.join(", "));
    }
    if let Some(selection) = &select.selection {
        text = format!("{text} WHERE {selection}");
    }
    text
}

/// Whether `expr` may aggregate or be a window function (then it cannot be aggregated again).
fn aggregates(expr: &Expr) -> bool {
    const AGGREGATES: &[&str] = &[
        "count",
        "sum",
        "avg",
        "min",
        "max",
        "array_agg",
        "string_agg",
        "bool_and",
        "bool_or",
        "every",
        "stddev",
        "stddev_pop",
        "stddev_samp",
        "variance",
        "var_pop",
        "var_samp",
        "json_agg",
        "jsonb_agg",
    ];
    let mut found = false;
    let _ = ast::visit_expressions(expr, |e| {
        if let Expr::Function(f) = e {
            let name = f
                .name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(normalize_ident)
                .unwrap_or_default();
            found |= f.over.is_some()
                || f.filter.is_some()
                || !f.within_group.is_empty()
                || AGGREGATES.contains(&name.as_str());
        }
        ControlFlow::<()>::Continue(())
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> String {
        let stmt = super::super::parse_all(sql).unwrap().remove(0).stmt;
        rewrite(&stmt, &|name| name == "generate_series").to_string()
    }

    #[test]
    fn scalar_function_in_from_is_a_one_row_table() {
        assert_eq!(
            rewritten("SELECT s FROM string_to_array('a,b', ',') s"),
            "SELECT s FROM (SELECT string_to_array('a,b', ',') AS s) AS s"
        );
        assert_eq!(
            rewritten("SELECT * FROM upper('a')"),
            "SELECT * FROM (SELECT upper('a') AS upper) AS upper"
        );
        assert_eq!(
            rewritten("SELECT c FROM upper('a') AS t(c)"),
            "SELECT c FROM (SELECT upper('a') AS c) AS t"
        );
    }

    #[test]
    fn array_literals_cast_to_arrays_are_array_constructors() {
        assert_eq!(
            rewritten("SELECT '{a, \"b,c\" ,NULL,\"NULL\",d\\,e}'::text[], '{}'::int2[]"),
            "SELECT ARRAY['a', 'b,c', NULL, 'NULL', 'd,e']::TEXT[], ARRAY[]::INT2[]"
        );
        // Nested arrays are left to the cast.
        assert_eq!(
            rewritten("SELECT '{{1},{2}}'::int[]"),
            "SELECT '{{1},{2}}'::INT[]"
        );
        assert_eq!(parse_array_literal("{a,}"), None);
        assert_eq!(parse_array_literal("[1:1]={a}"), None);
    }

    #[test]
    fn set_returning_alias_names_its_column() {
        assert_eq!(
            rewritten("SELECT i FROM generate_series(1, 3) AS i"),
            "SELECT i FROM generate_series(1, 3) AS i (i)"
        );
        assert_eq!(
            rewritten("SELECT r FROM generate_series(1, 3) AS s(r)"),
            "SELECT r FROM generate_series(1, 3) AS s (r)"
        );
    }

    #[test]
    fn in_subquery_outside_where_becomes_scalar_subqueries() {
        // A plain SELECT is aggregated in place (it may refer to the outer row); WHERE keeps
        // its IN, which DataFusion plans.
        let out = rewritten("SELECT a IN (SELECT b FROM t) FROM u WHERE a IN (SELECT c FROM v)");
        assert!(
            out.contains("array_has((SELECT array_agg((b)) FROM t), a)"),
            "{out}"
        );
        assert!(out.ends_with("WHERE a IN (SELECT c FROM v)"), "{out}");
        // Anything else is read as a derived table.
        let out = rewritten("SELECT a IN (SELECT b FROM t LIMIT 1) FROM u");
        assert!(
            out.contains(
                "array_has((SELECT array_agg(v) FROM (SELECT b FROM t LIMIT 1) AS eddy_in_values (v)), a)"
            ),
            "{out}"
        );
        let out = rewritten("SELECT a FROM u ORDER BY a NOT IN (SELECT b FROM t)");
        assert!(out.contains("ORDER BY NOT (CASE WHEN"), "{out}");
    }

    #[test]
    fn exists_outside_where_counts_rows() {
        assert_eq!(
            rewritten("SELECT EXISTS (SELECT 1 FROM t WHERE t.a = u.a) FROM u"),
            "SELECT (SELECT count(*) > 0 FROM t WHERE t.a = u.a) FROM u"
        );
        assert_eq!(
            rewritten("SELECT NOT EXISTS (SELECT a FROM t GROUP BY a) AS none"),
            "SELECT NOT (SELECT count(*) > 0 FROM (SELECT a FROM t GROUP BY a) AS eddy_exists) AS none"
        );
        // An aggregate makes one row of none: counted as it is.
        assert!(
            rewritten("SELECT EXISTS (SELECT max(a) FROM t)")
                .contains("FROM (SELECT max(a) FROM t) AS eddy_exists")
        );
        // WHERE keeps its EXISTS, which DataFusion plans.
        assert_eq!(
            rewritten("SELECT 1 FROM u WHERE EXISTS (SELECT 1 FROM t)"),
            "SELECT 1 FROM u WHERE EXISTS (SELECT 1 FROM t)"
        );
    }
}
