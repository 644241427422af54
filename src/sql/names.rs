//! Result column names: the names PostgreSQL gives a query's output columns, and the unique
//! names DataFusion needs to plan it.
//!
//! PostgreSQL allows several output columns with one name (`SELECT 1, 1`, `SELECT id, id`,
//! and DBeaver's `SELECT t.oid, t.* FROM pg_type t`); DataFusion refuses them. Before planning,
//! [`dedupe_output_names`] gives the items that could repeat a name a planning alias that
//! carries the PostgreSQL name; after planning, [`result_names`] names the result columns from
//! the SELECT list, and from the plan's names (with the planning aliases undone) where the list
//! has a wildcard or the query is not a plain SELECT.
//!
//! ```text
//!  SELECT t.oid, t.*  ──dedupe──►  SELECT t.oid AS "oid␟1", t.*  ──plan──►  oid␟1, oid, typname…
//!                                                       ──result_names──►  oid,   oid, typname…
//! ```
//!
//! This module knows only syntax and names; the engine applies the names to the result schema.

use datafusion::sql::sqlparser::ast::{self, SelectItem, Statement, VisitMut, VisitorMut};

use super::normalize_ident;

/// Separates the PostgreSQL name from the item's position in a planning alias
/// (`oid` + `␟` + `1`): a character no client writes in a column name.
const PLANNING_ALIAS_SEPARATOR: char = '\u{1f}';

/// PostgreSQL allows several output columns with the same name; DataFusion does not. In every
/// SELECT list, gives an item a planning alias (`"name␟position"`) when its name repeats an
/// earlier item's, and — since a wildcard's columns are only known after planning — gives one
/// to every plain column reference beside a `*` or `t.*`. Aliasing changes no value; the names
/// the client sees come from [`result_names`].
///
/// Only the statement's own SELECT lists (the client's result) get the aliases a wildcard
/// calls for, unless `nested_wildcards`: a derived table's, a CTE's or a subquery's columns
/// are referenced by name from outside, so there only names that really repeat are aliased (a
/// reference to one of those is ambiguous in PostgreSQL anyway). The engine plans first
/// without `nested_wildcards`, and with it when a nested wildcard turns out to repeat a name.
pub fn dedupe_output_names(stmt: &Statement, nested_wildcards: bool) -> Statement {
    struct Dedupe {
        /// Queries entered: 1 inside the statement's own.
        depth: usize,
        nested_wildcards: bool,
    }
    impl VisitorMut for Dedupe {
        type Break = ();
        fn pre_visit_query(&mut self, _: &mut ast::Query) -> std::ops::ControlFlow<()> {
            self.depth += 1;
            std::ops::ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &mut ast::Query) -> std::ops::ControlFlow<()> {
            self.depth -= 1;
            std::ops::ControlFlow::Continue(())
        }
        fn pre_visit_select(&mut self, select: &mut ast::Select) -> std::ops::ControlFlow<()> {
            let outermost = self.depth <= 1;
            dedupe_select_list(
                &mut select.projection,
                outermost,
                outermost || self.nested_wildcards,
            );
            std::ops::ControlFlow::Continue(())
        }
    }
    let mut stmt = stmt.clone();
    let _ = stmt.visit(&mut Dedupe {
        depth: 0,
        nested_wildcards,
    });
    stmt
}

