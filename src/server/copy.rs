//! `COPY … FROM STDIN` data: PostgreSQL's text and CSV formats, parsed incrementally as CopyData
//! messages arrive, into columns of text that the engine then converts to the table's types.
//!
//! ```text
//!  CopyData bytes ──► CopyParser (records → text columns, 8192 rows a chunk)
//!                         └──► Session::copy_rows (typed batch) ──► kept until CopyDone
//!  CopyDone ──► Session::copy_commit (one atomic write) ──► "COPY n"
//! ```

use datafusion::arrow::array::{StringArray, StringBuilder};

use crate::engine::CopyFormat;
use crate::error::{Error, Result, sqlstate};

pub const CHUNK_ROWS: usize = 8192;

pub struct CopyParser {
    format: CopyFormat,
    ncols: usize,
    column_names: Vec<String>,
    table: String,
    pending: Vec<u8>,
    /// Line number (1-based) of the next record, for error messages.
    pub line: usize,
    header_pending: bool,
    finished: bool,
    builders: Vec<StringBuilder>,
    rows: usize,
}

/// A parse error with PostgreSQL's COPY context line.
pub fn with_context(e: Error, table: &str, line: usize, column: Option<&str>) -> Error {
    let context = match column {
        Some(c) => format!("COPY {table}, line {line}, column {c}"),
        None => format!("COPY {table}, line {line}"),
    };
    let detail = match &e.detail {
        Some(d) => format!("{d}\n{context}"),
        None => context,
    };
    Error {
        detail: Some(detail),
        ..e
    }
}

impl CopyParser {
    pub fn new(format: CopyFormat, table: String, column_names: Vec<String>) -> Self {
        let ncols = column_names.len();
        CopyParser {
            header_pending: format.header,
            format,
            ncols,
            column_names,
            table,
            pending: Vec::new(),
            line: 1,
            finished: false,
            builders: (0..ncols).map(|_| StringBuilder::new()).collect(),
            rows: 0,
        }
    }

    pub fn rows_buffered(&self) -> usize {
        self.rows
    }

    /// Takes the parsed rows as text columns.
    pub fn take_chunk(&mut self) -> Vec<StringArray> {
        self.rows = 0;
        self.builders.iter_mut().map(|b| b.finish()).collect()
    }

    /// Feeds bytes; parses every complete record. Call [`CopyParser::finish`] at CopyDone.
    pub fn feed(&mut self, data: &[u8]) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(end) = self.record_end(start) {
            let record_end = end;
            let mut record = &self.pending[start..record_end];
            if record.last() == Some(&b'\r') {
                record = &record[..record.len() - 1];
            }
            let record = record.to_vec();
            start = record_end + 1;
            self.record(&record)?;
            self.line += 1;
            if self.finished {
                break;
            }
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// Handles data left without a final newline.
    pub fn finish(&mut self) -> Result<()> {
        if !self.finished && !self.pending.is_empty() {
            let mut record = std::mem::take(&mut self.pending);
            if record.last() == Some(&b'\r') {
                record.pop();
            }
            if self.format.csv && self.in_quotes(&record) {
                return Err(self.err(
                    sqlstate::BAD_COPY_FILE_FORMAT,
                    "unterminated CSV quoted field".into(),
                ));
            }
            self.record(&record)?;
            self.line += 1;
        }
        Ok(())
    }

    fn in_quotes(&self, bytes: &[u8]) -> bool {
        let mut quoted = false;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if quoted {
                if b == self.format.escape
                    && self.format.escape != self.format.quote
                    && bytes.get(i + 1) == Some(&self.format.quote)
                {
                    i += 2;
                    continue;
                }
                if b == self.format.quote {
                    quoted = false;
                }
            } else if b == self.format.quote {
                quoted = true;
            }
            i += 1;
        }
        quoted
    }

