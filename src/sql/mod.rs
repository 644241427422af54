//! SQL front end: split a query string into statements, recognise Eddy's additions to the
//! PostgreSQL grammar, and parse the rest with sqlparser's `PostgreSqlDialect`.
//!
//! ```text
//!  "stmt; stmt; …" ──tokenize──► per statement tokens ──strip Eddy clauses──► sqlparser AST
//!                                                      (APPEND ONLY, WATERMARK FOR)
//! ```
//!
//! Eddy's additions are removed from the token stream before sqlparser sees it and returned
//! beside the AST in [`Parsed`]; everything else is plain PostgreSQL syntax. Planning against the
//! catalog happens in the engine (with DataFusion); this module knows only syntax.

pub mod ddl;
pub mod errors;
pub mod lower;
pub mod names;
pub mod postgres_forms;
pub mod session;
pub mod source;
mod subscribe;
pub mod temporal;
pub mod windows;

pub use names::dedupe_output_names;
pub use subscribe::Subscribe;

use datafusion::sql::sqlparser::ast::{self, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace};

use crate::error::{Result, sqlstate};

/// Statements longer than this are refused with 54000 before parsing.
pub const MAX_STATEMENT_BYTES: usize = 16 << 20;

/// One parsed statement plus the Eddy-specific clauses found in it.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub stmt: Statement,
    /// `CREATE TABLE … APPEND ONLY`.
    pub append_only: bool,
    /// `WATERMARK FOR column AS expr` inside `CREATE TABLE`.
    pub watermark: Option<(ast::Ident, ast::Expr)>,
    /// The statement's text (without the trailing semicolon).
    pub text: String,
    /// `CREATE USER` (parsed as `CREATE ROLE`, whose LOGIN it defaults to true).
    pub create_user: bool,
    /// `EXPLAIN ANALYZE MATERIALIZED VIEW name` (then `stmt` is a placeholder).
    pub explain_analyze_view: Option<String>,
    /// The statement's query is a SUBSCRIBE (the whole statement, `COPY (SUBSCRIBE …) TO`, or
    /// `DECLARE c CURSOR FOR SUBSCRIBE …`): its target and options. The query in `stmt` is
    /// what it reads (`SELECT * FROM v` for `SUBSCRIBE v`).
    pub subscribe: Option<Subscribe>,
    /// `FETCH … WITH (timeout = …)`.
    pub fetch_timeout: Option<std::time::Duration>,
    /// `CREATE MATERIALIZED VIEW … EMIT ON WINDOW CLOSE` (also after EXPLAIN).
    pub emit_on_window_close: bool,
    /// `ADVANCE CLOCK …` (then `stmt` is a placeholder, `SELECT 1`).
    pub advance_clock: Option<temporal::ClockStep>,
    /// `CREATE SOURCE`, `DROP SOURCE`, `SHOW SOURCES` (then `stmt` is a placeholder).
    pub source: Option<source::SourceStatement>,
}

fn is_trivia(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_))
}

fn syntax_error(message: impl std::fmt::Display) -> crate::error::Error {
    crate::err!(sqlstate::SYNTAX_ERROR, "syntax error: {message}")
}

/// Splits `sql` into the token lists of its statements (empty statements are dropped).
pub fn split(sql: &str) -> Result<Vec<Vec<TokenWithSpan>>> {
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(crate::err!(
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            "statement is too long: {} bytes (limit {} bytes)",
            sql.len(),
            MAX_STATEMENT_BYTES
        ));
    }
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(syntax_error)?;
    let mut out = Vec::new();
    let mut current = Vec::new();
    for t in tokens {
        if t.token == Token::SemiColon {
            if current.iter().any(|t: &TokenWithSpan| !is_trivia(&t.token)) {
                out.push(std::mem::take(&mut current));
            } else {
                current.clear();
            }
        } else {
            current.push(t);
        }
    }
    if current.iter().any(|t| !is_trivia(&t.token)) {
        out.push(current);
    }
    Ok(out)
}

