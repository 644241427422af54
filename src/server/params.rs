//! Bind parameters from the wire → `ScalarValue`s for the engine.
//!
//! Text-format parameters are passed on as text; the engine parses them with the input rules of
//! the type they are used as. Binary parameters are decoded by their PostgreSQL type.

use std::sync::Arc;

use datafusion::arrow::datatypes::IntervalMonthDayNanoType;
use datafusion::common::ScalarValue;
use pgwire::api::Type;

use crate::error::{Error, Result, sqlstate};
use crate::unsupported;

const PG_EPOCH_DAYS: i64 = 10_957;
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS * 86_400_000_000;

fn bad(ty: &Type) -> Error {
    crate::err!(
        sqlstate::PROTOCOL_VIOLATION,
        "incorrect binary data format in bind parameter of type {}",
        ty.name()
    )
}

fn fixed<const N: usize>(bytes: &[u8], ty: &Type) -> Result<[u8; N]> {
    bytes.try_into().map_err(|_| bad(ty))
}

/// Decodes one parameter. `None` bytes is SQL NULL.
pub fn decode(bytes: Option<&[u8]>, binary: bool, ty: &Type) -> Result<ScalarValue> {
    let Some(bytes) = bytes else {
        return Ok(ScalarValue::Null);
    };
    if !binary {
        let text = std::str::from_utf8(bytes).map_err(|_| {
            crate::err!(
                sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
                "invalid byte sequence for encoding \"UTF8\""
            )
        })?;
        if let Some(element) = super::encode::element_type(ty) {
            return text_array(text, &element);
        }
        return Ok(ScalarValue::Utf8(Some(text.to_string())));
    }
    Ok(match *ty {
        Type::BOOL => ScalarValue::Boolean(Some(fixed::<1>(bytes, ty)?[0] != 0)),
        Type::INT2 => ScalarValue::Int16(Some(i16::from_be_bytes(fixed(bytes, ty)?))),
        Type::INT4 => ScalarValue::Int32(Some(i32::from_be_bytes(fixed(bytes, ty)?))),
        Type::INT8 => ScalarValue::Int64(Some(i64::from_be_bytes(fixed(bytes, ty)?))),
        Type::OID => ScalarValue::UInt32(Some(u32::from_be_bytes(fixed(bytes, ty)?))),
        Type::FLOAT4 => ScalarValue::Float32(Some(f32::from_be_bytes(fixed(bytes, ty)?))),
        Type::FLOAT8 => ScalarValue::Float64(Some(f64::from_be_bytes(fixed(bytes, ty)?))),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            let text = std::str::from_utf8(bytes).map_err(|_| {
                crate::err!(
                    sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
                    "invalid byte sequence for encoding \"UTF8\""
                )
            })?;
            ScalarValue::Utf8(Some(text.to_string()))
        }
        Type::BYTEA => ScalarValue::Binary(Some(bytes.to_vec())),
        Type::DATE => {
            let days = i32::from_be_bytes(fixed(bytes, ty)?) as i64 + PG_EPOCH_DAYS;
            ScalarValue::Date32(Some(i32::try_from(days).map_err(|_| bad(ty))?))
        }
        Type::TIME => ScalarValue::Time64Microsecond(Some(i64::from_be_bytes(fixed(bytes, ty)?))),
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            Some(i64::from_be_bytes(fixed(bytes, ty)?).saturating_add(PG_EPOCH_MICROS)),
            None,
        ),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            Some(i64::from_be_bytes(fixed(bytes, ty)?).saturating_add(PG_EPOCH_MICROS)),
            Some(Arc::from("+00:00")),
        ),
        Type::INTERVAL => {
            let b: [u8; 16] = fixed(bytes, ty)?;
            let micros = i64::from_be_bytes(b[0..8].try_into().map_err(|_| bad(ty))?);
            let days = i32::from_be_bytes(b[8..12].try_into().map_err(|_| bad(ty))?);
            let months = i32::from_be_bytes(b[12..16].try_into().map_err(|_| bad(ty))?);
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNanoType::make_value(
                months,
                days,
                micros.saturating_mul(1_000),
            )))
        }
        Type::NUMERIC => decode_numeric(bytes, ty)?,
        _ => match super::encode::element_type(ty) {
            Some(element) => decode_array(bytes, ty, &element)?,
            None => return Err(unsupported!("binary parameters of type {}", ty.name())),
        },
    })
}

