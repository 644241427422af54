//! Arrow values → PostgreSQL wire values, text and binary, as PostgreSQL 15 formats them.
//!
//! Every Arrow type maps to a PostgreSQL type ([`pg_type`]). Unsigned 64-bit integers (what
//! `row_number()`, `rank()` and `ntile()` return) are `int8`, as PostgreSQL types those
//! functions; unsigned 32-bit integers are the catalogs' `oid`s. Lists are PostgreSQL arrays of
//! their element's type (`int2[]`, `text[]`…): text `{1,2}`, `{a,"b c",NULL}`, and the binary
//! array format. Types with no PostgreSQL counterpart (structs, lists of lists) are sent as
//! `text`, which is valid in both formats.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Timelike};
use datafusion::arrow::array::*;
use datafusion::arrow::datatypes::{DataType, IntervalMonthDayNanoType, IntervalUnit, TimeUnit};
use datafusion::arrow::util::display::array_value_to_string;
use pgwire::api::Type;
use pgwire::api::results::FieldFormat;

/// Days from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_DAYS: i64 = 10_957;
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS * 86_400_000_000;

/// The PostgreSQL type a column of `dt` is described as.
pub fn pg_type(dt: &DataType) -> Type {
    match dt {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        // The catalogs' oids.
        DataType::UInt32 => Type::OID,
        DataType::Int64 | DataType::UInt64 => Type::INT8,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Decimal32(_, _)
        | DataType::Decimal64(_, _)
        | DataType::Decimal128(_, _)
        | DataType::Decimal256(_, _) => Type::NUMERIC,
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => Type::BYTEA,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Time32(_) | DataType::Time64(_) => Type::TIME,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Interval(_) | DataType::Duration(_) => Type::INTERVAL,
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            array_type(&pg_type(f.data_type())).unwrap_or(Type::TEXT)
        }
        _ => Type::TEXT,
    }
}

/// `pg_type.typlen` of a type, as sent in RowDescription.
pub fn type_size(t: &Type) -> i16 {
    match *t {
        Type::BOOL => 1,
        Type::INT2 => 2,
        Type::INT4 | Type::OID | Type::FLOAT4 | Type::DATE => 4,
        Type::INT8 | Type::FLOAT8 | Type::TIME | Type::TIMESTAMP | Type::TIMESTAMPTZ => 8,
        Type::INTERVAL => 16,
        _ => -1,
    }
}

/// Appends one value (length-prefixed, or -1 for NULL) to a DataRow body.
pub fn encode_value(array: &dyn Array, row: usize, format: FieldFormat, out: &mut BytesMut) {
    // NullArray has no validity buffer: `is_null` is false for it, but every value is NULL.
    if array.is_null(row) || array.data_type() == &DataType::Null {
        out.put_i32(-1);
        return;
    }
    let len_at = out.len();
    out.put_i32(0);
    if format == FieldFormat::Binary {
        encode_binary(array, row, out);
    } else {
        encode_text(array, row, out);
    }
    let len = (out.len() - len_at - 4) as i32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
}

macro_rules! downcast {
    ($array:expr, $ty:ty) => {
        $array
            .as_any()
            .downcast_ref::<$ty>()
            .expect("array type matches its DataType")
    };
}