/// `outermost`: the list is the statement's result; `beside_wildcards`: columns beside a
/// wildcard get aliases too (see [`dedupe_output_names`]).
fn dedupe_select_list(items: &mut [SelectItem], outermost: bool, beside_wildcards: bool) {
    let has_wildcard = items.iter().any(|i| {
        matches!(
            i,
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
        )
    });
    let mut seen = std::collections::HashSet::new();
    for (i, item) in items.iter_mut().enumerate() {
        // The name DataFusion would plan the item under (lower-cased: it folds function
        // names), and the name PostgreSQL gives it.
        let (planned, name) = match item {
            SelectItem::UnnamedExpr(e) => (planned_name(e), output_name(e)),
            SelectItem::ExprWithAlias { alias, .. } => {
                (alias.value.clone(), normalize_ident(alias))
            }
            _ => continue,
        };
        let column_beside_wildcard = beside_wildcards
            && has_wildcard
            && matches!(
                item,
                SelectItem::UnnamedExpr(
                    ast::Expr::Identifier(_) | ast::Expr::CompoundIdentifier(_)
                )
            );
        // `id` and `t.id` plan as the same column, so plain column references are also
        // compared by column name.
        let column_key = match item {
            SelectItem::UnnamedExpr(
                ast::Expr::Identifier(_) | ast::Expr::CompoundIdentifier(_),
            ) => Some(format!("column {name}")),
            _ => None,
        };
        let repeated = !seen.insert(planned) | column_key.is_some_and(|k| !seen.insert(k));
        // DataFusion names every subquery `<subquery>`, so expressions that differ only in
        // their subqueries would plan under one name.
        let has_subquery = matches!(item, SelectItem::UnnamedExpr(e) if contains_subquery(e));
        if !(repeated || column_beside_wildcard || has_subquery) {
            continue;
        }
        // Below the outermost list a subquery's column keeps its PostgreSQL name, by which
        // the query around it may refer to it.
        let alias = if outermost || repeated || column_beside_wildcard {
            format!("{name}{PLANNING_ALIAS_SEPARATOR}{}", i + 1)
        } else {
            name
        };
        let alias = ast::Ident::with_quote('"', alias);
        match item {
            SelectItem::UnnamedExpr(e) => {
                *item = SelectItem::ExprWithAlias {
                    expr: e.clone(),
                    alias,
                };
            }
            SelectItem::ExprWithAlias { alias: a, .. } => *a = alias,
            _ => {}
        }
    }
}

/// Roughly the name DataFusion plans an unaliased item under: it folds function names to lower
/// case and names a cast, and a parenthesized expression, after what is inside.
fn planned_name(e: &ast::Expr) -> String {
    match e {
        ast::Expr::Cast { expr, .. } | ast::Expr::Nested(expr) => planned_name(expr),
        e => e.to_string().to_lowercase(),
    }
}

fn contains_subquery(expr: &ast::Expr) -> bool {
    let found = ast::visit_expressions(expr, |e| match e {
        ast::Expr::Subquery(_) | ast::Expr::InSubquery { .. } | ast::Expr::Exists { .. } => {
            std::ops::ControlFlow::Break(())
        }
        _ => std::ops::ControlFlow::Continue(()),
    });
    found.is_break()
}

/// The result columns' names as PostgreSQL gives them: each SELECT list item's own name (alias,
/// column name, function name, else `?column?`), and for the columns of one wildcard (or when
/// the list cannot be matched with the plan) the plan's names. `planned` are the plan's output
/// names, one per result column.
pub fn result_names(stmt: &Statement, planned: &[&str]) -> Vec<String> {
    let from_plan = || planned.iter().map(|n| client_name(n)).collect();
    let Some(items) = first_select_list(stmt) else {
        return from_plan();
    };
    let wildcards = items
        .iter()
        .filter(|i| {
            matches!(
                i,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        })
        .count();
    let explicit = items.len() - wildcards;
    if wildcards > 1 || explicit > planned.len() || (wildcards == 0 && explicit != planned.len()) {
        return from_plan();
    }
    let wildcard_width = planned.len() - explicit;
    let mut names = Vec::with_capacity(planned.len());
    for item in items {
        match item {
            SelectItem::ExprWithAlias { alias, .. } => names.push(normalize_ident(alias)),
            SelectItem::UnnamedExpr(e) => names.push(output_name(e)),
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                let from = names.len();
                names.extend(
                    planned[from..from + wildcard_width]
                        .iter()
                        .map(|n| client_name(n)),
                );
            }
            // `expr AS (a, b)` and the like: names from the plan.
            _ => return from_plan(),
        }
    }
    names
}

/// The SELECT list that names a query's columns: a set operation's first branch.
fn first_select_list(stmt: &Statement) -> Option<&[SelectItem]> {
    let Statement::Query(query) = stmt else {
        return None;
    };
    let mut body = query.body.as_ref();
    loop {
        match body {
            ast::SetExpr::SetOperation { left, .. } => body = left.as_ref(),
            ast::SetExpr::Query(q) => body = q.body.as_ref(),
            ast::SetExpr::Select(select) => return Some(&select.projection),
            _ => return None,
        }
    }
}

