//! `COPY … TO STDOUT` data: rows in PostgreSQL's text or CSV format, one CopyData message per
//! line (so psql can print each line as it arrives).
//!
//! Text: values separated by the delimiter (tab), NULL as `\N`, and backslash, newline,
//! carriage return, tab and the delimiter escaped with a backslash. CSV: NULL as the NULL string
//! (empty by default, unquoted); a value is quoted when it contains the delimiter, the quote,
//! CR or LF, or equals the NULL string (so an empty string stays distinct from NULL).

use std::fmt::Debug;

use bytes::{BufMut, BytesMut};
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use futures::{Sink, SinkExt, StreamExt};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyOutResponse};

use super::encode;
use crate::engine::CopyFormat;

/// Sends `COPY … TO STDOUT`'s rows: CopyOutResponse, the header line when asked for, one
/// CopyData per row, CopyDone. Returns how many rows went (for the `COPY n` tag).
pub async fn send<C>(
    client: &mut C,
    schema: &SchemaRef,
    mut stream: SendableRecordBatchStream,
    format: CopyFormat,
) -> PgWireResult<usize>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let ncols = schema.fields().len();
    client
        .feed(PgWireBackendMessage::CopyOutResponse(CopyOutResponse::new(
            0,
            ncols as i16,
            vec![0; ncols],
        )))
        .await?;
    let mut writer = CopyWriter::new(format);
    if writer.header() {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let mut line = BytesMut::new();
        writer.write_header(&names, &mut line);
        client
            .feed(PgWireBackendMessage::CopyData(CopyData::new(line.freeze())))
            .await?;
    }
    let mut rows = 0;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| super::user_error(crate::sql::errors::from_datafusion(e)))?;
        for row in 0..batch.num_rows() {
            let mut line = BytesMut::with_capacity(64);
            writer.write_row(&batch, row, &mut line);
            client
                .feed(PgWireBackendMessage::CopyData(CopyData::new(line.freeze())))
                .await?;
        }
        rows += batch.num_rows();
    }
    client
        .feed(PgWireBackendMessage::CopyDone(CopyDone::new()))
        .await?;
    Ok(rows)
}

pub struct CopyWriter {
    format: CopyFormat,
    value: BytesMut,
}

impl CopyWriter {
    pub fn new(format: CopyFormat) -> Self {
        CopyWriter {
            format,
            value: BytesMut::with_capacity(64),
        }
    }

    pub fn header(&self) -> bool {
        self.format.header
    }

    /// The header line (column names).
    pub fn write_header(&mut self, names: &[&str], out: &mut BytesMut) {
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                out.put_u8(self.format.delimiter);
            }
            self.value.clear();
            self.value.extend_from_slice(name.as_bytes());
            self.write_value(out);
        }
        out.put_u8(b'\n');
    }

    /// Row `row` of `batch` as one line.
    pub fn write_row(&mut self, batch: &RecordBatch, row: usize, out: &mut BytesMut) {
        for (i, column) in batch.columns().iter().enumerate() {
            if i > 0 {
                out.put_u8(self.format.delimiter);
            }
            if column.is_null(row) || column.data_type() == &DataType::Null {
                out.extend_from_slice(self.format.null.as_bytes());
                continue;
            }
            self.value.clear();
            encode::encode_text(column.as_ref(), row, &mut self.value);
            self.write_value(out);
        }
        out.put_u8(b'\n');
    }

    fn write_value(&self, out: &mut BytesMut) {
        let f = &self.format;
        let v = &self.value[..];
        if !f.csv {
            for &b in v {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' if f.delimiter == b'\t' => out.extend_from_slice(b"\\t"),
                    b if b == f.delimiter => {
                        out.put_u8(b'\\');
                        out.put_u8(b);
                    }
                    b => out.put_u8(b),
                }
            }
            return;
        }
        let quote = v == f.null.as_bytes()
            || v.iter()
                .any(|&b| b == f.delimiter || b == f.quote || b == b'\n' || b == b'\r');
        if !quote {
            out.extend_from_slice(v);
            return;
        }
        out.put_u8(f.quote);
        for &b in v {
            if b == f.quote || (b == f.escape && f.escape != f.quote) {
                out.put_u8(f.escape);
            }
            out.put_u8(b);
        }
        out.put_u8(f.quote);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::copy::CopyParser;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3), Some(4)])),
                Arc::new(StringArray::from(vec![
                    Some("plain"),
                    Some(""),
                    None,
                    Some("tab\there, \"quoted\"\nback\\slash"),
                ])),
            ],
        )
        .unwrap()
    }

    fn round_trip(format: CopyFormat) -> (String, Vec<Vec<Option<String>>>) {
        let b = batch();
        let mut w = CopyWriter::new(format.clone());
        let mut out = BytesMut::new();
        if w.header() {
            w.write_header(&["n", "s"], &mut out);
        }
        for row in 0..b.num_rows() {
            w.write_row(&b, row, &mut out);
        }
        let mut p = CopyParser::new(format, "t".into(), vec!["n".into(), "s".into()]);
        p.feed(&out).unwrap();
        p.finish().unwrap();
        let cols = p.take_chunk();
        let rows = (0..cols[0].len())
            .map(|r| {
                cols.iter()
                    .map(|c| (!c.is_null(r)).then(|| c.value(r).to_string()))
                    .collect()
            })
            .collect();
        (String::from_utf8(out.to_vec()).unwrap(), rows)
    }

    fn expected() -> Vec<Vec<Option<String>>> {
        vec![
            vec![Some("1".into()), Some("plain".into())],
            vec![None, Some("".into())],
            vec![Some("3".into()), None],
            vec![
                Some("4".into()),
                Some("tab\there, \"quoted\"\nback\\slash".into()),
            ],
        ]
    }

    #[test]
    fn text_lines_escape_and_read_back() {
        let (text, rows) = round_trip(CopyFormat::default());
        assert_eq!(
            text,
            "1\tplain\n\\N\t\n3\t\\N\n4\ttab\\there, \"quoted\"\\nback\\\\slash\n"
        );
        assert_eq!(rows, expected());
    }

    #[test]
    fn csv_lines_quote_and_read_back() {
        let format = CopyFormat {
            csv: true,
            header: true,
            delimiter: b',',
            null: String::new(),
            ..CopyFormat::default()
        };
        let (text, rows) = round_trip(format);
        assert!(text.starts_with("n,s\n1,plain\n,\"\"\n3,\n"), "{text}");
        assert_eq!(rows, expected());
    }
}
