//! Mapping DataFusion and Arrow errors to SQLSTATEs and PostgreSQL-like messages.
//!
//! DataFusion reports most user mistakes as `Plan` or `SchemaError`s with English text; the
//! mapping below recognises the common shapes so clients get the code PostgreSQL would send.

use datafusion::arrow::error::ArrowError;
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;

use crate::error::{Error, sqlstate};

pub fn from_arrow(e: ArrowError) -> Error {
    match e {
        ArrowError::DivideByZero => Error::new(sqlstate::DIVISION_BY_ZERO, "division by zero"),
        // A number cast to a narrower type that cannot hold it.
        ArrowError::CastError(msg) if msg.starts_with("Can't cast value") => Error::new(
            sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
            out_of_range_message(&msg),
        ),
        ArrowError::CastError(msg) | ArrowError::ParseError(msg) => {
            Error::new(sqlstate::INVALID_TEXT_REPRESENTATION, msg)
        }
        ArrowError::ArithmeticOverflow(msg) => {
            Error::new(sqlstate::NUMERIC_VALUE_OUT_OF_RANGE, msg)
        }
        ArrowError::ComputeError(msg) if msg.contains("Overflow") || msg.contains("overflow") => {
            Error::new(sqlstate::NUMERIC_VALUE_OUT_OF_RANGE, msg)
        }
        ArrowError::InvalidArgumentError(msg) if msg.contains("too large to store") => {
            Error::new(sqlstate::NUMERIC_VALUE_OUT_OF_RANGE, msg)
        }
        ArrowError::MemoryError(msg) => Error::new(sqlstate::OUT_OF_MEMORY, msg),
        ArrowError::ExternalError(inner) => match inner.downcast::<DataFusionError>() {
            Ok(df) => from_datafusion(*df),
            Err(inner) => match inner.downcast::<Error>() {
                Ok(e) => *e,
                Err(inner) => Error::internal(inner.to_string()),
            },
        },
        other => Error::new(sqlstate::DATA_EXCEPTION, other.to_string()),
    }
}

/// PostgreSQL's words for arrow's "Can't cast value 40000 to type Int16": "smallint out of
/// range" (arrow's text for types PostgreSQL has no name for).
fn out_of_range_message(msg: &str) -> String {
    let pg_type = match msg.rsplit(' ').next() {
        Some("Int16") => "smallint",
        Some("Int32") => "integer",
        Some("Int64") => "bigint",
        _ => return msg.to_string(),
    };
    format!("{pg_type} out of range")
}

pub fn from_datafusion(e: DataFusionError) -> Error {
    match e {
        DataFusionError::ArrowError(inner, _) => from_arrow(*inner),
        DataFusionError::SQL(inner, _) => {
            let text = inner.to_string();
            Error::new(
                sqlstate::SYNTAX_ERROR,
                format!(
                    "syntax error: {}",
                    text.strip_prefix("sql parser error: ").unwrap_or(&text)
                ),
            )
        }
        DataFusionError::SchemaError(inner, _) => match *inner {
            SchemaError::FieldNotFound { field, .. } => Error::new(
                sqlstate::UNDEFINED_COLUMN,
                format!("column \"{}\" does not exist", field.name),
            ),
            SchemaError::AmbiguousReference { field } => Error::new(
                sqlstate::AMBIGUOUS_COLUMN,
                format!("column reference \"{}\" is ambiguous", field.name),
            ),
            SchemaError::DuplicateQualifiedField { .. }
            | SchemaError::DuplicateUnqualifiedField { .. } => {
                Error::new(sqlstate::DUPLICATE_COLUMN, inner.to_string())
            }
        },
        DataFusionError::NotImplemented(msg) => Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("not supported: {msg}"),
        ),
        DataFusionError::Plan(msg) => from_plan_message(msg),
        DataFusionError::Execution(msg) => from_execution_message(msg),
        DataFusionError::ExecutionJoin(e) => Error::internal(e.to_string()),
        DataFusionError::ResourcesExhausted(msg) => Error::new(sqlstate::OUT_OF_MEMORY, msg),
        DataFusionError::External(inner) => match inner.downcast::<Error>() {
            Ok(e) => *e,
            Err(inner) => match inner.downcast::<DataFusionError>() {
                Ok(df) => from_datafusion(*df),
                Err(inner) => Error::internal(inner.to_string()),
            },
        },
        DataFusionError::Context(_, inner) => from_datafusion(*inner),
        DataFusionError::Diagnostic(_, inner) => from_datafusion(*inner),
        DataFusionError::Shared(inner) => from_datafusion(clone_shared(&inner)),
        DataFusionError::Collection(mut errors) => match errors.pop() {
            Some(first) => from_datafusion(first),
            None => Error::internal("empty error collection"),
        },
        DataFusionError::Substrait(msg) | DataFusionError::Configuration(msg) => {
            Error::new(sqlstate::FEATURE_NOT_SUPPORTED, msg)
        }
        DataFusionError::IoError(e) => Error::io("query execution", &e),
        DataFusionError::ObjectStore(e) => Error::new(sqlstate::IO_ERROR, e.to_string()),
        DataFusionError::Internal(msg) => Error::internal(msg),
        #[allow(unreachable_patterns)]
        other => Error::internal(other.to_string()),
    }
}