/// PostgreSQL's name for an unaliased output expression.
pub fn output_name(e: &ast::Expr) -> String {
    match e {
        ast::Expr::Identifier(i) => normalize_ident(i),
        ast::Expr::CompoundIdentifier(parts) => parts
            .last()
            .map(normalize_ident)
            .unwrap_or_else(|| "?column?".into()),
        // `(record).field`, which the catalog rewrites turn into `get_field(record, 'field')`.
        ast::Expr::Function(f) if get_field_name(f).is_some() => {
            get_field_name(f).unwrap_or_default()
        }
        ast::Expr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(normalize_ident)
            .unwrap_or_else(|| "?column?".into()),
        ast::Expr::Cast {
            expr, data_type, ..
        } => match expr.as_ref() {
            ast::Expr::Value(_) => cast_type_column_name(data_type),
            inner => output_name(inner),
        },
        ast::Expr::Nested(inner) => output_name(inner),
        // `indkey[0]` is named after `indkey`, `(r).f` after `f`.
        ast::Expr::CompoundFieldAccess { root, access_chain } => access_chain
            .iter()
            .rev()
            .find_map(|a| match a {
                ast::AccessExpr::Dot(ast::Expr::Identifier(field)) => Some(normalize_ident(field)),
                _ => None,
            })
            .unwrap_or_else(|| output_name(root)),
        ast::Expr::Case { .. } => "case".into(),
        ast::Expr::Exists { .. } => "exists".into(),
        ast::Expr::Array(_) => "array".into(),
        // A scalar subquery is named after its one column, as in PostgreSQL.
        ast::Expr::Subquery(query) => match query.body.as_ref() {
            ast::SetExpr::Select(select) => match select.projection.as_slice() {
                [SelectItem::UnnamedExpr(e)] => output_name(e),
                [SelectItem::ExprWithAlias { alias, .. }] => normalize_ident(alias),
                _ => "?column?".into(),
            },
            _ => "?column?".into(),
        },
        _ => "?column?".into(),
    }
}

