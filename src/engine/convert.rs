//! Converting values into a column's type with PostgreSQL's input rules and error codes:
//! text from COPY and string literals, results of expressions, and parameter values.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, Int16Builder,
    Int32Builder, Int64Builder, StringArray, new_null_array,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::FormatOptions;
use datafusion::common::ScalarValue;

use crate::catalog::ColumnDef;
use crate::error::{Error, Result, sqlstate};
use crate::types::SqlType;

const STRICT: CastOptions<'static> = CastOptions {
    safe: false,
    format_options: FormatOptions::new(),
};
const LENIENT: CastOptions<'static> = CastOptions {
    safe: true,
    format_options: FormatOptions::new(),
};

fn invalid(ty: SqlType, value: &str) -> Error {
    let code = match ty {
        SqlType::Date | SqlType::Time | SqlType::Timestamp | SqlType::TimestampTz => "22007",
        SqlType::Interval => "22007",
        _ => sqlstate::INVALID_TEXT_REPRESENTATION,
    };
    crate::err!(
        code,
        "invalid input syntax for type {}: \"{value}\"",
        type_word(ty)
    )
}

fn out_of_range(ty: SqlType, value: &str) -> Error {
    crate::err!(
        sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
        "value \"{value}\" is out of range for type {}",
        type_word(ty)
    )
}

/// PostgreSQL's name for a type in input error messages.
fn type_word(ty: SqlType) -> String {
    match ty {
        SqlType::Varchar(_) => "character varying".into(),
        SqlType::Numeric(_) => "numeric".into(),
        SqlType::Time => "time".into(),
        SqlType::Timestamp => "timestamp".into(),
        SqlType::TimestampTz => "timestamp with time zone".into(),
        other => other.to_string(),
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    let t = s.trim().to_ascii_lowercase();
    if t.is_empty() {
        return None;
    }
    let matches = |word: &str| word.starts_with(t.as_str());
    if t == "1" || matches("true") || matches("yes") || t == "on" {
        Some(true)
    } else if t == "0" || matches("false") || matches("no") || t == "off" || t == "of" {
        Some(false)
    } else {
        None
    }
}

fn parse_int(s: &str, ty: SqlType, min: i64, max: i64) -> Result<i64> {
    let t = s.trim();
    match t.parse::<i64>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        Ok(_) => Err(out_of_range(ty, s)),
        Err(_) => {
            let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                Err(out_of_range(ty, s))
            } else {
                Err(invalid(ty, s))
            }
        }
    }
}

fn parse_float(s: &str, ty: SqlType) -> Result<f64> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "nan" => return Ok(f64::NAN),
        "infinity" | "+infinity" | "inf" | "+inf" => return Ok(f64::INFINITY),
        "-infinity" | "-inf" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    let v: f64 = t.parse().map_err(|_| invalid(ty, s))?;
    if v.is_infinite() {
        return Err(out_of_range(ty, s));
    }
    Ok(v)
}

/// Decodes bytea text input: `\x` hex format or the escape format.
pub fn parse_bytea(s: &str) -> Result<Vec<u8>> {
    if let Some(hex) = s.strip_prefix("\\x").or_else(|| s.strip_prefix("\\X")) {
        let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        if !digits.len().is_multiple_of(2) {
            return Err(crate::err!(
                sqlstate::INVALID_TEXT_REPRESENTATION,
                "invalid hexadecimal data: odd number of digits"
            ));
        }
        let val = |b: u8| -> Result<u8> {
            (b as char).to_digit(16).map(|d| d as u8).ok_or_else(|| {
                crate::err!(
                    sqlstate::INVALID_TEXT_REPRESENTATION,
                    "invalid hexadecimal digit: \"{}\"",
                    b as char
                )
            })
        };
        return digits
            .chunks(2)
            .map(|p| Ok(val(p[0])? << 4 | val(p[1])?))
            .collect();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            out.push(bytes[i]);
            i += 1;
        } else if bytes.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else if i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u16 * 64
                + (bytes[i + 2] - b'0') as u16 * 8
                + (bytes[i + 3] - b'0') as u16;
            if v > 255 {
                return Err(invalid(SqlType::Bytea, s));
            }
            out.push(v as u8);
            i += 4;
        } else {
            return Err(invalid(SqlType::Bytea, s));
        }
    }
    Ok(out)
}

