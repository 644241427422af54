//! The peer: differential-dataflow (one timely worker, in this thread) running the Nexmark
//! queries it is practical to write by hand, fed by the same generator in the same chunks as
//! Eddy's source (10,000 events, one timestamp each). Its CPU includes the generator and the
//! conversion of its Arrow rows into tuples, as Eddy's includes the generator. Each query's
//! output is accumulated (the view's contents) and returned as Arrow rows of the same types as
//! Eddy's view, so the two are checksummed alike.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Builder, Int64Array, Int64Builder, RecordBatch, StringArray,
    StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{Field, Schema};
use differential_dataflow::input::Input;

/// The queries written for the peer.
pub const QUERIES: &[&str] = &["q0", "q1", "q2", "q3", "q4"];

/// One value of an output row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Value {
    Int(i64),
    Text(String),
    /// µs since 1970.
    Time(i64),
    /// An average, as (sum, count).
    Avg(i64, i64),
    /// A price × 0.908, kept as the price.
    Euros(i64),
}

type Row = Vec<Value>;

/// Runs `query` over `events` events of Nexmark stream `options`; its final contents as
/// Arrow rows, or `None` if the peer has no version of it.
pub fn run(
    query: &str,
    options: &eddy::catalog::NexmarkOptions,
    events: u64,
) -> Option<Vec<RecordBatch>> {
    if !QUERIES.contains(&query) {
        return None;
    }
    let query = query.to_string();
    let generator = eddy::connectors::nexmark::Generator::new(options);
    let rows: HashMap<Row, isize> = timely::execute_directly(move |worker| {
        let contents: Rc<RefCell<HashMap<Row, isize>>> = Rc::default();
        let acc = contents.clone();
        let (mut people, mut auctions, mut bids, probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (people, person) = scope.new_collection::<(i64, String, String, String), isize>();
            let (auctions, auction) = scope.new_collection::<(i64, i64, i64, i64, i64), isize>();
            let (bids, bid) = scope.new_collection::<(i64, i64, i64, i64), isize>();
            let output = match query.as_str() {
                "q0" => bid.map(|(a, b, p, t)| {
                    vec![Value::Int(a), Value::Int(b), Value::Int(p), Value::Time(t)]
                }),
                "q1" => bid.map(|(a, b, p, t)| {
                    vec![
                        Value::Int(a),
                        Value::Int(b),
                        Value::Euros(p),
                        Value::Time(t),
                    ]
                }),
                "q2" => bid
                    .filter(|(a, ..)| [1007, 1020, 2001, 2019, 2087].contains(a))
                    .map(|(a, _, p, _)| vec![Value::Int(a), Value::Int(p)]),
                "q3" => {
                    let sellers = auction
                        .filter(|(_, _, category, _, _)| *category == 10)
                        .map(|(id, seller, ..)| (seller, id));
                    let people = person
                        .filter(|(_, _, _, state)| ["or", "id", "ca"].contains(&state.as_str()))
                        .map(|(id, name, city, state)| (id, (name, city, state)));
                    sellers.join(people).map(|(_, (id, (name, city, state)))| {
                        vec![
                            Value::Text(name),
                            Value::Text(city),
                            Value::Text(state),
                            Value::Int(id),
                        ]
                    })
                }
                _ => {
                    // q4: per auction the highest bid made before it expired; per category the
                    // average of those.
                    let open = auction
                        .map(|(id, _, category, start, expires)| (id, (category, start, expires)));
                    let prices = bid.map(|(a, _, p, t)| (a, (p, t)));
                    open.join(prices)
                        .filter(|(_, ((_, start, expires), (_, t)))| start <= t && t <= expires)
                        .map(|(id, ((category, ..), (price, _)))| ((id, category), price))
                        .reduce(|_, prices, out| out.push((*prices[prices.len() - 1].0, 1isize)))
                        .map(|((_, category), price)| (category, price))
                        .reduce(|_, prices, out| {
                            let (mut sum, mut n) = (0i64, 0i64);
                            for (p, r) in prices {
                                sum += **p * *r as i64;
                                n += *r as i64;
                            }
                            out.push(((sum, n), 1isize))
                        })
                        .map(|(category, (sum, n))| vec![Value::Int(category), Value::Avg(sum, n)])
                }
            };
            let (probe, _) = output
                .inspect(move |(row, _, diff)| {
                    *acc.borrow_mut().entry(row.clone()).or_default() += diff;
                })
                .probe();
            (people, auctions, bids, probe)
        });
        let mut next = 0;
        let mut round = 0u64;
        while next < events {
            let to = (next + 10_000).min(events);
            let [p, a, b] = generator.generate(next, to).unwrap();
            let int = |batch: &RecordBatch, c: usize| {
                batch
                    .column(c)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone()
            };
            let text = |batch: &RecordBatch, c: usize| {
                batch
                    .column(c)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone()
            };
            let time = |batch: &RecordBatch, c: usize| {
                batch
                    .column(c)
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .unwrap()
                    .clone()
            };
            let (id, name, city, state) = (int(&p, 0), text(&p, 1), text(&p, 4), text(&p, 5));
            for r in 0..p.num_rows() {
                people.insert((
                    id.value(r),
                    name.value(r).to_string(),
                    city.value(r).to_string(),
                    state.value(r).to_string(),
                ));
            }
            let (id, start, expires, seller, category) =
                (int(&a, 0), time(&a, 5), time(&a, 6), int(&a, 7), int(&a, 8));
            for r in 0..a.num_rows() {
                auctions.insert((
                    id.value(r),
                    seller.value(r),
                    category.value(r),
                    start.value(r),
                    expires.value(r),
                ));
            }
            let (auction, bidder, price, at) = (int(&b, 0), int(&b, 1), int(&b, 2), time(&b, 5));
            for r in 0..b.num_rows() {
                bids.insert((
                    auction.value(r),
                    bidder.value(r),
                    price.value(r),
                    at.value(r),
                ));
            }
            round += 1;
            for input in [&mut people as &mut dyn Advance, &mut auctions, &mut bids] {
                input.advance_and_flush(round);
            }
            worker.step_while(|| probe.less_than(&round));
            next = to;
        }
        let out = std::mem::take(&mut *contents.borrow_mut());
        out
    });
    Some(to_batches(rows))
}