fn clone_shared(e: &DataFusionError) -> DataFusionError {
    DataFusionError::Execution(e.to_string())
}

fn from_plan_message(msg: String) -> Error {
    let lower = msg.to_lowercase();
    if let Some(rest) = msg
        .strip_prefix("table '")
        .or_else(|| msg.strip_prefix("Table '"))
        && lower.contains("not found")
    {
        let qualified = rest.split('\'').next().unwrap_or(rest);
        let name = qualified.rsplit('.').next().unwrap_or(qualified);
        // PostgreSQL's own catalogs that Eddy does not have: a missing feature, not a typo.
        let schema = qualified.split('.').rev().nth(1).unwrap_or_default();
        if name.starts_with("pg_") || schema == "pg_catalog" || schema == "information_schema" {
            let schema = if schema == "information_schema" {
                schema
            } else {
                "pg_catalog"
            };
            return Error::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "not supported: the system catalog {schema}.{name} (Eddy has the catalogs \
                     that psql, drivers and BI tools read; see docs/sql.md)"
                ),
            );
        }
        return Error::new(
            sqlstate::UNDEFINED_TABLE,
            format!("relation \"{name}\" does not exist"),
        );
    }
    if lower.contains("invalid function") || lower.contains("no function matches") {
        return Error::new(sqlstate::UNDEFINED_FUNCTION, msg);
    }
    if lower.contains("cannot be cast")
        || lower.contains("cannot infer common")
        || lower.contains("failed to coerce")
        || lower.contains("no coercion")
        || lower.contains("does not support")
        || lower.contains("cannot coerce")
        || lower.contains("type mismatch")
    {
        return Error::new(sqlstate::UNDEFINED_FUNCTION, msg);
    }
    if lower.contains("divide by zero") || lower.contains("division by zero") {
        return Error::new(sqlstate::DIVISION_BY_ZERO, "division by zero");
    }
    if lower.contains("placeholder") {
        return Error::new(sqlstate::INVALID_PARAMETER_VALUE, msg);
    }
    // Arithmetic PostgreSQL has and DataFusion lacks (integer × interval).
    if lower.contains("cannot get result type for temporal operation") {
        return Error::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "not supported: {msg} (for n × an interval, CAST(n || ' minutes' AS interval) works)"
            ),
        );
    }
    if lower.contains("unsupported")
        || lower.contains("not supported")
        || lower.contains("correlated scalar subquery can only be used")
    {
        return Error::new(sqlstate::FEATURE_NOT_SUPPORTED, msg);
    }
    Error::new(sqlstate::SYNTAX_ERROR, msg)
}

fn from_execution_message(msg: String) -> Error {
    let lower = msg.to_lowercase();
    if lower.contains("divide by zero") || lower.contains("division by zero") {
        Error::new(sqlstate::DIVISION_BY_ZERO, "division by zero")
    } else if lower.contains("overflow") || lower.contains("out of range") {
        Error::new(sqlstate::NUMERIC_VALUE_OUT_OF_RANGE, msg)
    } else if lower.contains("cast") || lower.contains("parse") || lower.contains("invalid") {
        Error::new(sqlstate::INVALID_TEXT_REPRESENTATION, msg)
    } else {
        Error::new(sqlstate::DATA_EXCEPTION, msg)
    }
}