/// Parses text values into a column of `ty`. On failure returns the row and the error.
pub fn parse_text_column(
    text: &StringArray,
    ty: SqlType,
) -> std::result::Result<ArrayRef, (usize, Error)> {
    macro_rules! build {
        ($builder:ty, $parse:expr) => {{
            let mut b = <$builder>::with_capacity(text.len());
            for (row, v) in text.iter().enumerate() {
                match v {
                    None => b.append_null(),
                    Some(s) => b.append_value($parse(s).map_err(|e| (row, e))?),
                }
            }
            Ok(Arc::new(b.finish()) as ArrayRef)
        }};
    }
    match ty {
        SqlType::Boolean => build!(BooleanBuilder, |s: &str| parse_bool(s)
            .ok_or_else(|| invalid(ty, s))),
        SqlType::SmallInt => {
            build!(Int16Builder, |s: &str| parse_int(
                s,
                ty,
                i16::MIN as i64,
                i16::MAX as i64
            )
            .map(|v| v as i16))
        }
        SqlType::Integer => {
            build!(Int32Builder, |s: &str| parse_int(
                s,
                ty,
                i32::MIN as i64,
                i32::MAX as i64
            )
            .map(|v| v as i32))
        }
        SqlType::BigInt => build!(Int64Builder, |s: &str| parse_int(s, ty, i64::MIN, i64::MAX)),
        SqlType::Real => build!(Float32Builder, |s: &str| {
            let v = parse_float(s, ty)?;
            if v.is_finite() && (v as f32).is_infinite() {
                return Err(out_of_range(ty, s));
            }
            Ok::<f32, Error>(v as f32)
        }),
        SqlType::Double => build!(Float64Builder, |s: &str| parse_float(s, ty)),
        SqlType::Text => Ok(Arc::new(text.clone())),
        SqlType::Varchar(limit) => {
            if let Some(limit) = limit {
                for (row, v) in text.iter().enumerate() {
                    if let Some(s) = v {
                        check_varchar(s, limit).map_err(|e| (row, e))?;
                    }
                }
            }
            Ok(Arc::new(text.clone()))
        }
        SqlType::Bytea => {
            let mut b = BinaryBuilder::with_capacity(text.len(), text.len() * 8);
            for (row, v) in text.iter().enumerate() {
                match v {
                    None => b.append_null(),
                    Some(s) => b.append_value(parse_bytea(s).map_err(|e| (row, e))?),
                }
            }
            Ok(Arc::new(b.finish()))
        }
        SqlType::Interval => {
            let mut b =
                datafusion::arrow::array::IntervalMonthDayNanoBuilder::with_capacity(text.len());
            for (row, v) in text.iter().enumerate() {
                match v {
                    None => b.append_null(),
                    Some(s) => {
                        b.append_value(parse_interval(s).ok_or_else(|| (row, invalid(ty, s)))?)
                    }
                }
            }
            Ok(Arc::new(b.finish()))
        }
        SqlType::Numeric(_)
        | SqlType::Date
        | SqlType::Time
        | SqlType::Timestamp
        | SqlType::TimestampTz => {
            let trimmed: StringArray = text.iter().map(|v| v.map(|s| s.trim())).collect();
            let target = ty.to_arrow();
            match cast_with_options(&trimmed, &target, &STRICT) {
                Ok(a) => Ok(a),
                Err(_) => {
                    // Find the first bad value to name it, as PostgreSQL does.
                    let lenient = cast_with_options(&trimmed, &target, &LENIENT)
                        .map_err(|e| (0, Error::from(e)))?;
                    let row = (0..text.len())
                        .find(|i| text.is_valid(*i) && lenient.is_null(*i))
                        .unwrap_or(0);
                    let value = text.value(row);
                    let err = if matches!(ty, SqlType::Numeric(_))
                        && value.trim().parse::<f64>().is_ok()
                    {
                        crate::err!(
                            sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                            "numeric field overflow"
                        )
                        .with_detail(format!(
                            "A field with precision and scale {} cannot hold \"{value}\".",
                            ty
                        ))
                    } else {
                        invalid(ty, value)
                    };
                    Err((row, err))
                }
            }
        }
    }
}