/// The highest `$n` a statement's text refers to (0: none).
pub fn placeholders(text: &str) -> usize {
    // Most statements have none: no second tokenization for them.
    if !text.contains('$') {
        return 0;
    }
    Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize()
        .unwrap_or_default()
        .iter()
        .filter_map(|t| match t {
            Token::Placeholder(p) => p.strip_prefix('$')?.parse().ok(),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Parses a whole query string (one or more statements).
pub fn parse_all(sql: &str) -> Result<Vec<Parsed>> {
    split(sql)?.into_iter().map(parse_tokens).collect()
}

fn text_of(tokens: &[TokenWithSpan]) -> String {
    let s: String = tokens.iter().map(|t| t.token.to_string()).collect();
    s.trim().to_string()
}

fn word_is(t: &Token, kw: Keyword) -> bool {
    matches!(t, Token::Word(w) if w.keyword == kw)
}

fn word_eq(t: &Token, text: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(text))
}

/// Rewrites PostgreSQL catalog idioms that psql and drivers send into forms DataFusion plans:
/// `OPERATOR(pg_catalog.~)` → `~`, `COLLATE pg_catalog.default` → (nothing),
/// `pg_catalog.f(…)` → `f(…)`, `::pg_catalog.t` → `::t`, and casts to `regclass`/`regtype`/`oid`
/// (Eddy's oids are plain integers) are dropped.
fn rewrite_catalog_idioms(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let sig = |t: &TokenWithSpan| !is_trivia(&t.token);
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let toks: Vec<TokenWithSpan> = tokens;
    let mut i = 0;
    // Index of the next significant token at or after `from`.
    let next = |from: usize| (from..toks.len()).find(|j| sig(&toks[*j]));
    while i < toks.len() {
        let t = &toks[i].token;
        // OPERATOR ( pg_catalog . op )
        if word_eq(t, "operator")
            && let Some(lp) = next(i + 1).filter(|j| toks[*j].token == Token::LParen)
            && let Some(ns) = next(lp + 1).filter(|j| word_eq(&toks[*j].token, "pg_catalog"))
            && let Some(dot) = next(ns + 1).filter(|j| toks[*j].token == Token::Period)
            && let Some(op) = next(dot + 1)
            && let Some(rp) = next(op + 1).filter(|j| toks[*j].token == Token::RParen)
        {
            out.push(toks[op].clone());
            i = rp + 1;
            continue;
        }
        // COLLATE pg_catalog . default  |  COLLATE "default"
        if word_is(t, Keyword::COLLATE)
            && let Some(a) = next(i + 1)
        {
            if word_eq(&toks[a].token, "pg_catalog") {
                if let Some(dot) = next(a + 1).filter(|j| toks[*j].token == Token::Period)
                    && let Some(name) = next(dot + 1)
                {
                    i = name + 1;
                    continue;
                }
            } else if matches!(&toks[a].token, Token::Word(w) if w.value == "default" || w.value == "C")
            {
                i = a + 1;
                continue;
            }
        }
        // CURRENT_ROLE (a reserved word, like CURRENT_USER) → current_role()
        if word_eq(t, "current_role")
            && out
                .iter()
                .rev()
                .find(|t| sig(t))
                .is_none_or(|t| t.token != Token::Period)
            && next(i + 1).is_none_or(|j| toks[j].token != Token::LParen)
        {
            out.extend(
                [toks[i].token.clone(), Token::LParen, Token::RParen].map(TokenWithSpan::wrap),
            );
            i += 1;
            continue;
        }
        // pg_catalog . name  (function calls and type names) → name
        if word_eq(t, "pg_catalog")
            && let Some(dot) = next(i + 1).filter(|j| toks[*j].token == Token::Period)
            && let Some(name) = next(dot + 1)
        {
            let prev = out.iter().rev().find(|t| sig(t)).map(|t| t.token.clone());
            let is_call = next(name + 1).is_some_and(|j| toks[j].token == Token::LParen);
            if is_call || prev == Some(Token::DoubleColon) {
                i = name;
                continue;
            }
        }
        // ::regclass, ::regtype, ::oid … → (no cast)
        if *t == Token::DoubleColon
            && let Some(name) = next(i + 1)
        {
            let skip_ns = if word_eq(&toks[name].token, "pg_catalog") {
                next(name + 1)
                    .filter(|j| toks[*j].token == Token::Period)
                    .and_then(|d| next(d + 1))
            } else {
                Some(name)
            };
            if let Some(n) = skip_ns
                && [
                    "regclass",
                    "regtype",
                    "regproc",
                    "regprocedure",
                    "regnamespace",
                    "regrole",
                    "oid",
                ]
                .iter()
                .any(|r| word_eq(&toks[n].token, r))
            {
                // An array of them (`$1::oid[]`, asyncpg's type introspection) is an array of
                // oids, which Arrow holds as UInt32 (`INT UNSIGNED`): the parameter is then
                // described as oid[], which asyncpg can send without introspecting it.
                if let Some(open) = next(n + 1).filter(|j| toks[*j].token == Token::LBracket)
                    && let Some(close) =
                        next(open + 1).filter(|j| toks[*j].token == Token::RBracket)
                {
                    out.extend(
                        [
                            Token::DoubleColon,
                            Token::make_keyword("INT"),
                            Token::Whitespace(Whitespace::Space),
                            Token::make_keyword("UNSIGNED"),
                            Token::LBracket,
                            Token::RBracket,
                        ]
                        .map(TokenWithSpan::wrap),
                    );
                    i = close + 1;
                    continue;
                }
                // A string literal cast to a reg type is a lookup by name:
                // `'pg_catalog.pg_class'::regclass` → `eddy_regclass('pg_catalog.pg_class')`.
                let lookup = match &toks[n].token {
                    Token::Word(w) => reg_lookup_function(&w.value),
                    _ => None,
                };
                let literal = out
                    .iter()
                    .rposition(sig)
                    .filter(|p| matches!(out[*p].token, Token::SingleQuotedString(_)));
                if let (Some(function), Some(p)) = (lookup, literal) {
                    let literal = out.remove(p);
                    out.truncate(p);
                    out.extend(
                        [
                            Token::make_word(function, None),
                            Token::LParen,
                            literal.token,
                            Token::RParen,
                        ]
                        .map(TokenWithSpan::wrap),
                    );
                }
                i = n + 1;
                continue;
            }
        }
        out.push(toks[i].clone());
        i += 1;
    }
    out
}

/// The function that looks up a name cast to a reg type (see `engine::pg_functions`); none
/// for `oid`, a cast that leaves the value as it is.
fn reg_lookup_function(type_name: &str) -> Option<&'static str> {
    Some(match type_name.to_ascii_lowercase().as_str() {
        "regclass" => "eddy_regclass",
        "regtype" => "eddy_regtype",
        "regproc" | "regprocedure" => "eddy_regproc",
        "regnamespace" => "eddy_regnamespace",
        _ => return None,
    })
}

/// Parses the tokens of one statement.
pub fn parse_tokens(tokens: Vec<TokenWithSpan>) -> Result<Parsed> {
    let tokens = rewrite_catalog_idioms(tokens);
    let text = text_of(&tokens);
    let first = tokens.iter().find(|t| !is_trivia(&t.token));
    let (tokens, subscribe, fetch_timeout) =
        if first.is_some_and(|t| word_is(&t.token, Keyword::FETCH)) {
            let (tokens, timeout) = subscribe::normalize_fetch(tokens)?;
            (tokens, None, timeout)
        } else {
            let (tokens, subscribe) = subscribe::extract(tokens)?;
            (tokens, subscribe, None)
        };
    let significant: Vec<usize> = (0..tokens.len())
        .filter(|i| !is_trivia(&tokens[*i].token))
        .collect();
    // CREATE SOURCE, DROP SOURCE, SHOW SOURCES (then `stmt` is a placeholder).
    let source = source::parse(&tokens, &significant)?;
    let is_create_table = significant.len() >= 2
        && word_is(&tokens[significant[0]].token, Keyword::CREATE)
        && word_is(&tokens[significant[1]].token, Keyword::TABLE);
    let (mut tokens, append_only, watermark) = if is_create_table {
        strip_table_extensions(tokens)?
    } else {
        (tokens, false, None)
    };
    let emit_on_window_close = strip_emit_on_window_close(&mut tokens, &significant);
    // CREATE | ALTER | DROP USER: PostgreSQL's synonyms of … ROLE (sqlparser reads CREATE USER
    // as Snowflake's).
    let mut create_user = false;
    if significant.len() >= 2
        && word_eq(&tokens[significant[1]].token, "user")
        && [Keyword::CREATE, Keyword::ALTER, Keyword::DROP]
            .iter()
            .any(|k| word_is(&tokens[significant[0]].token, *k))
    {
        create_user = word_is(&tokens[significant[0]].token, Keyword::CREATE);
        tokens[significant[1]] = TokenWithSpan::wrap(Token::make_keyword("ROLE"));
    }
    // ABORT: PostgreSQL's synonym of ROLLBACK (whose command tag it also sends).
    if let Some(&first) = significant.first()
        && word_is(&tokens[first].token, Keyword::ABORT)
    {
        tokens[first] = TokenWithSpan::wrap(Token::make_keyword("ROLLBACK"));
    }
    // SHOW CREATE MATERIALIZED VIEW v: sqlparser knows only SHOW CREATE VIEW (which shows
    // materialized views too).
    if significant.len() >= 4
        && word_is(&tokens[significant[0]].token, Keyword::SHOW)
        && word_is(&tokens[significant[1]].token, Keyword::CREATE)
        && word_is(&tokens[significant[2]].token, Keyword::MATERIALIZED)
        && word_is(&tokens[significant[3]].token, Keyword::VIEW)
    {
        tokens.remove(significant[2]);
    }
    let dialect = PostgreSqlDialect {};
    let explain_analyze_view = if significant.len() >= 5
        && word_is(&tokens[significant[0]].token, Keyword::EXPLAIN)
        && word_is(&tokens[significant[1]].token, Keyword::ANALYZE)
        && word_is(&tokens[significant[2]].token, Keyword::MATERIALIZED)
        && word_is(&tokens[significant[3]].token, Keyword::VIEW)
    {
        let mut parser =
            Parser::new(&dialect).with_tokens_with_locations(tokens[significant[4]..].to_vec());
        let name = parser
            .parse_object_name(false)
            .map_err(|e| syntax_error(strip_parser_prefix(&e)))?;
        if parser.peek_token().token != Token::EOF {
            return Err(syntax_error(format!(
                "unexpected {} at end of statement",
                parser.peek_token().token
            )));
        }
        Some(table_name(&name)?)
    } else {
        None
    };
    let advance_clock = significant.len() >= 2
        && word_eq(&tokens[significant[0]].token, "advance")
        && word_eq(&tokens[significant[1]].token, "clock");
    let (stmt, advance_clock, parser) = if source.is_some() || explain_analyze_view.is_some() {
        (placeholder()?, None, None)
    } else if advance_clock {
        let mut parser =
            Parser::new(&dialect).with_tokens_with_locations(tokens[significant[1] + 1..].to_vec());
        let step = temporal::parse_clock_step(&mut parser)?;
        (placeholder()?, Some(step), Some(parser))
    } else {
        let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
        let stmt = parser
            .parse_statement()
            .map_err(|e| syntax_error(strip_parser_prefix(&e)))?;
        (stmt, None, Some(parser))
    };
    if let Some(parser) = parser
        && parser.peek_token().token != Token::EOF
    {
        return Err(syntax_error(format!(
            "unexpected {} at end of statement",
            parser.peek_token().token
        )));
    }
    let mut stmt = stmt;
    if text.contains("pg_catalog") || text.contains("information_schema") {
        aggregate_scalar_subqueries(&mut stmt);
    }
    Ok(Parsed {
        stmt,
        append_only,
        watermark,
        text,
        create_user,
        explain_analyze_view,
        subscribe,
        fetch_timeout,
        emit_on_window_close,
        advance_clock,
        source,
    })
}

/// The statement beside an Eddy statement sqlparser does not know (`SELECT 1`).
fn placeholder() -> Result<Statement> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql("SELECT 1")
        .and_then(|mut p| p.parse_statement())
        .map_err(|e| crate::internal!("{e}"))
}

