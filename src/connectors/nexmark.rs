//! The Nexmark generator: the auction site's `person`, `auction` and `bid` streams of the
//! Nexmark benchmark, made by the `nexmark` crate (RisingWave's port of the Beam generator,
//! so the data match what other systems' Nexmark numbers were measured on).
//!
//! Event `n` (from 0) is a function of the seed, the start time and the event-time rate alone,
//! so a stream can be cut anywhere and resumed: after a restart the source goes on from the
//! number of events its tables hold. Of each 50 events, 1 is a person, 3 are auctions and 46
//! are bids; event `n`'s time is `start_time + n / rate` (ms precision), so every stream is in
//! event-time order and the watermark (`date_time - 4 s`) never refuses a row.

use std::sync::Arc;

use datafusion::arrow::array::TimestampMicrosecondBuilder;
use datafusion::arrow::array::{ArrayRef, Int64Builder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use nexmark::config::{NexmarkConfig, RateShape};
use nexmark::event::{Event, EventType};

use crate::catalog::{ColumnDef, NexmarkOptions, TableDef, WatermarkDef};
use crate::error::{Result, sqlstate};
use crate::types::SqlType;

/// Event-time rate when the generation rate is unlimited: Nexmark's default, 10,000 events
/// per second of event time.
const DEFAULT_EVENT_TIME_RATE: u64 = 10_000;

/// Ids of seed `s` start `(s - 1) × SEED_STRIDE` events further on (the generator draws each
/// event's values from its id), a multiple of the 50-event person/auction/bid cycle.
const SEED_STRIDE: u64 = 1_000_000_000;

/// Reads the `WITH` options of `CREATE SOURCE … FROM NEXMARK`; `now_ms` is the default start
/// time.
pub fn parse_options(options: &[(String, String)], now_ms: i64) -> Result<NexmarkOptions> {
    let mut out = NexmarkOptions {
        max_events: None,
        events_per_second: 0,
        seed: 1,
        start_time_ms: now_ms,
    };
    for (key, value) in options {
        let number = || {
            value.parse::<u64>().map_err(|_| {
                crate::err!(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    "{key} must be a non-negative integer, not '{value}'"
                )
            })
        };
        match key.as_str() {
            "max_events" => out.max_events = Some(number()?),
            "events_per_second" => out.events_per_second = number()?,
            "seed" => {
                out.seed = number()?;
                if out.seed == 0 || out.seed > 1_000_000 {
                    return Err(crate::err!(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "seed must be between 1 and 1000000, not {}",
                        out.seed
                    ));
                }
            }
            "start_time" => {
                let t = chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.f")
                    .or_else(|_| {
                        chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d")
                            .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
                    })
                    .map_err(|_| {
                        crate::err!(
                            sqlstate::INVALID_DATETIME_FORMAT,
                            "start_time must be a timestamp such as '2025-01-01 00:00:00', not '{value}'"
                        )
                    })?;
                out.start_time_ms = t.and_utc().timestamp_millis();
            }
            other => {
                return Err(crate::err!(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    "unrecognized NEXMARK option \"{other}\""
                )
                .with_hint("The options are max_events, events_per_second, seed and start_time."));
            }
        }
    }
    if out.start_time_ms < 0 {
        return Err(crate::err!(
            sqlstate::INVALID_PARAMETER_VALUE,
            "start_time must not be before 1970-01-01"
        ));
    }
    Ok(out)
}

/// Events per second of event time.
fn event_time_rate(options: &NexmarkOptions) -> u64 {
    if options.events_per_second > 0 {
        options.events_per_second
    } else {
        DEFAULT_EVENT_TIME_RATE
    }
}

/// The tables a Nexmark source feeds, in the order [`Generator::generate`] returns their rows:
/// `person`, `auction`, `bid`, each APPEND ONLY with a watermark 4 seconds behind `date_time`.
pub fn table_defs() -> Vec<TableDef> {
    use SqlType::{BigInt, Text, Timestamp};
    let table = |name: &str, columns: &[(&str, SqlType)]| TableDef {
        id: 0,
        name: name.to_string(),
        columns: columns
            .iter()
            .map(|(name, sql_type)| ColumnDef {
                name: name.to_string(),
                sql_type: *sql_type,
                not_null: true,
            })
            .collect(),
        primary_key: Vec::new(),
        append_only: true,
        watermark: Some(WatermarkDef {
            column: "date_time".into(),
            expr: "date_time - INTERVAL '4' SECOND".into(),
        }),
        late_rows_table: None,
        source: None,
    };
    vec![
        table(
            "person",
            &[
                ("id", BigInt),
                ("name", Text),
                ("email_address", Text),
                ("credit_card", Text),
                ("city", Text),
                ("state", Text),
                ("date_time", Timestamp),
                ("extra", Text),
            ],
        ),
        table(
            "auction",
            &[
                ("id", BigInt),
                ("item_name", Text),
                ("description", Text),
                ("initial_bid", BigInt),
                ("reserve", BigInt),
                ("date_time", Timestamp),
                ("expires", Timestamp),
                ("seller", BigInt),
                ("category", BigInt),
                ("extra", Text),
            ],
        ),
        table(
            "bid",
            &[
                ("auction", BigInt),
                ("bidder", BigInt),
                ("price", BigInt),
                ("channel", Text),
                ("url", Text),
                ("date_time", Timestamp),
                ("extra", Text),
            ],
        ),
    ]
}

/// Makes the events of one Nexmark stream, any range of them at a time.
#[derive(Clone)]
pub struct Generator {
    config: NexmarkConfig,
    schemas: [SchemaRef; 3],
}

impl Generator {
    pub fn new(options: &NexmarkOptions) -> Generator {
        let rate = event_time_rate(options) as usize;
        let config = NexmarkConfig {
            first_event_id: ((options.seed - 1) * SEED_STRIDE) as usize,
            base_time: options.start_time_ms as u64,
            first_rate: rate,
            next_rate: rate,
            rate_shape: RateShape::Square,
            ..NexmarkConfig::default()
        };
        let defs = table_defs();
        Generator {
            config,
            schemas: [defs[0].schema(), defs[1].schema(), defs[2].schema()],
        }
    }

    /// Events `from..to` as rows of `person`, `auction` and `bid`.
    pub fn generate(&self, from: u64, to: u64) -> Result<[RecordBatch; 3]> {
        let mut person = Rows::new(&self.schemas[0]);
        let mut auction = Rows::new(&self.schemas[1]);
        let mut bid = Rows::new(&self.schemas[2]);
        let events = nexmark::EventGenerator::new(self.config.clone())
            .with_offset(from)
            .take(to.saturating_sub(from) as usize);
        for event in events {
            match &event {
                Event::Person(_) => person.push(event),
                Event::Auction(_) => auction.push(event),
                Event::Bid(_) => bid.push(event),
            }
        }
        Ok([person.finish()?, auction.finish()?, bid.finish()?])
    }

    /// The first `rows` rows of table `table` (0 person, 1 auction, 2 bid), as
    /// [`Generator::generate`] made them, in batches of at most 65,536 rows.
    pub fn table_rows(&self, table: usize, rows: u64) -> Result<Vec<RecordBatch>> {
        const BATCH: u64 = 65_536;
        let kind = match table {
            0 => EventType::Person,
            1 => EventType::Auction,
            _ => EventType::Bid,
        };
        let mut events = nexmark::EventGenerator::new(self.config.clone()).with_type_filter(kind);
        let mut out = Vec::new();
        let mut made = 0;
        while made < rows {
            let n = (rows - made).min(BATCH);
            let mut batch = Rows::new(&self.schemas[table]);
            for event in events.by_ref().take(n as usize) {
                batch.push(event);
            }
            out.push(batch.finish()?);
            made += n;
        }
        Ok(out)
    }
}

/// Column builders of one table; each column is a bigint, a text or a timestamp.
struct Rows {
    schema: SchemaRef,
    columns: Vec<Column>,
}

enum Column {
    Int(Int64Builder),
    Text(StringBuilder),
    Time(TimestampMicrosecondBuilder),
}

impl Rows {
    fn new(schema: &SchemaRef) -> Rows {
        let columns = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Int64 => Column::Int(Int64Builder::new()),
                DataType::Timestamp(..) => Column::Time(TimestampMicrosecondBuilder::new()),
                _ => Column::Text(StringBuilder::new()),
            })
            .collect();
        Rows {
            schema: schema.clone(),
            columns,
        }
    }

    /// Appends `event` (of this table's kind) as a row.
    fn push(&mut self, event: Event) {
        match event {
            Event::Person(p) => {
                self.int(0, p.id);
                self.text(1, &p.name);
                self.text(2, &p.email_address);
                self.text(3, &p.credit_card);
                self.text(4, &p.city);
                self.text(5, &p.state);
                self.time(6, p.date_time);
                self.text(7, &p.extra);
            }
            Event::Auction(a) => {
                self.int(0, a.id);
                self.text(1, &a.item_name);
                self.text(2, &a.description);
                self.int(3, a.initial_bid);
                self.int(4, a.reserve);
                self.time(5, a.date_time);
                self.time(6, a.expires);
                self.int(7, a.seller);
                self.int(8, a.category);
                self.text(9, &a.extra);
            }
            Event::Bid(b) => {
                self.int(0, b.auction);
                self.int(1, b.bidder);
                self.int(2, b.price);
                self.text(3, &b.channel);
                self.text(4, &b.url);
                self.time(5, b.date_time);
                self.text(6, &b.extra);
            }
        }
    }

    fn int(&mut self, i: usize, v: usize) {
        if let Column::Int(b) = &mut self.columns[i] {
            b.append_value(v as i64);
        }
    }

    fn text(&mut self, i: usize, v: &str) {
        if let Column::Text(b) = &mut self.columns[i] {
            b.append_value(v);
        }
    }

    /// `ms` since 1970, stored in µs.
    fn time(&mut self, i: usize, ms: u64) {
        if let Column::Time(b) = &mut self.columns[i] {
            b.append_value(ms as i64 * 1000);
        }
    }

    fn finish(self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = self
            .columns
            .into_iter()
            .map(|c| -> ArrayRef {
                match c {
                    Column::Int(mut b) => Arc::new(b.finish()),
                    Column::Text(mut b) => Arc::new(b.finish()),
                    Column::Time(mut b) => Arc::new(b.finish()),
                }
            })
            .collect();
        Ok(RecordBatch::try_new(self.schema, columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(seed: u64) -> NexmarkOptions {
        NexmarkOptions {
            max_events: None,
            events_per_second: 0,
            seed,
            start_time_ms: 1_735_689_600_000,
        }
    }

    #[test]
    fn any_cut_of_the_stream_gives_the_same_rows() {
        let g = Generator::new(&options(1));
        let whole = g.generate(0, 500).unwrap();
        let parts = [g.generate(0, 123).unwrap(), g.generate(123, 500).unwrap()];
        for t in 0..3 {
            let joined = datafusion::arrow::compute::concat_batches(
                &whole[t].schema(),
                [&parts[0][t], &parts[1][t]],
            )
            .unwrap();
            assert_eq!(joined, whole[t]);
        }
        // 1 person, 3 auctions, 46 bids in every 50 events.
        assert_eq!(
            whole.iter().map(|b| b.num_rows()).collect::<Vec<_>>(),
            [10, 30, 460]
        );
    }

    #[test]
    fn a_table_made_alone_has_the_rows_the_stream_gave_it() {
        let g = Generator::new(&options(3));
        let whole = g.generate(0, 5_000).unwrap();
        for (t, rows) in [(0, 100), (1, 300), (2, 4_600), (2, 17)] {
            let alone = g.table_rows(t, rows).unwrap();
            let alone =
                datafusion::arrow::compute::concat_batches(&whole[t].schema(), &alone).unwrap();
            assert_eq!(alone, whole[t].slice(0, rows as usize), "table {t}");
        }
    }

    #[test]
    fn seeds_give_different_streams_and_times_follow_the_rate() {
        let a = Generator::new(&options(1)).generate(0, 100).unwrap();
        let b = Generator::new(&options(2)).generate(0, 100).unwrap();
        assert_ne!(a[2], b[2]);
        // Event 10,000 (a person) happens 1 s after the start, at 10,000 events per second.
        let g = Generator::new(&options(1));
        let person = &g.generate(10_000, 10_001).unwrap()[0];
        let at = person
            .column(6)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::TimestampMicrosecondArray>()
            .unwrap()
            .value(0);
        assert_eq!(at, 1_735_689_601_000_000);
    }

    #[test]
    fn options_are_checked() {
        let parse = |k: &str, v: &str| parse_options(&[(k.into(), v.into())], 0);
        assert_eq!(parse("seed", "0").unwrap_err().sqlstate, "22023");
        assert_eq!(parse("max_events", "-1").unwrap_err().sqlstate, "22023");
        assert_eq!(parse("speed", "1").unwrap_err().sqlstate, "22023");
        assert_eq!(parse("start_time", "soon").unwrap_err().sqlstate, "22007");
        let o = parse("start_time", "2025-01-01 00:00:00").unwrap();
        assert_eq!(o.start_time_ms, 1_735_689_600_000);
    }
}
