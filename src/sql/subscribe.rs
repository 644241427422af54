//! `SUBSCRIBE` and the cursor statements around it, at the token level (sqlparser knows
//! neither SUBSCRIBE nor `FETCH … WITH (timeout = …)`).
//!
//! ```text
//!  SUBSCRIBE [TO] name | (query) [WITH (SNAPSHOT [=] b, PROGRESS [=] b)] [AS OF n]
//!    as a statement, inside COPY ( … ) TO STDOUT, or after DECLARE c CURSOR FOR
//!  → the clause is replaced by the query it reads (`SELECT * FROM name` or the query), which
//!    sqlparser then parses as usual; the options travel beside the AST in [`Subscribe`].
//!
//!  FETCH [n | ALL | NEXT | FORWARD [n | ALL]] [FROM | IN] c [WITH (timeout = '1s')]
//!  → `FETCH … FROM c` as sqlparser wants it, plus the timeout.
//! ```

use std::time::Duration;

use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::{is_trivia, syntax_error, word_eq, word_is};
use crate::error::{Result, sqlstate};

/// A SUBSCRIBE clause's target and options.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    /// `SUBSCRIBE name`; `None` for `SUBSCRIBE (query)`.
    pub object: Option<ast::ObjectName>,
    pub snapshot: bool,
    pub progress: bool,
    /// `AS OF n`: start at epoch n.
    pub as_of: Option<u64>,
}

fn tokens_of(sql: &str) -> Result<Vec<TokenWithSpan>> {
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(syntax_error)
}

/// Index of the parenthesis closing the one at `open`.
fn matching_paren(tokens: &[TokenWithSpan], open: usize) -> Result<usize> {
    let mut depth = 0i32;
    for (i, t) in tokens.iter().enumerate().skip(open) {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => {}
        }
    }
    Err(syntax_error("unbalanced parentheses"))
}

/// Finds a SUBSCRIBE clause and replaces it with the query it reads.
pub fn extract(tokens: Vec<TokenWithSpan>) -> Result<(Vec<TokenWithSpan>, Option<Subscribe>)> {
    let sig: Vec<usize> = (0..tokens.len())
        .filter(|i| !is_trivia(&tokens[*i].token))
        .collect();
    let at = |k: usize| sig.get(k).map(|i| &tokens[*i].token);
    // (start of the clause, end of it: exclusive)
    let span = if at(0).is_some_and(|t| word_eq(t, "subscribe")) {
        Some((sig[0], tokens.len()))
    } else if at(0).is_some_and(|t| word_is(t, Keyword::COPY))
        && at(1) == Some(&Token::LParen)
        && at(2).is_some_and(|t| word_eq(t, "subscribe"))
    {
        Some((sig[2], matching_paren(&tokens, sig[1])?))
    } else if at(0).is_some_and(|t| word_is(t, Keyword::DECLARE)) {
        (1..sig.len())
            .find(|k| {
                at(*k).is_some_and(|t| word_is(t, Keyword::FOR))
                    && at(k + 1).is_some_and(|t| word_eq(t, "subscribe"))
            })
            .map(|k| (sig[k + 1], tokens.len()))
    } else {
        None
    };
    let Some((start, end)) = span else {
        return Ok((tokens, None));
    };
    let (query, subscribe) = parse_clause(&tokens[start + 1..end])?;
    let mut out = tokens[..start].to_vec();
    out.extend(query);
    out.extend_from_slice(&tokens[end..]);
    Ok((out, Some(subscribe)))
}