/// Parses PostgreSQL interval input: `1 year 2 mons 3 days 04:05:06.5`, `-1 day`, `@ 3 hours ago`,
/// `90 minutes`, `1.5 hours`, `00:01:00`.
pub fn parse_interval(s: &str) -> Option<datafusion::arrow::datatypes::IntervalMonthDayNano> {
    let mut months: i64 = 0;
    let mut days: i64 = 0;
    let mut nanos: f64 = 0.0;
    let lower = s.trim().to_ascii_lowercase();
    let mut words: Vec<&str> = lower.split_whitespace().collect();
    if words.first() == Some(&"@") {
        words.remove(0);
    }
    let ago = words.last() == Some(&"ago");
    if ago {
        words.pop();
    }
    if words.is_empty() {
        return None;
    }
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        if w.contains(':') {
            let (neg, body) = match w.strip_prefix('-') {
                Some(b) => (true, b),
                None => (false, w.strip_prefix('+').unwrap_or(w)),
            };
            let parts: Vec<&str> = body.split(':').collect();
            if parts.len() < 2 || parts.len() > 3 {
                return None;
            }
            let h: f64 = parts[0].parse().ok()?;
            let m: f64 = parts[1].parse().ok()?;
            let sec: f64 = if parts.len() == 3 {
                parts[2].parse().ok()?
            } else {
                0.0
            };
            let total = (h * 3600.0 + m * 60.0 + sec) * 1e9;
            nanos += if neg { -total } else { total };
            i += 1;
            continue;
        }
        // A number, optionally glued to its unit ("5min").
        let split = w.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(w.len());
        let (num, glued) = w.split_at(split);
        let value: f64 = num.parse().ok()?;
        let unit = if glued.is_empty() {
            i += 1;
            match words.get(i) {
                Some(u) => *u,
                None => "second",
            }
        } else {
            glued
        };
        let unit = unit.trim_end_matches(',');
        match unit {
            "millennium" | "millennia" | "millenniums" => months += (value * 12000.0) as i64,
            "century" | "centuries" => months += (value * 1200.0) as i64,
            "decade" | "decades" => months += (value * 120.0) as i64,
            "y" | "yr" | "yrs" | "year" | "years" => {
                months += (value * 12.0).round() as i64;
            }
            "mon" | "mons" | "month" | "months" => {
                months += value.trunc() as i64;
                days += (value.fract() * 30.0) as i64;
            }
            "w" | "week" | "weeks" => {
                let d = value * 7.0;
                days += d.trunc() as i64;
                nanos += d.fract() * 86_400e9;
            }
            "d" | "day" | "days" => {
                days += value.trunc() as i64;
                nanos += value.fract() * 86_400e9;
            }
            "h" | "hr" | "hrs" | "hour" | "hours" => nanos += value * 3_600e9,
            "m" | "min" | "mins" | "minute" | "minutes" => nanos += value * 60e9,
            "s" | "sec" | "secs" | "second" | "seconds" => nanos += value * 1e9,
            "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => nanos += value * 1e6,
            "us" | "usec" | "usecs" | "microsecond" | "microseconds" => nanos += value * 1e3,
            _ => return None,
        }
        i += 1;
    }
    let sign = if ago { -1 } else { 1 };
    let nanos = (nanos.round() as i64 / 1000) * 1000;
    Some(datafusion::arrow::datatypes::IntervalMonthDayNano::new(
        i32::try_from(months * sign).ok()?,
        i32::try_from(days * sign).ok()?,
        nanos * sign,
    ))
}

fn check_varchar(s: &str, limit: u32) -> Result<()> {
    if s.chars().count() > limit as usize {
        return Err(crate::err!(
            sqlstate::STRING_DATA_RIGHT_TRUNCATION,
            "value too long for type character varying({limit})"
        ));
    }
    Ok(())
}