    /// End (index of the newline) of the record starting at `start`, if complete.
    fn record_end(&self, start: usize) -> Option<usize> {
        let bytes = &self.pending[start..];
        if !self.format.csv {
            // In text format a newline inside data is always escaped.
            let mut i = 0;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' => i += 2,
                    b'\n' => return Some(start + i),
                    _ => i += 1,
                }
            }
            return None;
        }
        let mut quoted = false;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if quoted {
                if b == self.format.escape
                    && self.format.escape != self.format.quote
                    && bytes.get(i + 1) == Some(&self.format.quote)
                {
                    i += 2;
                    continue;
                }
                if b == self.format.quote {
                    quoted = false;
                }
            } else if b == self.format.quote {
                quoted = true;
            } else if b == b'\n' {
                return Some(start + i);
            }
            i += 1;
        }
        None
    }

    fn err(&self, code: &'static str, message: String) -> Error {
        with_context(Error::new(code, message), &self.table, self.line, None)
    }

    fn record(&mut self, record: &[u8]) -> Result<()> {
        if record == b"\\." {
            self.finished = true;
            return Ok(());
        }
        if self.header_pending {
            self.header_pending = false;
            return Ok(());
        }
        let fields = if self.format.csv {
            self.split_csv(record)?
        } else {
            self.split_text(record)?
        };
        if fields.len() < self.ncols {
            let missing = &self.column_names[fields.len().min(self.ncols.saturating_sub(1))];
            return Err(self.err(
                sqlstate::BAD_COPY_FILE_FORMAT,
                format!("missing data for column \"{missing}\""),
            ));
        }
        if fields.len() > self.ncols {
            return Err(self.err(
                sqlstate::BAD_COPY_FILE_FORMAT,
                "extra data after last expected column".into(),
            ));
        }
        for (b, f) in self.builders.iter_mut().zip(fields) {
            match f {
                Some(s) => b.append_value(s),
                None => b.append_null(),
            }
        }
        self.rows += 1;
        Ok(())
    }

    fn utf8(&self, bytes: Vec<u8>) -> Result<String> {
        String::from_utf8(bytes).map_err(|e| {
            let bad = e
                .as_bytes()
                .get(e.utf8_error().valid_up_to())
                .copied()
                .unwrap_or(0);
            self.err(
                sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
                format!("invalid byte sequence for encoding \"UTF8\": 0x{bad:02x}"),
            )
        })
    }

    fn split_text(&self, record: &[u8]) -> Result<Vec<Option<String>>> {
        let mut fields = Vec::with_capacity(self.ncols);
        let null = self.format.null.as_bytes();
        for raw in record.split(|b| *b == self.format.delimiter) {
            if raw == null {
                fields.push(None);
                continue;
            }
            let mut out = Vec::with_capacity(raw.len());
            let mut i = 0;
            while i < raw.len() {
                let b = raw[i];
                if b != b'\\' || i + 1 >= raw.len() {
                    out.push(b);
                    i += 1;
                    continue;
                }
                let c = raw[i + 1];
                i += 2;
                match c {
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'v' => out.push(11),
                    b'0'..=b'7' => {
                        let mut v = (c - b'0') as u32;
                        for _ in 0..2 {
                            match raw.get(i) {
                                Some(d @ b'0'..=b'7') => {
                                    v = v * 8 + (d - b'0') as u32;
                                    i += 1;
                                }
                                _ => break,
                            }
                        }
                        out.push(v as u8);
                    }
                    b'x' => {
                        let mut v = 0u32;
                        let mut n = 0;
                        while n < 2 {
                            match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                                Some(d) => {
                                    v = v * 16 + d;
                                    i += 1;
                                    n += 1;
                                }
                                None => break,
                            }
                        }
                        if n == 0 {
                            out.push(b'x');
                        } else {
                            out.push(v as u8);
                        }
                    }
                    other => out.push(other),
                }
            }
            fields.push(Some(self.utf8(out)?));
        }
        Ok(fields)
    }

    fn split_csv(&self, record: &[u8]) -> Result<Vec<Option<String>>> {
        let f = &self.format;
        let mut fields = Vec::with_capacity(self.ncols);
        let mut i = 0;
        loop {
            let mut out = Vec::new();
            let mut quoted_any = false;
            let mut quoted = false;
            let raw_start = i;
            while i < record.len() {
                let b = record[i];
                if quoted {
                    // An escaped quote ("" when ESCAPE is the quote character).
                    if b == f.escape && record.get(i + 1) == Some(&f.quote) {
                        out.push(f.quote);
                        i += 2;
                        continue;
                    }
                    if b == f.quote {
                        quoted = false;
                        i += 1;
                        continue;
                    }
                    out.push(b);
                    i += 1;
                } else if b == f.quote {
                    quoted = true;
                    quoted_any = true;
                    i += 1;
                } else if b == f.delimiter {
                    break;
                } else {
                    out.push(b);
                    i += 1;
                }
            }
            if quoted {
                return Err(self.err(
                    sqlstate::BAD_COPY_FILE_FORMAT,
                    "unterminated CSV quoted field".into(),
                ));
            }
            let raw = &record[raw_start..i];
            let is_null = !quoted_any && raw == f.null.as_bytes();
            fields.push(if is_null { None } else { Some(self.utf8(out)?) });
            if i >= record.len() {
                break;
            }
            i += 1; // delimiter
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_format() -> CopyFormat {
        CopyFormat::default()
    }

    fn csv_format(header: bool) -> CopyFormat {
        CopyFormat {
            csv: true,
            header,
            delimiter: b',',
            null: String::new(),
            quote: b'"',
            escape: b'"',
        }
    }

    fn values(p: &mut CopyParser) -> Vec<Vec<Option<String>>> {
        let cols = p.take_chunk();
        let n = cols.first().map(|c| c.len()).unwrap_or(0);
        (0..n)
            .map(|r| {
                cols.iter()
                    .map(|c| {
                        if c.is_null(r) {
                            None
                        } else {
                            Some(c.value(r).to_string())
                        }
                    })
                    .collect()
            })
            .collect()
    }

    use datafusion::arrow::array::Array;

    #[test]
    fn text_format_with_escapes_split_across_messages() {
        let mut p = CopyParser::new(text_format(), "t".into(), vec!["a".into(), "b".into()]);
        p.feed(b"1\ta\\tb\n2\t\\N\n3\tx\\\\").unwrap();
        p.feed(b"y\n\\.\n").unwrap();
        p.finish().unwrap();
        assert_eq!(
            values(&mut p),
            vec![
                vec![Some("1".into()), Some("a\tb".into())],
                vec![Some("2".into()), None],
                vec![Some("3".into()), Some("x\\y".into())],
            ]
        );
    }

    #[test]
    fn csv_with_header_quotes_and_nulls() {
        let mut p = CopyParser::new(csv_format(true), "t".into(), vec!["a".into(), "b".into()]);
        p.feed(b"a,b\n1,\"x,\"\"y\"\"\"\n2,\n3,\"\"\n4,\"multi\nline\"\n")
            .unwrap();
        p.finish().unwrap();
        assert_eq!(
            values(&mut p),
            vec![
                vec![Some("1".into()), Some("x,\"y\"".into())],
                vec![Some("2".into()), None],
                vec![Some("3".into()), Some("".into())],
                vec![Some("4".into()), Some("multi\nline".into())],
            ]
        );
    }

    #[test]
    fn wrong_column_counts_and_bad_utf8() {
        let mut p = CopyParser::new(text_format(), "t".into(), vec!["a".into(), "b".into()]);
        let e = p.feed(b"1\n").unwrap_err();
        assert_eq!(e.sqlstate, sqlstate::BAD_COPY_FILE_FORMAT);
        assert_eq!(e.detail.as_deref(), Some("COPY t, line 1"));
        let mut p = CopyParser::new(text_format(), "t".into(), vec!["a".into()]);
        let e = p.feed(b"ok\n\xff\n").unwrap_err();
        assert_eq!(e.sqlstate, sqlstate::CHARACTER_NOT_IN_REPERTOIRE);
        assert!(e.detail.unwrap().contains("line 2"));
    }
}