/// The field `get_field(record, 'field')` reads.
fn get_field_name(f: &ast::Function) -> Option<String> {
    if !f.name.to_string().eq_ignore_ascii_case("get_field") {
        return None;
    }
    let ast::FunctionArguments::List(list) = &f.args else {
        return None;
    };
    match list.args.as_slice() {
        [
            _,
            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(ast::Expr::Value(v))),
        ] => match &v.value {
            ast::Value::SingleQuotedString(field) => Some(field.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// `'x'::text` is named after the type, as in PostgreSQL.
fn cast_type_column_name(t: &ast::DataType) -> String {
    use crate::types::SqlType;
    match crate::types::parse_sql_type(t) {
        Ok(SqlType::Integer) => "int4".into(),
        Ok(SqlType::BigInt) => "int8".into(),
        Ok(SqlType::SmallInt) => "int2".into(),
        Ok(SqlType::Boolean) => "bool".into(),
        Ok(SqlType::Real) => "float4".into(),
        Ok(SqlType::Double) => "float8".into(),
        Ok(SqlType::Varchar(_)) => "varchar".into(),
        Ok(SqlType::TimestampTz) => "timestamptz".into(),
        Ok(SqlType::Timestamp) => "timestamp".into(),
        Ok(SqlType::Time) => "time".into(),
        Ok(t) => t.to_string(),
        Err(_) => "?column?".into(),
    }
}

/// The name a client sees for a column DataFusion planned as `name`: a planning alias's
/// PostgreSQL name; a computed column's function (`count(*)` → `count`) or `?column?`; a
/// qualified column's own name.
pub fn client_name(name: &str) -> String {
    if let Some((pg_name, _)) = name.split_once(PLANNING_ALIAS_SEPARATOR) {
        return pg_name.to_string();
    }
    let plain = name
        .chars()
        .all(|c| c.is_alphanumeric() || c == '_' || c == '"' || c == '.')
        && !name.contains('(');
    if plain {
        return name.rsplit('.').next().unwrap_or(name).to_string();
    }
    if let Some(open) = name.find('(') {
        let func = &name[..open];
        if !func.is_empty() && func.chars().all(|c| c.is_alphanumeric() || c == '_') {
            let lower = func.to_lowercase();
            // Literals such as Int64(1) and Utf8("a"), and casts, become ?column?.
            let is_literal = [
                "int8",
                "int16",
                "int32",
                "int64",
                "uint8",
                "uint16",
                "uint32",
                "uint64",
                "float16",
                "float32",
                "float64",
                "utf8",
                "utf8view",
                "largeutf8",
                "boolean",
                "decimal128",
                "date32",
                "timestamp",
                "intervalmonthdaynano",
                "binary",
            ]
            .contains(&lower.as_str());
            if is_literal {
                return "?column?".into();
            }
            if lower == "cast" || lower == "try_cast" {
                // CAST(x AS t): PostgreSQL names it after x when x is a column.
                let inner = &name[open + 1..];
                let inner = inner.split(" AS ").next().unwrap_or(inner);
                let plain = inner
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '.');
                return if plain {
                    inner.rsplit('.').next().unwrap_or(inner).to_string()
                } else {
                    "?column?".into()
                };
            }
            return lower;
        }
    }
    if name == "NULL" || name.starts_with("Boolean(") {
        return "?column?".into();
    }
    if matches!(name, "true" | "false") {
        return "bool".into();
    }
    "?column?".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select_list(sql: &str) -> String {
        let stmt = super::super::parse_all(sql).unwrap().remove(0).stmt;
        let Statement::Query(q) = dedupe_output_names(&stmt, false) else {
            panic!("not a query")
        };
        let ast::SetExpr::Select(s) = *q.body else {
            panic!("not a select")
        };
        s.projection
            .iter()
            .map(|i| i.to_string().replace(PLANNING_ALIAS_SEPARATOR, "#"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    #[test]
    fn repeated_names_get_planning_aliases() {
        assert_eq!(select_list("SELECT id, id FROM t"), "id, id AS \"id#2\"");
        assert_eq!(select_list("SELECT 1 AS a, 2 AS a"), "1 AS a, 2 AS \"a#2\"");
        assert_eq!(
            select_list("SELECT id, t.id FROM t"),
            "id, t.id AS \"id#2\""
        );
        assert_eq!(select_list("SELECT a, b FROM t"), "a, b");
        assert_eq!(
            select_list("SELECT ARRAY[1], ARRAY[1]::int2[]"),
            "ARRAY[1], ARRAY[1]::INT2[] AS \"array#2\""
        );
    }

    #[test]
    fn expressions_with_subqueries_get_planning_aliases() {
        assert_eq!(
            select_list("SELECT (SELECT 1), (SELECT 2)"),
            "(SELECT 1) AS \"?column?#1\", (SELECT 2) AS \"?column?#2\""
        );
    }

    #[test]
    fn subscripts_and_fields_are_named_like_postgres() {
        let name = |sql: &str| match super::super::parse_all(sql).unwrap().remove(0).stmt {
            Statement::Query(q) => match *q.body {
                ast::SetExpr::Select(s) => match &s.projection[0] {
                    SelectItem::UnnamedExpr(e) => output_name(e),
                    _ => panic!("aliased"),
                },
                _ => panic!("not a select"),
            },
            _ => panic!("not a query"),
        };
        assert_eq!(name("SELECT i.indkey[0] FROM pg_index i"), "indkey");
        assert_eq!(name("SELECT (ARRAY[1, 2])[1]"), "array");
        assert_eq!(name("SELECT (r).n FROM t"), "n");
        assert_eq!(name("SELECT get_field(r, 'n') FROM t"), "n");
    }

    #[test]
    fn columns_beside_a_wildcard_get_planning_aliases() {
        assert_eq!(
            select_list("SELECT t.oid, t.*, f(x) FROM t"),
            "t.oid AS \"oid#1\", t.*, f(x)"
        );
    }

    #[test]
    fn result_names_undo_planning_aliases_and_expand_one_wildcard() {
        let stmt = super::super::parse_all("SELECT t.oid, t.*, count(x) FROM t")
            .unwrap()
            .remove(0)
            .stmt;
        let planned = ["oid\u{1f}1", "t.oid", "t.name", "count(t.x)"];
        assert_eq!(
            result_names(&stmt, &planned),
            ["oid", "oid", "name", "count"]
        );
        let stmt = super::super::parse_all("SELECT * FROM (SELECT 1 AS a, 2 AS a) s")
            .unwrap()
            .remove(0)
            .stmt;
        assert_eq!(result_names(&stmt, &["a", "a\u{1f}2"]), ["a", "a"]);
    }
}