/// A text array parameter (`{1,2}`) the client declared as an array of `element`: a list of
/// that type's values where Arrow has it (the query may not say, as in `x = ANY($1)`), else of
/// text for the engine to convert.
fn text_array(text: &str, element: &Type) -> Result<ScalarValue> {
    use datafusion::arrow::datatypes::DataType;
    let malformed = || {
        crate::err!(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            "malformed array literal: \"{text}\""
        )
    };
    let items = crate::sql::postgres_forms::parse_array_literal(text).ok_or_else(malformed)?;
    let data_type = match *element {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::OID => DataType::UInt32,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        _ => DataType::Utf8,
    };
    let values = items
        .into_iter()
        .map(|item| {
            ScalarValue::Utf8(item.clone())
                .cast_to(&data_type)
                .map_err(|_| {
                    crate::err!(
                        sqlstate::INVALID_TEXT_REPRESENTATION,
                        "invalid input syntax for type {}: \"{}\"",
                        element.name(),
                        item.unwrap_or_default()
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ScalarValue::List(ScalarValue::new_list(
        &values, &data_type, true,
    )))
}

/// Decodes a binary one-dimensional array (dimensions, has-NULLs flag, element oid, length
/// and lower bound, then each element length-prefixed) into a list of `element` values.
fn decode_array(bytes: &[u8], ty: &Type, element: &Type) -> Result<ScalarValue> {
    let int = |at: usize| -> Result<i32> {
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_be_bytes)
            .ok_or_else(|| bad(ty))
    };
    let dimensions = int(0)?;
    let (len, mut at) = match dimensions {
        0 => (0, 12),
        1 => (usize::try_from(int(12)?).map_err(|_| bad(ty))?, 20),
        _ => return Err(unsupported!("arrays of {dimensions} dimensions")),
    };
    let mut items = Vec::with_capacity(len.min(bytes.len()));
    for _ in 0..len {
        let n = int(at)?;
        at += 4;
        if n < 0 {
            items.push(None);
            continue;
        }
        let item = bytes.get(at..at + n as usize).ok_or_else(|| bad(ty))?;
        at += n as usize;
        items.push(Some(item));
    }
    if at != bytes.len() {
        return Err(bad(ty));
    }
    let values = items
        .into_iter()
        .map(|item| decode(item, true, element))
        .collect::<Result<Vec<_>>>()?;
    // Elements decode to their own types (NULLs untyped); the list takes the first's.
    let data_type = values
        .iter()
        .find(|v| !v.is_null())
        .map(ScalarValue::data_type)
        .unwrap_or(datafusion::arrow::datatypes::DataType::Null);
    let values = values
        .into_iter()
        .map(|v| {
            if v.is_null() {
                ScalarValue::try_from(&data_type)
            } else {
                Ok(v)
            }
        })
        .collect::<datafusion::error::Result<Vec<_>>>()
        .map_err(|_| bad(ty))?;
    Ok(ScalarValue::List(ScalarValue::new_list(
        &values, &data_type, true,
    )))
}

/// Decodes binary `numeric` into a Decimal128 with the value's display scale.
fn decode_numeric(bytes: &[u8], ty: &Type) -> Result<ScalarValue> {
    if bytes.len() < 8 {
        return Err(bad(ty));
    }
    let ndigits = i16::from_be_bytes([bytes[0], bytes[1]]) as usize;
    let weight = i16::from_be_bytes([bytes[2], bytes[3]]) as i32;
    let sign = u16::from_be_bytes([bytes[4], bytes[5]]);
    let dscale = u16::from_be_bytes([bytes[6], bytes[7]]) as i32;
    if bytes.len() != 8 + 2 * ndigits || dscale > 38 {
        return Err(bad(ty));
    }
    if sign == 0xC000 {
        return Ok(ScalarValue::Float64(Some(f64::NAN)));
    }
    // value = sum(d_i * 10000^(weight - i)); scaled by 10^dscale.
    let mut value: i128 = 0;
    for i in 0..ndigits {
        let d = i16::from_be_bytes([bytes[8 + 2 * i], bytes[9 + 2 * i]]) as i128;
        value = value
            .checked_mul(10_000)
            .and_then(|v| v.checked_add(d))
            .ok_or_else(|| bad(ty))?;
    }
    // value currently has exponent 4*(weight - ndigits + 1); adjust to -dscale.
    let exp = 4 * (weight - ndigits as i32 + 1) + dscale;
    if exp >= 0 {
        value = value
            .checked_mul(10i128.checked_pow(exp as u32).ok_or_else(|| bad(ty))?)
            .ok_or_else(|| bad(ty))?;
    } else {
        value /= 10i128.checked_pow((-exp) as u32).ok_or_else(|| bad(ty))?;
    }
    if sign == 0x4000 {
        value = -value;
    }
    Ok(ScalarValue::Decimal128(Some(value), 38, dscale as i8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_binary_numeric() {
        // 123.45: ndigits 2, weight 0, sign +, dscale 2, digits 123 4500
        let b = [0, 2, 0, 0, 0, 0, 0, 2, 0, 123, 17, 148];
        assert_eq!(
            decode_numeric(&b, &Type::NUMERIC).unwrap(),
            ScalarValue::Decimal128(Some(12345), 38, 2)
        );
    }

    #[test]
    fn decodes_binary_arrays() {
        // int4[] {1,NULL,3}: 1 dimension, has NULLs, oid 23, length 3 from 1.
        let mut b = Vec::new();
        for x in [1i32, 1, 23, 3, 1, 4, 1, -1, 4, 3] {
            b.extend_from_slice(&x.to_be_bytes());
        }
        let v = decode(Some(&b), true, &Type::INT4_ARRAY).unwrap();
        assert_eq!(v.to_string(), "[1, , 3]");
        let empty = [0i32, 0, 23].map(i32::to_be_bytes).concat();
        let v = decode(Some(&empty), true, &Type::INT4_ARRAY).unwrap();
        assert_eq!(v.to_string(), "[]");
        assert!(decode(Some(&b[..b.len() - 1]), true, &Type::INT4_ARRAY).is_err());
    }

    #[test]
    fn decodes_text_arrays_of_the_declared_type() {
        let v = decode(Some(b"{2, 5,NULL}"), false, &Type::INT8_ARRAY).unwrap();
        assert_eq!(v.data_type().to_string(), "List(Int64)");
        assert_eq!(v.to_string(), "[2, 5, ]");
        let e = decode(Some(b"{2,x}"), false, &Type::INT8_ARRAY).unwrap_err();
        assert_eq!(e.sqlstate, sqlstate::INVALID_TEXT_REPRESENTATION);
        let e = decode(Some(b"2,5"), false, &Type::INT8_ARRAY).unwrap_err();
        assert_eq!(e.sqlstate, sqlstate::INVALID_TEXT_REPRESENTATION);
    }

    #[test]
    fn rejects_wrong_lengths() {
        assert!(decode(Some(&[1, 2, 3]), true, &Type::INT4).is_err());
        assert!(decode(Some(&[0xff, 0xfe]), false, &Type::TEXT).is_err());
    }
}
