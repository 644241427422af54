//! The SQL column types of DESIGN.md §2 and their Arrow representation.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, IntervalUnit, TimeUnit};
use datafusion::sql::sqlparser::ast::{self, ExactNumberInfo};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::unsupported;

/// Precision and scale used for `numeric` declared without them.
pub const DEFAULT_NUMERIC_PRECISION: u8 = 38;
pub const DEFAULT_NUMERIC_SCALE: i8 = 10;

/// A column type as declared in `CREATE TABLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SqlType {
    Boolean,
    SmallInt,
    Integer,
    BigInt,
    Real,
    Double,
    /// `numeric(p, s)`; `None` when declared as bare `numeric`.
    Numeric(Option<(u8, i8)>),
    Text,
    /// `varchar(n)`; `None` for unbounded `varchar`.
    Varchar(Option<u32>),
    Bytea,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Interval,
}

impl SqlType {
    /// The Arrow type that holds values of this SQL type.
    pub fn to_arrow(self) -> DataType {
        match self {
            SqlType::Boolean => DataType::Boolean,
            SqlType::SmallInt => DataType::Int16,
            SqlType::Integer => DataType::Int32,
            SqlType::BigInt => DataType::Int64,
            SqlType::Real => DataType::Float32,
            SqlType::Double => DataType::Float64,
            SqlType::Numeric(ps) => {
                let (p, s) = ps.unwrap_or((DEFAULT_NUMERIC_PRECISION, DEFAULT_NUMERIC_SCALE));
                DataType::Decimal128(p, s)
            }
            SqlType::Text | SqlType::Varchar(_) => DataType::Utf8,
            SqlType::Bytea => DataType::Binary,
            SqlType::Date => DataType::Date32,
            SqlType::Time => DataType::Time64(TimeUnit::Microsecond),
            SqlType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            SqlType::TimestampTz => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("+00:00")))
            }
            SqlType::Interval => DataType::Interval(IntervalUnit::MonthDayNano),
        }
    }

    /// The SQL type a computed Arrow column is reported as (for `CREATE TABLE … AS` and
    /// descriptions); `None` when no SQL type of DESIGN.md §2 holds it.
    pub fn from_arrow(dt: &DataType) -> Option<SqlType> {
        Some(match dt {
            DataType::Boolean => SqlType::Boolean,
            DataType::Int8 | DataType::Int16 | DataType::UInt8 => SqlType::SmallInt,
            DataType::Int32 | DataType::UInt16 => SqlType::Integer,
            DataType::Int64 | DataType::UInt32 | DataType::UInt64 => SqlType::BigInt,
            DataType::Float16 | DataType::Float32 => SqlType::Real,
            DataType::Float64 => SqlType::Double,
            DataType::Decimal128(p, s) => SqlType::Numeric(Some((*p, *s))),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => SqlType::Text,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => SqlType::Bytea,
            DataType::Date32 | DataType::Date64 => SqlType::Date,
            DataType::Time32(_) | DataType::Time64(_) => SqlType::Time,
            DataType::Timestamp(_, None) => SqlType::Timestamp,
            DataType::Timestamp(_, Some(_)) => SqlType::TimestampTz,
            DataType::Interval(_) => SqlType::Interval,
            _ => return None,
        })
    }
}

impl fmt::Display for SqlType {
    /// The name PostgreSQL's `format_type` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlType::Boolean => write!(f, "boolean"),
            SqlType::SmallInt => write!(f, "smallint"),
            SqlType::Integer => write!(f, "integer"),
            SqlType::BigInt => write!(f, "bigint"),
            SqlType::Real => write!(f, "real"),
            SqlType::Double => write!(f, "double precision"),
            SqlType::Numeric(None) => write!(f, "numeric"),
            SqlType::Numeric(Some((p, s))) => write!(f, "numeric({p},{s})"),
            SqlType::Text => write!(f, "text"),
            SqlType::Varchar(None) => write!(f, "character varying"),
            SqlType::Varchar(Some(n)) => write!(f, "character varying({n})"),
            SqlType::Bytea => write!(f, "bytea"),
            SqlType::Date => write!(f, "date"),
            SqlType::Time => write!(f, "time without time zone"),
            SqlType::Timestamp => write!(f, "timestamp without time zone"),
            SqlType::TimestampTz => write!(f, "timestamp with time zone"),
            SqlType::Interval => write!(f, "interval"),
        }
    }
}