/// Parses what follows the SUBSCRIBE keyword; returns the query's tokens and the options.
fn parse_clause(clause: &[TokenWithSpan]) -> Result<(Vec<TokenWithSpan>, Subscribe)> {
    let toks: Vec<&TokenWithSpan> = clause.iter().filter(|t| !is_trivia(&t.token)).collect();
    let mut i = 0;
    if toks.get(i).is_some_and(|t| word_is(&t.token, Keyword::TO)) {
        i += 1;
    }
    let mut subscribe = Subscribe {
        object: None,
        snapshot: true,
        progress: false,
        as_of: None,
    };
    let query = match toks.get(i).map(|t| &t.token) {
        Some(Token::LParen) => {
            let owned: Vec<TokenWithSpan> = toks.iter().map(|t| (*t).clone()).collect();
            let close = matching_paren(&owned, i)?;
            if close == i + 1 {
                return Err(syntax_error("SUBSCRIBE () needs a query"));
            }
            // The query's own tokens, spacing included, between the parentheses.
            let position = |t: &TokenWithSpan| clause.iter().position(|c| std::ptr::eq(c, t));
            let (Some(from), Some(to)) = (position(toks[i]), position(toks[close])) else {
                return Err(crate::internal!("lost a token of the SUBSCRIBE query"));
            };
            i = close + 1;
            clause[from + 1..to].to_vec()
        }
        Some(Token::Word(_)) => {
            let mut name = Vec::new();
            loop {
                match toks.get(i).map(|t| &t.token) {
                    Some(Token::Word(w)) => {
                        name.push(w.clone());
                        i += 1;
                    }
                    _ => return Err(syntax_error("expected a name after SUBSCRIBE")),
                }
                if toks.get(i).map(|t| &t.token) == Some(&Token::Period) {
                    i += 1;
                } else {
                    break;
                }
            }
            let text = name
                .iter()
                .map(|w| Token::Word(w.clone()).to_string())
                .collect::<Vec<_>>()
                .join(".");
            let object = Parser::new(&PostgreSqlDialect {})
                .try_with_sql(&text)
                .and_then(|mut p| p.parse_object_name(false))
                .map_err(|e| syntax_error(e.to_string()))?;
            subscribe.object = Some(object);
            tokens_of(&format!("SELECT * FROM {text}"))?
        }
        Some(other) => {
            return Err(syntax_error(format!(
                "expected a view name or a parenthesized query after SUBSCRIBE, found {other}"
            )));
        }
        None => return Err(syntax_error("SUBSCRIBE needs a view name or a query")),
    };
    while i < toks.len() {
        let t = &toks[i].token;
        if word_is(t, Keyword::WITH) && toks.get(i + 1).map(|t| &t.token) == Some(&Token::LParen) {
            let owned: Vec<TokenWithSpan> = toks.iter().map(|t| (*t).clone()).collect();
            let close = matching_paren(&owned, i + 1)?;
            for (name, value) in options(&owned[i + 2..close])? {
                let flag = || {
                    value.as_deref().map_or(Ok(true), |v| {
                        parse_bool(v).ok_or_else(|| {
                            crate::err!(
                                sqlstate::INVALID_PARAMETER_VALUE,
                                "{} requires a Boolean value, not \"{v}\"",
                                name.to_uppercase()
                            )
                        })
                    })
                };
                match name.as_str() {
                    "snapshot" => subscribe.snapshot = flag()?,
                    "progress" => subscribe.progress = flag()?,
                    other => {
                        return Err(crate::err!(
                            sqlstate::SYNTAX_ERROR,
                            "SUBSCRIBE option \"{other}\" not recognized (the options are SNAPSHOT and PROGRESS)"
                        ));
                    }
                }
            }
            i = close + 1;
        } else if word_is(t, Keyword::AS)
            && toks
                .get(i + 1)
                .is_some_and(|t| word_is(&t.token, Keyword::OF))
        {
            let epoch = match toks.get(i + 2).map(|t| &t.token) {
                Some(Token::Number(n, _)) => n.parse::<u64>().ok(),
                _ => None,
            };
            let Some(epoch) = epoch else {
                return Err(syntax_error("AS OF needs an epoch: a non-negative integer"));
            };
            subscribe.as_of = Some(epoch);
            i += 3;
        } else {
            return Err(syntax_error(format!("unexpected {t} in SUBSCRIBE")));
        }
    }
    Ok((query, subscribe))
}