struct Buf<'a>(&'a mut BytesMut);
impl std::fmt::Write for Buf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends a non-NULL value's PostgreSQL text form (no length prefix).
pub fn encode_text(array: &dyn Array, row: usize, out: &mut BytesMut) {
    let mut w = Buf(out);
    let _ = match array.data_type() {
        DataType::Boolean => {
            w.0.put_u8(if downcast!(array, BooleanArray).value(row) {
                b't'
            } else {
                b'f'
            });
            Ok(())
        }
        DataType::Int8 => write!(w, "{}", downcast!(array, Int8Array).value(row)),
        DataType::Int16 => write!(w, "{}", downcast!(array, Int16Array).value(row)),
        DataType::Int32 => write!(w, "{}", downcast!(array, Int32Array).value(row)),
        DataType::Int64 => write!(w, "{}", downcast!(array, Int64Array).value(row)),
        DataType::UInt8 => write!(w, "{}", downcast!(array, UInt8Array).value(row)),
        DataType::UInt16 => write!(w, "{}", downcast!(array, UInt16Array).value(row)),
        DataType::UInt32 => write!(w, "{}", downcast!(array, UInt32Array).value(row)),
        DataType::UInt64 => write!(
            w,
            "{}",
            i64::try_from(downcast!(array, UInt64Array).value(row)).unwrap_or(i64::MAX)
        ),
        DataType::Float32 => {
            w.0.extend_from_slice(
                format_float(downcast!(array, Float32Array).value(row) as f64, true).as_bytes(),
            );
            Ok(())
        }
        DataType::Float64 => {
            w.0.extend_from_slice(
                format_float(downcast!(array, Float64Array).value(row), false).as_bytes(),
            );
            Ok(())
        }
        DataType::Utf8 => {
            w.0.extend_from_slice(downcast!(array, StringArray).value(row).as_bytes());
            Ok(())
        }
        DataType::LargeUtf8 => {
            w.0.extend_from_slice(downcast!(array, LargeStringArray).value(row).as_bytes());
            Ok(())
        }
        DataType::Utf8View => {
            w.0.extend_from_slice(downcast!(array, StringViewArray).value(row).as_bytes());
            Ok(())
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let bytes = binary_value(array, row);
            w.0.extend_from_slice(b"\\x");
            for b in bytes {
                let _ = write!(w, "{b:02x}");
            }
            Ok(())
        }
        DataType::Date32 => write_date(&mut w, downcast!(array, Date32Array).value(row) as i64),
        DataType::Date64 => write_date(
            &mut w,
            downcast!(array, Date64Array).value(row) / 86_400_000,
        ),
        DataType::Time64(_) | DataType::Time32(_) => write_time(&mut w, time_micros(array, row)),
        DataType::Timestamp(_, tz) => {
            let micros = timestamp_micros(array, row);
            let written = write_timestamp(&mut w, micros);
            if tz.is_some() {
                w.0.extend_from_slice(b"+00");
            }
            written
        }
        DataType::Interval(_) | DataType::Duration(_) => {
            let (months, days, micros) = interval_parts(array, row);
            write_interval(&mut w, months, days, micros)
        }
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) => {
            if let Some(elements) = list_value(array, row) {
                write_array_text(elements.as_ref(), w.0);
            }
            Ok(())
        }
        _ => {
            let s = array_value_to_string(array_ref(array).as_ref(), row).unwrap_or_default();
            w.0.extend_from_slice(s.as_bytes());
            Ok(())
        }
    };
}

/// Element types and their array types (`int2` and `int2[]`).
const ARRAY_TYPES: &[(Type, Type)] = &[
    (Type::BOOL, Type::BOOL_ARRAY),
    (Type::INT2, Type::INT2_ARRAY),
    (Type::INT4, Type::INT4_ARRAY),
    (Type::INT8, Type::INT8_ARRAY),
    (Type::FLOAT4, Type::FLOAT4_ARRAY),
    (Type::FLOAT8, Type::FLOAT8_ARRAY),
    (Type::NUMERIC, Type::NUMERIC_ARRAY),
    (Type::BYTEA, Type::BYTEA_ARRAY),
    (Type::DATE, Type::DATE_ARRAY),
    (Type::TIME, Type::TIME_ARRAY),
    (Type::TIMESTAMP, Type::TIMESTAMP_ARRAY),
    (Type::TIMESTAMPTZ, Type::TIMESTAMPTZ_ARRAY),
    (Type::INTERVAL, Type::INTERVAL_ARRAY),
    (Type::OID, Type::OID_ARRAY),
    (Type::TEXT, Type::TEXT_ARRAY),
    (Type::VARCHAR, Type::VARCHAR_ARRAY),
];

/// The array type of `element` (`int2` → `int2[]`); None for arrays of arrays and of types
/// without a PostgreSQL array (Eddy sends those as text).
fn array_type(element: &Type) -> Option<Type> {
    ARRAY_TYPES
        .iter()
        .find(|(e, _)| e == element)
        .map(|(_, a)| a.clone())
}

/// The element type of an array type (`int2[]` → `int2`), for binary array parameters.
pub fn element_type(array: &Type) -> Option<Type> {
    ARRAY_TYPES
        .iter()
        .find(|(_, a)| a == array)
        .map(|(e, _)| e.clone())
}

/// One list value: its elements as an array, from `list`'s child values.
fn list_value(array: &dyn Array, row: usize) -> Option<ArrayRef> {
    match array.data_type() {
        DataType::List(_) => Some(downcast!(array, ListArray).value(row)),
        DataType::LargeList(_) => Some(downcast!(array, LargeListArray).value(row)),
        DataType::FixedSizeList(_, _) => Some(downcast!(array, FixedSizeListArray).value(row)),
        _ => None,
    }
}