/// Removes a trailing `EMIT ON WINDOW CLOSE` from a `[EXPLAIN] CREATE MATERIALIZED VIEW`;
/// whether it was there. `significant` indexes the non-whitespace tokens.
fn strip_emit_on_window_close(tokens: &mut Vec<TokenWithSpan>, significant: &[usize]) -> bool {
    let words = |from: usize, expected: &[&str]| {
        expected.len() <= significant.len().saturating_sub(from)
            && expected
                .iter()
                .enumerate()
                .all(|(k, w)| word_eq(&tokens[significant[from + k]].token, w))
    };
    let start = if words(0, &["explain"]) { 1 } else { 0 };
    if !words(start, &["create", "materialized", "view"]) {
        return false;
    }
    let mut end = significant.len();
    if end > 0 && tokens[significant[end - 1]].token == Token::SemiColon {
        end -= 1;
    }
    if end < 4 || !words(end - 4, &["emit", "on", "window", "close"]) {
        return false;
    }
    tokens.truncate(significant[end - 4]);
    true
}

/// Refuses query constructs that DataFusion would answer wrongly: `INTERSECT ALL` and
/// `EXCEPT ALL` (it does not compute the bag multiplicities PostgreSQL does).
pub fn check_supported(stmt: &Statement) -> Result<()> {
    use datafusion::sql::sqlparser::ast::{SetExpr, SetOperator, SetQuantifier, Visit, Visitor};
    use std::ops::ControlFlow;
    struct Check;
    fn walk(body: &SetExpr) -> ControlFlow<String> {
        match body {
            SetExpr::SetOperation {
                op,
                set_quantifier,
                left,
                right,
            } => {
                if matches!(op, SetOperator::Intersect | SetOperator::Except)
                    && matches!(set_quantifier, SetQuantifier::All)
                {
                    return ControlFlow::Break(format!("{op} ALL"));
                }
                walk(left)?;
                walk(right)
            }
            _ => ControlFlow::Continue(()),
        }
    }
    impl Visitor for Check {
        type Break = String;
        fn pre_visit_query(&mut self, query: &ast::Query) -> ControlFlow<String> {
            walk(&query.body)
        }
    }
    match stmt.visit(&mut Check) {
        ControlFlow::Break(what) => Err(crate::unsupported!(
            "{what} (only the set forms INTERSECT and EXCEPT are supported)"
        )),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// psql's catalog queries use correlated scalar subqueries that return at most one row
/// without aggregating (`(SELECT c.collname FROM … WHERE …)`), which DataFusion cannot
/// decorrelate. Wrapping the single output in `max()` is equivalent when at most one row
/// matches, which is all a scalar subquery may return. Applied to catalog queries only.
fn aggregate_scalar_subqueries(stmt: &mut Statement) {
    use datafusion::sql::sqlparser::ast::{SelectItem, SetExpr, visit_expressions_mut};
    let _ = visit_expressions_mut(stmt, |expr| {
        // `information_schema._pg_expandarray(a)`, a set-returning function of (x, n) records
        // (pgjdbc's getPrimaryKeys), is `unnest` of the same records as an array.
        if let ast::Expr::Function(f) = expr
            && f.name
                .to_string()
                .eq_ignore_ascii_case("information_schema._pg_expandarray")
        {
            let mut inner = f.clone();
            inner.name = ast::ObjectName::from(vec![ast::Ident::new("eddy_expandarray")]);
            f.name = ast::ObjectName::from(vec![ast::Ident::new("unnest")]);
            f.args = ast::FunctionArguments::List(ast::FunctionArgumentList {
                duplicate_treatment: None,
                args: vec![ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(
                    ast::Expr::Function(inner),
                ))],
                clauses: vec![],
            });
            return std::ops::ControlFlow::<()>::Continue(());
        }
        // `(record).field` → `get_field(record, 'field')`, which DataFusion plans.
        if let ast::Expr::CompoundFieldAccess { root, access_chain } = expr
            && matches!(root.as_ref(), ast::Expr::Nested(_))
            && access_chain
                .iter()
                .all(|a| matches!(a, ast::AccessExpr::Dot(ast::Expr::Identifier(_))))
        {
            let mut text = root.to_string();
            for access in access_chain.iter() {
                if let ast::AccessExpr::Dot(ast::Expr::Identifier(field)) = access {
                    text = format!("get_field({text}, '{}')", field.value.replace('\'', "''"));
                }
            }
            if let Ok(rewritten) = Parser::new(&PostgreSqlDialect {})
                .try_with_sql(&text)
                .and_then(|mut p| p.parse_expr())
            {
                *expr = rewritten;
            }
        }
        // `array(SELECT x FROM … [ORDER BY …])` → `(SELECT array_agg(x [ORDER BY …]) FROM …)`,
        // which DataFusion plans (and decorrelates). It gives NULL rather than '{}' when no row
        // matches, which prints the same in the catalogs' uses (array_to_string, psql).
        if let ast::Expr::Function(f) = expr
            && f.name.to_string().eq_ignore_ascii_case("array")
            && let ast::FunctionArguments::Subquery(query) = &f.args
        {
            let null_array = || {
                Parser::new(&PostgreSqlDialect {})
                    .try_with_sql("CAST(NULL AS text[])")
                    .and_then(|mut p| p.parse_expr())
                    .unwrap_or_else(|_| ast::Expr::Value(ast::Value::Null.into()))
            };
            *expr = array_subquery_as_aggregate(query).unwrap_or_else(null_array);
            return std::ops::ControlFlow::<()>::Continue(());
        }
        if let ast::Expr::Subquery(query) = expr {
            let text = query.to_string();
            // …and correlated table functions (publication column lists) are beyond DataFusion;
            // they only appear over catalogs Eddy keeps empty.
            // So are recursive walks of the catalogs, which clients send only up chains Eddy
            // does not have (asyncpg's walk from a domain to its base type).
            if text.contains("pg_attrdef")
                || text.contains("pg_collation")
                || text.contains("generate_series")
                || query.with.as_ref().is_some_and(|w| w.recursive)
            {
                *expr = ast::Expr::Value(ast::Value::Null.into());
                return std::ops::ControlFlow::<()>::Continue(());
            }
        }
        if let ast::Expr::Subquery(query) = expr
            && let SetExpr::Select(select) = query.body.as_mut()
        {
            let no_grouping =
                matches!(&select.group_by, ast::GroupByExpr::Expressions(e, _) if e.is_empty());
            if select.projection.len() == 1 && no_grouping && select.having.is_none() {
                let item = &mut select.projection[0];
                let inner = match item {
                    SelectItem::UnnamedExpr(e) => Some(e),
                    SelectItem::ExprWithAlias { expr, .. } => Some(expr),
                    _ => None,
                };
                if let Some(e) = inner {
                    let is_aggregate = matches!(e, ast::Expr::Function(f)
                            if ["count", "max", "min", "sum", "avg", "bool_and", "bool_or", "string_agg", "array_agg"]
                                .contains(&f.name.to_string().to_lowercase().as_str()));
                    if !is_aggregate {
                        let dialect = PostgreSqlDialect {};
                        if let Ok(wrapped) = Parser::new(&dialect)
                            .try_with_sql(&format!("max({e})"))
                            .and_then(|mut p| p.parse_expr())
                        {
                            *e = wrapped;
                        }
                    }
                }
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// `(SELECT array_agg(x [ORDER BY …]) FROM …)` for `array(SELECT x FROM … [ORDER BY …])`;
/// None for a subquery of another shape.
fn array_subquery_as_aggregate(query: &ast::Query) -> Option<ast::Expr> {
    use datafusion::sql::sqlparser::ast::{SelectItem, SetExpr};
    let mut query = query.clone();
    let order = query.order_by.take();
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    // Subqueries that unnest an outer row's array (`unnest(tc.reloptions)`) or test membership
    // in one (`oid = ANY (pol.polroles)`) are beyond DataFusion's decorrelation; psql sends
    // them only over options and policies, which Eddy does not have: NULL.
    let text = select.to_string().to_ascii_uppercase();
    if text.contains("UNNEST(") || text.contains("ANY(") || text.contains("ANY (") {
        return None;
    }
    let [SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }] =
        select.projection.as_mut_slice()
    else {
        return None;
    };
    let order = match order.map(|o| o.kind) {
        None => String::new(),
        Some(ast::OrderByKind::Expressions(exprs)) => {
            let keys: Vec<String> = exprs
                .iter()
                .map(|o| {
                    // `ORDER BY 1` names the one output column.
                    let key = match &o.expr {
                        ast::Expr::Value(v) if v.to_string() == "1" => e.to_string(),
                        other => other.to_string(),
                    };
                    format!("{key}{}", o.options)
                })
                .collect();
            format!(" ORDER BY {}", keys.join(", "))
        }
        Some(ast::OrderByKind::All(_)) => return None,
    };
    *e = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&format!("array_agg({e}{order})"))
        .and_then(|mut p| p.parse_expr())
        .ok()?;
    Some(ast::Expr::Subquery(Box::new(query)))
}

fn strip_parser_prefix(e: &datafusion::sql::sqlparser::parser::ParserError) -> String {
    let s = e.to_string();
    s.strip_prefix("sql parser error: ")
        .unwrap_or(&s)
        .to_string()
}

type Stripped = (Vec<TokenWithSpan>, bool, Option<(ast::Ident, ast::Expr)>);

/// Removes `WATERMARK FOR col AS expr` (an element of the column list) and a trailing
/// `APPEND ONLY` from a `CREATE TABLE`, returning what was found.
fn strip_table_extensions(tokens: Vec<TokenWithSpan>) -> Result<Stripped> {
    // Trailing APPEND ONLY.
    let mut tokens = tokens;
    let mut append_only = false;
    let sig: Vec<usize> = (0..tokens.len())
        .filter(|i| !is_trivia(&tokens[*i].token))
        .collect();
    if sig.len() >= 2 {
        let (a, b) = (sig[sig.len() - 2], sig[sig.len() - 1]);
        if word_eq(&tokens[a].token, "append") && word_eq(&tokens[b].token, "only") {
            append_only = true;
            tokens.truncate(a);
        }
    }
    // WATERMARK FOR inside the outermost parentheses.
    let mut watermark = None;
    let mut depth = 0i32;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            t if depth == 1 && word_eq(t, "watermark") => {
                let next_sig =
                    |from: usize| (from..tokens.len()).find(|j| !is_trivia(&tokens[*j].token));
                let for_at = next_sig(i + 1).filter(|j| word_is(&tokens[*j].token, Keyword::FOR));
                let Some(for_at) = for_at else {
                    i += 1;
                    continue;
                };
                if watermark.is_some() {
                    return Err(syntax_error(
                        "only one WATERMARK clause is allowed per table",
                    ));
                }
                // The element ends at the next comma or closing parenthesis at depth 1.
                let mut end = for_at + 1;
                let mut d = 0i32;
                while end < tokens.len() {
                    match tokens[end].token {
                        Token::LParen => d += 1,
                        Token::RParen if d == 0 => break,
                        Token::RParen => d -= 1,
                        Token::Comma if d == 0 => break,
                        _ => {}
                    }
                    end += 1;
                }
                let clause: Vec<TokenWithSpan> = tokens[for_at + 1..end].to_vec();
                watermark = Some(parse_watermark(clause)?);
                // Remove the clause and one adjacent comma.
                let (from, to) = if end < tokens.len() && tokens[end].token == Token::Comma {
                    (i, end + 1)
                } else {
                    let prev_comma = (0..i).rev().find(|j| !is_trivia(&tokens[*j].token));
                    match prev_comma {
                        Some(p) if tokens[p].token == Token::Comma => (p, end),
                        _ => (i, end),
                    }
                };
                tokens.drain(from..to);
                i = from;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok((tokens, append_only, watermark))
}

fn parse_watermark(clause: Vec<TokenWithSpan>) -> Result<(ast::Ident, ast::Expr)> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(clause);
    let column = parser
        .parse_identifier()
        .map_err(|e| syntax_error(format!("in WATERMARK FOR: {}", strip_parser_prefix(&e))))?;
    parser
        .expect_keyword(Keyword::AS)
        .map_err(|e| syntax_error(format!("in WATERMARK FOR: {}", strip_parser_prefix(&e))))?;
    let expr = parser
        .parse_expr()
        .map_err(|e| syntax_error(format!("in WATERMARK FOR: {}", strip_parser_prefix(&e))))?;
    if parser.peek_token().token != Token::EOF {
        return Err(syntax_error(format!(
            "unexpected {} in WATERMARK FOR clause",
            parser.peek_token().token
        )));
    }
    Ok((column, expr))
}

/// Normalises an identifier as PostgreSQL does: unquoted names fold to lower case.
pub fn normalize_ident(ident: &ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

/// The schemas Eddy shows besides `public`; they hold only its system views.
const SYSTEM_SCHEMAS: [&str; 3] = ["pg_catalog", "information_schema", "eddy_catalog"];

/// The table name of an object name (`schema.name` accepts only `public` or no schema).
pub fn table_name(name: &ast::ObjectName) -> Result<String> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p.as_ident() {
            Some(ident) => Ok(normalize_ident(ident)),
            None => Err(syntax_error(format!("invalid name {name}"))),
        })
        .collect::<Result<_>>()?;
    match parts.as_slice() {
        [name] => Ok(name.clone()),
        [schema, name] if schema == "public" => Ok(name.clone()),
        [db, schema, name] if schema == "public" && (db == "eddy" || db == "main") => {
            Ok(name.clone())
        }
        [schema, _] if !SYSTEM_SCHEMAS.contains(&schema.as_str()) => Err(crate::err!(
            sqlstate::INVALID_SCHEMA_NAME,
            "schema \"{schema}\" does not exist (Eddy has one schema for tables and views, public)"
        )),
        _ => Err(crate::err!(
            sqlstate::UNDEFINED_TABLE,
            "relation \"{name}\" does not exist (Eddy has one schema for tables and views, public)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_and_ignores_semicolons_in_strings() {
        let parsed = parse_all("SELECT 'a;b'; ; SELECT 2 -- x;\n").unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].text, "SELECT 'a;b'");
    }

    #[test]
    fn recognises_append_only_and_watermark() {
        let p = parse_all(
            "CREATE TABLE bids (a bigint, ts timestamp, WATERMARK FOR ts AS ts - INTERVAL '5 seconds', b int) APPEND ONLY",
        )
        .unwrap()
        .remove(0);
        assert!(p.append_only);
        let (col, expr) = p.watermark.unwrap();
        assert_eq!(col.value, "ts");
        assert_eq!(expr.to_string(), "ts - INTERVAL '5 seconds'");
        let Statement::CreateTable(ct) = p.stmt else {
            panic!("not a create table")
        };
        assert_eq!(ct.columns.len(), 3);
    }

    #[test]
    fn rewrites_psql_catalog_idioms() {
        let p = parse_all(
            "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_class c \
             WHERE c.relname OPERATOR(pg_catalog.~) '^(t)$' COLLATE pg_catalog.default \
             AND c.reloftype::pg_catalog.regtype::pg_catalog.text = ''",
        )
        .unwrap();
        assert_eq!(
            p[0].text,
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_class c \
             WHERE c.relname ~ '^(t)$'  AND c.reloftype::text = ''"
        );
    }

    #[test]
    fn casts_to_oid_arrays_are_unsigned_int_arrays() {
        let p =
            parse_all("SELECT 1 WHERE 2 = any($1::oid[]) AND 3 = any($2::pg_catalog.regtype [ ])")
                .unwrap();
        assert_eq!(
            p[0].text,
            "SELECT 1 WHERE 2 = any($1::INT UNSIGNED[]) AND 3 = any($2::INT UNSIGNED[])"
        );
    }

    #[test]
    fn syntax_errors_have_sqlstate() {
        let e = parse_all("SELEC 1").unwrap_err();
        assert_eq!(e.sqlstate, sqlstate::SYNTAX_ERROR);
        let e = parse_all("SELECT 1 2").unwrap_err();
        assert_eq!(e.sqlstate, sqlstate::SYNTAX_ERROR);
    }

    #[test]
    fn copy_from_stdin_parses_without_inline_data() {
        let p = parse_all("COPY t (a, b) FROM STDIN WITH (FORMAT csv, HEADER true)").unwrap();
        assert!(matches!(p[0].stmt, Statement::Copy { .. }));
    }
}