/// `name [=] [value], …` inside an option list (value absent: the option alone).
fn options(tokens: &[TokenWithSpan]) -> Result<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    for item in tokens.split(|t| t.token == Token::Comma) {
        let item: Vec<&Token> = item
            .iter()
            .map(|t| &t.token)
            .filter(|t| !is_trivia(t))
            .collect();
        let (name, rest) = match item.split_first() {
            Some((Token::Word(w), rest)) => (w.value.to_lowercase(), rest),
            _ => return Err(syntax_error("expected an option name")),
        };
        let rest = match rest.split_first() {
            Some((Token::Eq, rest)) => rest,
            _ => rest,
        };
        let value = match rest {
            [] => None,
            [Token::Word(w)] => Some(w.value.clone()),
            [Token::SingleQuotedString(s)] => Some(s.clone()),
            [Token::Number(n, _)] => Some(n.clone()),
            _ => {
                return Err(syntax_error(format!("invalid value for option \"{name}\"")));
            }
        };
        out.push((name, value));
    }
    Ok(out)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_lowercase().as_str() {
        "true" | "on" | "1" | "yes" | "t" => Some(true),
        "false" | "off" | "0" | "no" | "f" => Some(false),
        _ => None,
    }
}

/// Rewrites a FETCH into the form sqlparser parses (`FETCH <direction> FROM <cursor>`) and
/// takes off `WITH (timeout = …)`.
pub fn normalize_fetch(
    tokens: Vec<TokenWithSpan>,
) -> Result<(Vec<TokenWithSpan>, Option<Duration>)> {
    let mut sig: Vec<usize> = (0..tokens.len())
        .filter(|i| !is_trivia(&tokens[*i].token))
        .collect();
    let mut timeout = None;
    // Trailing WITH ( … ).
    if sig
        .last()
        .is_some_and(|i| tokens[*i].token == Token::RParen)
    {
        let open = (0..sig.len()).rev().find(|k| {
            tokens[sig[*k]].token == Token::LParen
                && k.checked_sub(1)
                    .is_some_and(|w| word_is(&tokens[sig[w]].token, Keyword::WITH))
        });
        if let Some(open) = open {
            let close = matching_paren(&tokens, sig[open])?;
            for (name, value) in options(&tokens[sig[open] + 1..close])? {
                if name != "timeout" {
                    return Err(crate::err!(
                        sqlstate::SYNTAX_ERROR,
                        "FETCH option \"{name}\" not recognized (the option is TIMEOUT)"
                    ));
                }
                let value = value.ok_or_else(|| syntax_error("TIMEOUT needs a value"))?;
                timeout = Some(crate::types::parse_duration(&value).map_err(|m| {
                    crate::err!(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "invalid FETCH timeout: {m}"
                    )
                })?);
            }
            sig.truncate(open - 1);
        }
    }
    let text = |k: usize| tokens[sig[k]].token.to_string();
    if sig.len() < 2 {
        return Err(syntax_error("FETCH needs a cursor name"));
    }
    let last = sig.len() - 1;
    let has_from = last >= 2
        && (word_is(&tokens[sig[last - 1]].token, Keyword::FROM)
            || word_is(&tokens[sig[last - 1]].token, Keyword::IN));
    let direction: Vec<String> = (1..if has_from { last - 1 } else { last })
        .map(text)
        .collect();
    let direction = match direction.as_slice() {
        [] => "NEXT".to_string(),
        [d] if d.eq_ignore_ascii_case("forward") => "NEXT".to_string(),
        _ => direction.join(" "),
    };
    let rewritten = tokens_of(&format!("FETCH {direction} FROM {}", text(last)))?;
    Ok((rewritten, timeout))
}

#[cfg(test)]
mod tests {
    use crate::sql::parse_all;
    use datafusion::sql::sqlparser::ast::Statement;
    use proptest::prelude::*;