/// PostgreSQL's array text: `{1,2}`, elements quoted (with `\"` and `\\`) when empty, `NULL`
/// or holding braces, commas, quotes, backslashes or white space; NULL elements as `NULL`;
/// arrays of arrays nested without quotes.
fn write_array_text(elements: &dyn Array, out: &mut BytesMut) {
    out.put_u8(b'{');
    let mut element = BytesMut::new();
    for i in 0..elements.len() {
        if i > 0 {
            out.put_u8(b',');
        }
        if elements.is_null(i) || elements.data_type() == &DataType::Null {
            out.extend_from_slice(b"NULL");
            continue;
        }
        element.clear();
        encode_text(elements, i, &mut element);
        let nested = list_value(elements, i).is_some();
        let quote = !nested
            && (element.is_empty()
                || element.eq_ignore_ascii_case(b"null")
                || element.iter().any(|b| {
                    matches!(b, b'{' | b'}' | b',' | b'"' | b'\\')
                        || b.is_ascii_whitespace()
                        || *b == 0x0b
                }));
        if quote {
            out.put_u8(b'"');
            for b in element.iter() {
                if matches!(b, b'"' | b'\\') {
                    out.put_u8(b'\\');
                }
                out.put_u8(*b);
            }
            out.put_u8(b'"');
        } else {
            out.extend_from_slice(&element);
        }
    }
    out.put_u8(b'}');
}

/// PostgreSQL's binary array: dimensions (none when empty), a has-NULLs flag, the element
/// type's oid, the length and lower bound (1), then each element length-prefixed (-1: NULL).
fn write_array_binary(elements: &dyn Array, element_type: &Type, out: &mut BytesMut) {
    let len = elements.len();
    out.put_i32(if len == 0 { 0 } else { 1 });
    out.put_i32((elements.null_count() > 0 || elements.data_type() == &DataType::Null) as i32);
    out.put_u32(element_type.oid());
    if len > 0 {
        out.put_i32(len as i32);
        out.put_i32(1);
    }
    for i in 0..len {
        encode_value(elements, i, FieldFormat::Binary, out);
    }
}

fn array_ref(array: &dyn Array) -> ArrayRef {
    make_array(array.to_data())
}

fn binary_value(array: &dyn Array, row: usize) -> &[u8] {
    match array.data_type() {
        DataType::Binary => downcast!(array, BinaryArray).value(row),
        DataType::LargeBinary => downcast!(array, LargeBinaryArray).value(row),
        DataType::BinaryView => downcast!(array, BinaryViewArray).value(row),
        DataType::FixedSizeBinary(_) => downcast!(array, FixedSizeBinaryArray).value(row),
        _ => &[],
    }
}

fn encode_binary(array: &dyn Array, row: usize, out: &mut BytesMut) {
    match array.data_type() {
        DataType::Boolean => out.put_u8(downcast!(array, BooleanArray).value(row) as u8),
        DataType::Int8 => out.put_i16(downcast!(array, Int8Array).value(row) as i16),
        DataType::Int16 => out.put_i16(downcast!(array, Int16Array).value(row)),
        DataType::UInt8 => out.put_i16(downcast!(array, UInt8Array).value(row) as i16),
        DataType::Int32 => out.put_i32(downcast!(array, Int32Array).value(row)),
        DataType::UInt16 => out.put_i32(downcast!(array, UInt16Array).value(row) as i32),
        DataType::Int64 => out.put_i64(downcast!(array, Int64Array).value(row)),
        DataType::UInt32 => out.put_u32(downcast!(array, UInt32Array).value(row)),
        // Row numbers and ranks; beyond int8's range (never reached by them) it saturates.
        DataType::UInt64 => {
            out.put_i64(i64::try_from(downcast!(array, UInt64Array).value(row)).unwrap_or(i64::MAX))
        }
        DataType::Float16 => out.put_f32(downcast!(array, Float16Array).value(row).to_f32()),
        DataType::Float32 => out.put_f32(downcast!(array, Float32Array).value(row)),
        DataType::Float64 => out.put_f64(downcast!(array, Float64Array).value(row)),
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => out.extend_from_slice(binary_value(array, row)),
        DataType::Date32 => {
            out.put_i32((downcast!(array, Date32Array).value(row) as i64 - PG_EPOCH_DAYS) as i32)
        }
        DataType::Date64 => out.put_i32(
            (downcast!(array, Date64Array).value(row) / 86_400_000 - PG_EPOCH_DAYS) as i32,
        ),
        DataType::Time32(_) | DataType::Time64(_) => out.put_i64(time_micros(array, row)),
        DataType::Timestamp(_, _) => out.put_i64(timestamp_micros(array, row) - PG_EPOCH_MICROS),
        DataType::Interval(_) | DataType::Duration(_) => {
            let (months, days, micros) = interval_parts(array, row);
            out.put_i64(micros);
            out.put_i32(days);
            out.put_i32(months);
        }
        DataType::Decimal128(_, scale) => encode_numeric_binary(
            downcast!(array, Decimal128Array).value(row),
            *scale as i32,
            out,
        ),
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            match (array_type(&pg_type(f.data_type())), list_value(array, row)) {
                (Some(_), Some(elements)) => {
                    write_array_binary(elements.as_ref(), &pg_type(f.data_type()), out)
                }
                // Described as text.
                _ => encode_text(array, row, out),
            }
        }
        // Everything else is described as text: its binary form is its text form.
        _ => encode_text(array, row, out),
    }
}