/// Converts a computed column (any Arrow type) into the column's type. Text is parsed with
/// [`parse_text_column`]; other types are cast.
pub fn to_column_type(array: &ArrayRef, col: &ColumnDef) -> Result<ArrayRef> {
    let target = col.sql_type.to_arrow();
    let out = match array.data_type() {
        DataType::Null => new_null_array(&target, array.len()),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            if !matches!(col.sql_type, SqlType::Text | SqlType::Varchar(_)) =>
        {
            let text = cast_with_options(array, &DataType::Utf8, &STRICT)?;
            let text = text
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| crate::internal!("cast to Utf8 did not give a StringArray"))?;
            parse_text_column(text, col.sql_type).map_err(|(_, e)| e)?
        }
        dt if *dt == target => array.clone(),
        dt => {
            if !castable(dt, col.sql_type) {
                return Err(crate::err!(
                    sqlstate::DATATYPE_MISMATCH,
                    "column \"{}\" is of type {} but expression is of type {}",
                    col.name,
                    col.sql_type,
                    SqlType::from_arrow(dt)
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| dt.to_string())
                ));
            }
            cast_with_options(array, &target, &STRICT).map_err(|e| {
                let e = Error::from(e);
                if e.sqlstate == sqlstate::INVALID_TEXT_REPRESENTATION {
                    crate::err!(
                        sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                        "value out of range for column \"{}\" of type {}",
                        col.name,
                        col.sql_type
                    )
                } else {
                    e
                }
            })?
        }
    };
    if let SqlType::Varchar(Some(limit)) = col.sql_type
        && let Some(text) = out.as_any().downcast_ref::<StringArray>()
    {
        for s in text.iter().flatten() {
            check_varchar(s, limit)?;
        }
    }
    Ok(out)
}

/// Whether PostgreSQL would assign a value of Arrow type `from` to a column of `to` (implicit or
/// assignment cast).
fn castable(from: &DataType, to: SqlType) -> bool {
    let Some(from) = SqlType::from_arrow(from) else {
        return false;
    };
    use SqlType::*;
    let numeric =
        |t: SqlType| matches!(t, SmallInt | Integer | BigInt | Real | Double | Numeric(_));
    let text = |t: SqlType| matches!(t, Text | Varchar(_));
    let datetime = |t: SqlType| matches!(t, Date | Timestamp | TimestampTz);
    (numeric(from) && numeric(to))
        || (text(to))
        || (datetime(from) && datetime(to))
        || from == to
        || (from == Time && to == Time)
        || (from == Interval && to == Interval)
}