    proptest! {
        /// Any jumble of the words these statements use parses or fails with an error; it never
        /// panics.
        #[test]
        fn bad_input_never_panics(
            start in prop::sample::select(vec![
                "SUBSCRIBE", "COPY (SUBSCRIBE", "DECLARE c CURSOR FOR SUBSCRIBE", "FETCH",
            ]),
            words in prop::collection::vec(prop::sample::select(vec![
                "TO", "v", "(", ")", "SELECT", "1", "WITH", "AS", "OF", "=", ",", "SNAPSHOT",
                "PROGRESS", "false", "'1s'", "timeout", "FROM", "IN", "ALL", "FORWARD", ".",
                "-1", "STDOUT", "c", "NEXT", "''",
            ]), 0..12),
        ) {
            let sql = format!("{start} {}", words.join(" "));
            let _ = parse_all(&sql);
        }
    }

    #[test]
    fn subscribe_forms() {
        let p = parse_all("SUBSCRIBE TO hot WITH (SNAPSHOT = false, PROGRESS) AS OF 42").unwrap();
        let s = p[0].subscribe.clone().unwrap();
        assert_eq!(s.object.unwrap().to_string(), "hot");
        assert!(!s.snapshot && s.progress);
        assert_eq!(s.as_of, Some(42));
        assert_eq!(p[0].stmt.to_string(), "SELECT * FROM hot");

        let p = parse_all("subscribe (SELECT a, count(*) FROM t GROUP BY a) with (progress true)")
            .unwrap();
        let s = p[0].subscribe.clone().unwrap();
        assert!(s.object.is_none() && s.snapshot && s.progress);
        assert_eq!(
            p[0].stmt.to_string(),
            "SELECT a, count(*) FROM t GROUP BY a"
        );

        let p = parse_all("COPY (SUBSCRIBE v AS OF 7) TO STDOUT WITH (FORMAT csv)").unwrap();
        assert_eq!(p[0].subscribe.clone().unwrap().as_of, Some(7));
        assert!(matches!(p[0].stmt, Statement::Copy { to: true, .. }));

        let p = parse_all("DECLARE c CURSOR FOR SUBSCRIBE public.v WITH (SNAPSHOT false)").unwrap();
        assert!(!p[0].subscribe.clone().unwrap().snapshot);
        assert!(matches!(p[0].stmt, Statement::Declare { .. }));
    }

    #[test]
    fn subscribe_errors() {
        for (sql, code) in [
            ("SUBSCRIBE", "42601"),
            ("SUBSCRIBE v WITH (FOO)", "42601"),
            ("SUBSCRIBE v WITH (SNAPSHOT = maybe)", "22023"),
            ("SUBSCRIBE v AS OF x", "42601"),
            ("SUBSCRIBE v junk", "42601"),
            ("SUBSCRIBE ()", "42601"),
        ] {
            assert_eq!(parse_all(sql).unwrap_err().sqlstate, code, "{sql}");
        }
    }

    #[test]
    fn fetch_forms() {
        for (sql, expect, timeout) in [
            ("FETCH c", "FETCH NEXT FROM c", None),
            ("FETCH 10 c", "FETCH 10 FROM c", None),
            (
                "FETCH ALL IN c WITH (timeout = '1s')",
                "FETCH ALL FROM c",
                Some(1000),
            ),
            (
                "FETCH FORWARD 5 FROM c WITH (TIMEOUT = 0)",
                "FETCH FORWARD 5 FROM c",
                Some(0),
            ),
            (
                "FETCH 100 c WITH (timeout='250ms')",
                "FETCH 100 FROM c",
                Some(250),
            ),
        ] {
            let p = parse_all(sql).unwrap().remove(0);
            assert_eq!(p.stmt.to_string(), expect, "{sql}");
            assert_eq!(
                p.fetch_timeout.map(|d| d.as_millis() as u64),
                timeout,
                "{sql}"
            );
        }
        assert_eq!(
            parse_all("FETCH c WITH (wait = 1)").unwrap_err().sqlstate,
            "42601"
        );
    }
}