/// PostgreSQL's binary `numeric`: base-10000 digits with weight, sign and display scale.
fn encode_numeric_binary(value: i128, scale: i32, out: &mut BytesMut) {
    let negative = value < 0;
    let mut abs = value.unsigned_abs();
    let scale = scale.max(0) as u32;
    // Pad the fraction to a multiple of 4 digits so base-10000 groups align at the point.
    let pad = (4 - scale % 4) % 4;
    abs *= 10u128.pow(pad);
    let frac_groups = ((scale + pad) / 4) as i32;
    let mut groups = Vec::new();
    while abs > 0 {
        groups.push((abs % 10_000) as i16);
        abs /= 10_000;
    }
    groups.reverse();
    let total = groups.len() as i32;
    // Strip leading and trailing zero groups; the weight counts from the first kept group.
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    let mut weight = total - frac_groups - 1 - leading as i32;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.put_i16(groups.len() as i16);
    out.put_i16(weight as i16);
    out.put_u16(if negative && !groups.is_empty() {
        0x4000
    } else {
        0
    });
    out.put_u16(scale as u16);
    for g in groups {
        out.put_i16(g);
    }
}

/// Formats a float as PostgreSQL 12+ does: shortest round-trip digits, exponent notation
/// below 1e-4 and from 1e15 (1e6 for real).
pub fn format_float(v: f64, single: bool) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let sci = if single {
        format!("{:e}", v as f32)
    } else {
        format!("{v:e}")
    };
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let limit = if single { 6 } else { 15 };
    if exp < -4 || exp >= limit {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else if single {
        format!("{}", v as f32)
    } else {
        format!("{v}")
    }
}

fn write_date(w: &mut Buf, days: i64) -> std::fmt::Result {
    let date = NaiveDate::from_num_days_from_ce_opt((days + 719_163) as i32);
    match date {
        Some(d) if d.year() > 0 => write!(w, "{:04}-{:02}-{:02}", d.year(), d.month(), d.day()),
        Some(d) => write!(w, "{:04}-{:02}-{:02} BC", 1 - d.year(), d.month(), d.day()),
        None => write!(w, "{days}"),
    }
}

fn write_fraction(w: &mut Buf, micros: u32) -> std::fmt::Result {
    if micros == 0 {
        return Ok(());
    }
    let s = format!("{micros:06}");
    write!(w, ".{}", s.trim_end_matches('0'))
}

fn write_time(w: &mut Buf, micros: i64) -> std::fmt::Result {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000) as u32;
    let t = NaiveTime::from_num_seconds_from_midnight_opt((secs % 86_400) as u32, 0)
        .unwrap_or_default();
    write!(w, "{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())?;
    write_fraction(w, frac)
}

fn write_timestamp(w: &mut Buf, micros: i64) -> std::fmt::Result {
    match DateTime::from_timestamp_micros(micros) {
        Some(dt) => {
            let d = dt.naive_utc();
            if d.year() > 0 {
                write!(w, "{:04}-{:02}-{:02} ", d.year(), d.month(), d.day())?;
            } else {
                write!(w, "{:04}-{:02}-{:02} ", 1 - d.year(), d.month(), d.day())?;
            }
            write!(w, "{:02}:{:02}:{:02}", d.hour(), d.minute(), d.second())?;
            write_fraction(w, d.and_utc().timestamp_subsec_micros())?;
            if d.year() <= 0 {
                w.0.extend_from_slice(b" BC");
            }
            Ok(())
        }
        None => write!(w, "{micros}"),
    }
}