/// Casts one value (a parameter) to `ty`.
pub fn cast_scalar(value: &ScalarValue, ty: &DataType) -> Result<ScalarValue> {
    if value.is_null() {
        return Ok(ScalarValue::try_from(ty)?);
    }
    // An array in PostgreSQL's text form (`{1,2}`), as a text parameter of an array type.
    if let (ScalarValue::Utf8(Some(s)), DataType::List(element)) = (value, ty) {
        let items = crate::sql::postgres_forms::parse_array_literal(s).ok_or_else(|| {
            crate::err!(
                sqlstate::INVALID_TEXT_REPRESENTATION,
                "malformed array literal: \"{s}\""
            )
        })?;
        let items = items
            .into_iter()
            .map(|item| cast_scalar(&ScalarValue::Utf8(item), element.data_type()))
            .collect::<Result<Vec<_>>>()?;
        return Ok(ScalarValue::List(ScalarValue::new_list(
            &items,
            element.data_type(),
            true,
        )));
    }
    if let ScalarValue::Utf8(Some(s)) = value
        && let Some(sql_type) = SqlType::from_arrow(ty)
    {
        let parsed = parse_text_column(&StringArray::from(vec![s.as_str()]), sql_type)
            .map_err(|(_, e)| e)?;
        let parsed = if parsed.data_type() != ty {
            cast_with_options(&parsed, ty, &STRICT)?
        } else {
            parsed
        };
        return Ok(ScalarValue::try_from_array(&parsed, 0)?);
    }
    Ok(value.cast_to(ty)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str], ty: SqlType) -> std::result::Result<ArrayRef, (usize, Error)> {
        parse_text_column(&StringArray::from(values.to_vec()), ty)
    }

    #[test]
    fn arrays_in_text_cast_to_lists() {
        let ty = DataType::List(Arc::new(datafusion::arrow::datatypes::Field::new(
            "item",
            DataType::Int32,
            true,
        )));
        let v = cast_scalar(&ScalarValue::from("{1, NULL,3}"), &ty).unwrap();
        assert_eq!(v.to_string(), "[1, , 3]");
        let e = cast_scalar(&ScalarValue::from("{1,x}"), &ty).unwrap_err();
        assert_eq!(e.sqlstate, sqlstate::INVALID_TEXT_REPRESENTATION);
        let e = cast_scalar(&ScalarValue::from("1,2"), &ty).unwrap_err();
        assert_eq!(e.sqlstate, sqlstate::INVALID_TEXT_REPRESENTATION);
    }

    #[test]
    fn integers_report_syntax_and_range_like_postgres() {
        assert!(parse(&["1", " -7 "], SqlType::Integer).is_ok());
        let (row, e) = parse(&["1", "abc"], SqlType::Integer).unwrap_err();
        assert_eq!(
            (row, e.sqlstate),
            (1, sqlstate::INVALID_TEXT_REPRESENTATION)
        );
        assert_eq!(e.message, "invalid input syntax for type integer: \"abc\"");
        let (_, e) = parse(&["99999999999"], SqlType::Integer).unwrap_err();
        assert_eq!(e.sqlstate, sqlstate::NUMERIC_VALUE_OUT_OF_RANGE);
    }

    #[test]
    fn booleans_and_bytea() {
        assert!(parse(&["t", "FALSE", "yes", "0"], SqlType::Boolean).is_ok());
        assert!(parse(&["maybe"], SqlType::Boolean).is_err());
        assert_eq!(parse_bytea("\\x0aff").unwrap(), vec![10, 255]);
        assert_eq!(parse_bytea("a\\\\b\\001").unwrap(), b"a\\b\x01".to_vec());
    }

    #[test]
    fn intervals_like_postgres() {
        use datafusion::arrow::datatypes::IntervalMonthDayNano as I;
        assert_eq!(
            parse_interval("1 year 2 mons 3 days 04:05:06.5"),
            Some(I::new(14, 3, 14_706_500_000_000))
        );
        assert_eq!(parse_interval("-1 day"), Some(I::new(0, -1, 0)));
        assert_eq!(
            parse_interval("@ 3 hours ago"),
            Some(I::new(0, 0, -10_800_000_000_000))
        );
        assert_eq!(
            parse_interval("90 minutes"),
            Some(I::new(0, 0, 5_400_000_000_000))
        );
        assert_eq!(
            parse_interval("5 seconds"),
            Some(I::new(0, 0, 5_000_000_000))
        );
        assert_eq!(parse_interval("1 fortnight"), None);
    }

    #[test]
    fn varchar_limit() {
        let (_, e) = parse(&["abcd"], SqlType::Varchar(Some(3))).unwrap_err();
        assert_eq!(e.sqlstate, sqlstate::STRING_DATA_RIGHT_TRUNCATION);
    }

    #[test]
    fn timestamps_and_numeric() {
        assert!(parse(&["2024-01-02 03:04:05.25"], SqlType::Timestamp).is_ok());
        let (_, e) = parse(&["yesterday-ish"], SqlType::Timestamp).unwrap_err();
        assert_eq!(e.sqlstate, "22007");
        assert!(parse(&["12.5"], SqlType::Numeric(Some((10, 2)))).is_ok());
        let (_, e) = parse(&["abc"], SqlType::Numeric(Some((10, 2)))).unwrap_err();
        assert_eq!(e.sqlstate, sqlstate::INVALID_TEXT_REPRESENTATION);
    }
}