/// Advancing the three differently typed inputs alike.
trait Advance {
    fn advance_and_flush(&mut self, round: u64);
}

impl<D: differential_dataflow::Data + Clone + 'static> Advance
    for differential_dataflow::input::InputSession<u64, D, isize>
{
    fn advance_and_flush(&mut self, round: u64) {
        self.advance_to(round);
        self.flush();
    }
}

/// The contents as Arrow rows typed like Eddy's view (bigint, text, timestamp, float8).
fn to_batches(rows: HashMap<Row, isize>) -> Vec<RecordBatch> {
    let Some(first) = rows.keys().next().cloned() else {
        return Vec::new();
    };
    let mut columns: Vec<Column> = first
        .iter()
        .map(|v| match v {
            Value::Int(_) => Column::Int(Int64Builder::new()),
            Value::Text(_) => Column::Text(StringBuilder::new()),
            Value::Time(_) => Column::Time(TimestampMicrosecondBuilder::new()),
            Value::Avg(..) | Value::Euros(_) => Column::Float(Float64Builder::new()),
        })
        .collect();
    for (row, n) in rows {
        for _ in 0..n.max(0) {
            for (column, v) in columns.iter_mut().zip(&row) {
                column.push(v);
            }
        }
    }
    let arrays: Vec<ArrayRef> = columns.into_iter().map(Column::finish).collect();
    let schema = Arc::new(Schema::new(
        arrays
            .iter()
            .enumerate()
            .map(|(i, a)| Field::new(format!("c{i}"), a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    vec![RecordBatch::try_new(schema, arrays).unwrap()]
}

enum Column {
    Int(Int64Builder),
    Text(StringBuilder),
    Time(TimestampMicrosecondBuilder),
    Float(Float64Builder),
}

impl Column {
    fn push(&mut self, v: &Value) {
        match (self, v) {
            (Column::Int(b), Value::Int(x)) => b.append_value(*x),
            (Column::Text(b), Value::Text(x)) => b.append_value(x),
            (Column::Time(b), Value::Time(x)) => b.append_value(*x),
            (Column::Float(b), Value::Avg(sum, n)) => b.append_value(*sum as f64 / *n as f64),
            (Column::Float(b), Value::Euros(p)) => b.append_value(0.908 * *p as f64),
            _ => unreachable!("a column of mixed types"),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Column::Int(mut b) => Arc::new(b.finish()),
            Column::Text(mut b) => Arc::new(b.finish()),
            Column::Time(mut b) => Arc::new(b.finish()),
            Column::Float(mut b) => Arc::new(b.finish()),
        }
    }
}