/// PostgreSQL's `postgres` IntervalStyle: `1 year 2 mons 3 days 04:05:06.5`.
fn write_interval(w: &mut Buf, months: i32, days: i32, micros: i64) -> std::fmt::Result {
    let mut parts: Vec<String> = Vec::new();
    let years = months / 12;
    let mons = months % 12;
    let plural = |n: i64, unit: &str, units: &str| {
        if n == 1 || n == -1 {
            format!("{n} {unit}")
        } else {
            format!("{n} {units}")
        }
    };
    if years != 0 {
        parts.push(plural(years as i64, "year", "years"));
    }
    if mons != 0 {
        parts.push(plural(mons as i64, "mon", "mons"));
    }
    if days != 0 {
        parts.push(plural(days as i64, "day", "days"));
    }
    if micros != 0 || parts.is_empty() {
        let neg = micros < 0;
        let abs = micros.unsigned_abs();
        let secs = abs / 1_000_000;
        let frac = (abs % 1_000_000) as u32;
        let mut s = String::new();
        if neg {
            s.push('-');
        }
        let _ = write!(
            s,
            "{:02}:{:02}:{:02}",
            secs / 3600,
            (secs / 60) % 60,
            secs % 60
        );
        if frac != 0 {
            let f = format!("{frac:06}");
            let _ = write!(s, ".{}", f.trim_end_matches('0'));
        }
        parts.push(s);
    }
    w.write_str(&parts.join(" "))
}

fn time_micros(array: &dyn Array, row: usize) -> i64 {
    match array.data_type() {
        DataType::Time32(TimeUnit::Second) => {
            downcast!(array, Time32SecondArray).value(row) as i64 * 1_000_000
        }
        DataType::Time32(_) => downcast!(array, Time32MillisecondArray).value(row) as i64 * 1_000,
        DataType::Time64(TimeUnit::Nanosecond) => {
            downcast!(array, Time64NanosecondArray).value(row) / 1_000
        }
        DataType::Time64(_) => downcast!(array, Time64MicrosecondArray).value(row),
        _ => 0,
    }
}

fn timestamp_micros(array: &dyn Array, row: usize) -> i64 {
    match array.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            downcast!(array, TimestampSecondArray).value(row) * 1_000_000
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            downcast!(array, TimestampMillisecondArray).value(row) * 1_000
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            downcast!(array, TimestampMicrosecondArray).value(row)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => downcast!(array, TimestampNanosecondArray)
            .value(row)
            .div_euclid(1_000),
        _ => 0,
    }
}