/// Maps a parsed column type to an Eddy type, or 0A000 naming the type.
pub fn parse_sql_type(dt: &ast::DataType) -> Result<SqlType> {
    use ast::DataType as D;
    Ok(match dt {
        D::Boolean | D::Bool => SqlType::Boolean,
        D::SmallInt(_) | D::Int2(_) => SqlType::SmallInt,
        D::Int(_) | D::Integer(_) | D::Int4(_) => SqlType::Integer,
        D::BigInt(_) | D::Int8(_) => SqlType::BigInt,
        D::Real | D::Float4 => SqlType::Real,
        D::Double(_) | D::DoublePrecision | D::Float8 => SqlType::Double,
        D::Float(info) => match info {
            ExactNumberInfo::Precision(p) if *p <= 24 => SqlType::Real,
            _ => SqlType::Double,
        },
        D::Numeric(info) | D::Decimal(info) | D::Dec(info) => match info {
            ExactNumberInfo::None => SqlType::Numeric(None),
            ExactNumberInfo::Precision(p) => SqlType::Numeric(Some((check_precision(*p)?, 0))),
            ExactNumberInfo::PrecisionAndScale(p, s) => {
                let p = check_precision(*p)?;
                if *s < 0 || *s > p as i64 {
                    return Err(crate::err!(
                        crate::error::sqlstate::INVALID_PARAMETER_VALUE,
                        "NUMERIC scale {s} must be between 0 and precision {p}"
                    ));
                }
                SqlType::Numeric(Some((p, *s as i8)))
            }
        },
        D::Text | D::String(_) => SqlType::Text,
        D::Varchar(len) | D::CharacterVarying(len) | D::CharVarying(len) => {
            SqlType::Varchar(char_length(len)?)
        }
        D::Bytea => SqlType::Bytea,
        D::Date => SqlType::Date,
        D::Time(_, tz) => match tz {
            ast::TimezoneInfo::None | ast::TimezoneInfo::WithoutTimeZone => SqlType::Time,
            _ => return Err(unsupported!("type time with time zone")),
        },
        D::Timestamp(_, tz) => match tz {
            ast::TimezoneInfo::None | ast::TimezoneInfo::WithoutTimeZone => SqlType::Timestamp,
            ast::TimezoneInfo::WithTimeZone | ast::TimezoneInfo::Tz => SqlType::TimestampTz,
        },
        D::Interval { .. } => SqlType::Interval,
        D::Custom(name, args) if args.is_empty() => {
            match name.to_string().to_ascii_lowercase().as_str() {
                "timestamptz" => SqlType::TimestampTz,
                "int2" => SqlType::SmallInt,
                "int4" => SqlType::Integer,
                "int8" => SqlType::BigInt,
                "float4" => SqlType::Real,
                "float8" => SqlType::Double,
                "bool" => SqlType::Boolean,
                other => return Err(unsupported!("type {other}")),
            }
        }
        other => return Err(unsupported!("type {other}")),
    })
}

fn check_precision(p: u64) -> Result<u8> {
    if (1..=38).contains(&p) {
        Ok(p as u8)
    } else {
        Err(crate::err!(
            crate::error::sqlstate::INVALID_PARAMETER_VALUE,
            "NUMERIC precision {p} must be between 1 and 38"
        ))
    }
}

fn char_length(len: &Option<ast::CharacterLength>) -> Result<Option<u32>> {
    match len {
        None | Some(ast::CharacterLength::Max) => Ok(None),
        Some(ast::CharacterLength::IntegerLength { length, .. }) => {
            if *length == 0 || *length > 10_485_760 {
                Err(crate::err!(
                    crate::error::sqlstate::INVALID_PARAMETER_VALUE,
                    "length for type varchar must be between 1 and 10485760"
                ))
            } else {
                Ok(Some(*length as u32))
            }
        }
    }
}
