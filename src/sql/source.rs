//! `CREATE SOURCE`, `DROP SOURCE` and `SHOW SOURCES`, which sqlparser's PostgreSQL dialect
//! does not know:
//!
//! ```text
//! CREATE SOURCE [IF NOT EXISTS] name FROM connector [WITH (option = value, …)]
//! DROP SOURCE [IF EXISTS] name [, …] [CASCADE | RESTRICT]
//! SHOW SOURCES
//! ```

use datafusion::sql::sqlparser::ast;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use super::{normalize_ident, strip_parser_prefix, syntax_error, word_eq};
use crate::error::Result;

#[derive(Debug, Clone, PartialEq)]
pub enum SourceStatement {
    Create {
        name: String,
        if_not_exists: bool,
        /// Lower-case connector name.
        connector: String,
        /// Option names (lower case) and values as text.
        options: Vec<(String, String)>,
    },
    Drop {
        names: Vec<String>,
        if_exists: bool,
        cascade: bool,
    },
    Show,
}

/// The source statement `tokens` hold, if they hold one (`significant` indexes the
/// non-whitespace tokens).
pub fn parse(tokens: &[TokenWithSpan], significant: &[usize]) -> Result<Option<SourceStatement>> {
    let word = |k: usize, w: &str| {
        significant
            .get(k)
            .is_some_and(|i| word_eq(&tokens[*i].token, w))
    };
    let rest = |k: usize| -> Vec<TokenWithSpan> {
        significant
            .get(k)
            .map_or_else(Vec::new, |i| tokens[*i..].to_vec())
    };
    let parsed = if word(0, "show") && word(1, "sources") {
        let mut parser = Parser::new(&PostgreSqlDialect {}).with_tokens_with_locations(rest(2));
        end(&mut parser)?;
        SourceStatement::Show
    } else if word(0, "create") && word(1, "source") {
        let mut parser = Parser::new(&PostgreSqlDialect {}).with_tokens_with_locations(rest(2));
        create(&mut parser).map_err(|e| syntax_error(strip_parser_prefix(&e)))?
    } else if word(0, "drop") && word(1, "source") {
        let mut parser = Parser::new(&PostgreSqlDialect {}).with_tokens_with_locations(rest(2));
        drop(&mut parser).map_err(|e| syntax_error(strip_parser_prefix(&e)))?
    } else {
        return Ok(None);
    };
    Ok(Some(parsed))
}

type ParseResult<T> = std::result::Result<T, datafusion::sql::sqlparser::parser::ParserError>;

fn create(parser: &mut Parser) -> ParseResult<SourceStatement> {
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = normalize_ident(&parser.parse_identifier()?);
    parser.expect_keyword(Keyword::FROM)?;
    let connector = normalize_ident(&parser.parse_identifier()?);
    let mut options = Vec::new();
    for option in parser.parse_options(Keyword::WITH)? {
        let ast::SqlOption::KeyValue { key, value } = &option else {
            return parser.expected("option = value", parser.peek_token());
        };
        let value = match value {
            ast::Expr::Value(v) => match &v.value {
                ast::Value::SingleQuotedString(s) => s.clone(),
                other => other.to_string(),
            },
            ast::Expr::Identifier(i) => i.value.clone(),
            other => other.to_string(),
        };
        options.push((normalize_ident(key), value));
    }
    end_of(parser)?;
    Ok(SourceStatement::Create {
        name,
        if_not_exists,
        connector,
        options,
    })
}

fn drop(parser: &mut Parser) -> ParseResult<SourceStatement> {
    let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let mut names = vec![normalize_ident(&parser.parse_identifier()?)];
    while parser.consume_token(&Token::Comma) {
        names.push(normalize_ident(&parser.parse_identifier()?));
    }
    let cascade = parser.parse_keyword(Keyword::CASCADE);
    if !cascade {
        let _restrict = parser.parse_keyword(Keyword::RESTRICT);
    }
    end_of(parser)?;
    Ok(SourceStatement::Drop {
        names,
        if_exists,
        cascade,
    })
}

fn end_of(parser: &mut Parser) -> ParseResult<()> {
    if parser.peek_token().token != Token::EOF {
        return parser.expected("end of statement", parser.peek_token());
    }
    Ok(())
}

fn end(parser: &mut Parser) -> Result<()> {
    end_of(parser).map_err(|e| syntax_error(strip_parser_prefix(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_one(sql: &str) -> Result<Option<SourceStatement>> {
        let tokens = super::super::split(sql)?.remove(0);
        let significant: Vec<usize> = (0..tokens.len())
            .filter(|i| !matches!(tokens[*i].token, Token::Whitespace(_)))
            .collect();
        parse(&tokens, &significant)
    }

    #[test]
    fn source_statements() {
        assert_eq!(
            parse_one(
                "CREATE SOURCE IF NOT EXISTS Nx FROM NEXMARK WITH (max_events = 1000, start_time = '2025-01-01')"
            )
            .unwrap(),
            Some(SourceStatement::Create {
                name: "nx".into(),
                if_not_exists: true,
                connector: "nexmark".into(),
                options: vec![
                    ("max_events".into(), "1000".into()),
                    ("start_time".into(), "2025-01-01".into())
                ],
            })
        );
        assert_eq!(
            parse_one("drop source if exists a, b cascade").unwrap(),
            Some(SourceStatement::Drop {
                names: vec!["a".into(), "b".into()],
                if_exists: true,
                cascade: true
            })
        );
        assert_eq!(
            parse_one("SHOW SOURCES").unwrap(),
            Some(SourceStatement::Show)
        );
        assert_eq!(parse_one("SELECT 1").unwrap(), None);
        for bad in [
            "CREATE SOURCE FROM NEXMARK",
            "CREATE SOURCE s NEXMARK",
            "CREATE SOURCE s FROM NEXMARK WITH (seed)",
            "DROP SOURCE s t",
            "SHOW SOURCES now",
        ] {
            assert_eq!(parse_one(bad).unwrap_err().sqlstate, "42601", "{bad}");
        }
    }
}