fn interval_parts(array: &dyn Array, row: usize) -> (i32, i32, i64) {
    match array.data_type() {
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            let v = downcast!(array, IntervalMonthDayNanoArray).value(row);
            let (m, d, n) = IntervalMonthDayNanoType::to_parts(v);
            (m, d, n / 1_000)
        }
        DataType::Interval(IntervalUnit::DayTime) => {
            let v = downcast!(array, IntervalDayTimeArray).value(row);
            (0, v.days, v.milliseconds as i64 * 1_000)
        }
        DataType::Interval(IntervalUnit::YearMonth) => {
            (downcast!(array, IntervalYearMonthArray).value(row), 0, 0)
        }
        DataType::Duration(unit) => {
            let v = match unit {
                TimeUnit::Second => downcast!(array, DurationSecondArray).value(row) * 1_000_000,
                TimeUnit::Millisecond => {
                    downcast!(array, DurationMillisecondArray).value(row) * 1_000
                }
                TimeUnit::Microsecond => downcast!(array, DurationMicrosecondArray).value(row),
                TimeUnit::Nanosecond => {
                    downcast!(array, DurationNanosecondArray).value(row) / 1_000
                }
            };
            (0, 0, v)
        }
        _ => (0, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn text(array: ArrayRef) -> String {
        let mut out = BytesMut::new();
        encode_text(array.as_ref(), 0, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn floats_like_postgres() {
        assert_eq!(format_float(1.5, false), "1.5");
        assert_eq!(format_float(0.1, false), "0.1");
        assert_eq!(format_float(1e15, false), "1e+15");
        assert_eq!(format_float(123456789012345.0, false), "123456789012345");
        assert_eq!(format_float(0.00001, false), "1e-05");
        assert_eq!(format_float(1000000.0, true), "1e+06");
        assert_eq!(format_float(f64::NEG_INFINITY, false), "-Infinity");
    }

    #[test]
    fn temporal_text() {
        let ts = TimestampMicrosecondArray::from(vec![1_704_164_645_250_000]);
        assert_eq!(text(Arc::new(ts)), "2024-01-02 03:04:05.25");
        let tz = TimestampMicrosecondArray::from(vec![0]).with_timezone("+00:00");
        assert_eq!(text(Arc::new(tz)), "1970-01-01 00:00:00+00");
        assert_eq!(
            text(Arc::new(Date32Array::from(vec![19_724]))),
            "2024-01-02"
        );
        let iv = IntervalMonthDayNanoArray::from(vec![IntervalMonthDayNanoType::make_value(
            14,
            3,
            3_723_500_000_000,
        )]);
        assert_eq!(text(Arc::new(iv)), "1 year 2 mons 3 days 01:02:03.5");
        assert_eq!(
            text(Arc::new(BinaryArray::from(vec![&b"\x01\xff"[..]]))),
            "\\x01ff"
        );
    }

    #[test]
    fn row_numbers_are_int8() {
        // row_number(), rank() and ntile() return UInt64; PostgreSQL types them bigint.
        assert_eq!(pg_type(&DataType::UInt64), Type::INT8);
        let a: ArrayRef = Arc::new(UInt64Array::from(vec![7, u64::MAX]));
        let mut out = BytesMut::new();
        encode_binary(a.as_ref(), 0, &mut out);
        assert_eq!(&out[..], &7i64.to_be_bytes());
        assert_eq!(text(a.slice(1, 1)), i64::MAX.to_string());
    }

    #[test]
    fn lists_are_postgres_arrays() {
        let ints =
            ListArray::from_iter_primitive::<datafusion::arrow::datatypes::Int16Type, _, _>(vec![
                Some(vec![Some(1), None, Some(3)]),
                Some(vec![]),
            ]);
        assert_eq!(pg_type(ints.data_type()), Type::INT2_ARRAY);
        let ints: ArrayRef = Arc::new(ints);
        assert_eq!(text(ints.clone()), "{1,NULL,3}");
        assert_eq!(text(ints.slice(1, 1)), "{}");
        let mut out = BytesMut::new();
        encode_binary(ints.as_ref(), 0, &mut out);
        let mut expected = Vec::new();
        for x in [1i32, 1, 21, 3, 1, 2] {
            expected.extend_from_slice(&x.to_be_bytes());
        }
        expected.extend_from_slice(&1i16.to_be_bytes());
        expected.extend_from_slice(&(-1i32).to_be_bytes());
        expected.extend_from_slice(&2i32.to_be_bytes());
        expected.extend_from_slice(&3i16.to_be_bytes());
        assert_eq!(&out[..], &expected[..]);
        // Elements are quoted as array_out quotes them.
        let mut texts = ListBuilder::new(StringBuilder::new());
        texts.append_value(["a", "b c", "", "NULL", "x\"y", "back\\slash", "{}"].map(Some));
        let texts: ArrayRef = Arc::new(texts.finish());
        assert_eq!(pg_type(texts.data_type()), Type::TEXT_ARRAY);
        assert_eq!(
            text(texts),
            r#"{a,"b c","","NULL","x\"y","back\\slash","{}"}"#
        );
        // Arrays of arrays are text, nested without quotes.
        let mut nested = ListBuilder::new(ListBuilder::new(Int64Builder::new()));
        nested.values().append_value([Some(1), Some(2)]);
        nested.values().append_value([Some(3)]);
        nested.append(true);
        let nested: ArrayRef = Arc::new(nested.finish());
        assert_eq!(pg_type(nested.data_type()), Type::TEXT);
        assert_eq!(text(nested), "{{1,2},{3}}");
    }

    #[test]
    fn numeric_binary() {
        let mut out = BytesMut::new();
        encode_numeric_binary(12345, 2, &mut out); // 123.45
        assert_eq!(&out[..], &[0, 2, 0, 0, 0, 0, 0, 2, 0, 123, 17, 148]);
        let mut out = BytesMut::new();
        encode_numeric_binary(0, 2, &mut out);
        assert_eq!(&out[..], &[0, 0, 0, 0, 0, 0, 0, 2]);
    }
}
