//! [`DataflowSpec`]: what planning hands to the runtime — a DAG of operator descriptions in
//! topological order, with DataFusion physical expressions and aggregate functions in it.

use std::fmt::Write as _;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};

use crate::types::ObjectId;

/// Version of how operators lay out their stored state; part of every fingerprint, so a change
/// of layout rebuilds views (from their tables) instead of misreading what an older server
/// stored. 2: top-k rows keyed in sort order.
const STATE_FORMAT: u32 = 2;

/// Index of a node in [`DataflowSpec::nodes`].
pub type NodeId = usize;

/// Where a source node's rows come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Input {
    Table(ObjectId),
    /// Another materialized view's output.
    View(ObjectId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
    /// Left rows with at least one match (`EXISTS`, `IN`).
    LeftSemi,
    /// Left rows with no match (`NOT EXISTS`, `NOT IN` after decorrelation).
    LeftAnti,
}

/// One aggregate call of a hash aggregate.
#[derive(Debug, Clone)]
pub struct AggregateCall {
    pub func: Arc<AggregateFunctionExpr>,
    /// `FILTER (WHERE …)`.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
}

#[derive(Debug, Clone)]
pub struct JoinSpec {
    pub kind: JoinKind,
    /// Equi-join keys: (expression over the left input, expression over the right input).
    pub on: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)>,
    /// Whether NULL keys match each other (set operations) or never match (SQL joins).
    pub nulls_equal: bool,
    /// Residual condition over the concatenated left and right columns.
    pub filter: Option<Arc<dyn PhysicalExpr>>,
    /// `NOT IN (subquery)` (LeftAnti only): no output while the right side has a NULL key,
    /// and left rows with a NULL key only while the right side is empty.
    pub null_aware: bool,
}

#[derive(Debug, Clone)]
pub struct TopKSpec {
    /// Rows are ranked within each partition (empty: one partition).
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    pub order_by: Vec<PhysicalSortExpr>,
    pub offset: usize,
    pub limit: Option<usize>,
    /// Append the row's 1-based rank within its partition as a last column
    /// (`ROW_NUMBER() … <= k`); `None` for `ORDER BY … LIMIT k`.
    pub rank: Option<RankKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankKind {
    RowNumber,
    Rank,
    DenseRank,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Source(Input),
    /// Rows that never change (`VALUES`, `SELECT 1`): emitted once, at the first barrier.
    Constant(Vec<RecordBatch>),
    /// Keeps rows where `filter` is true, then evaluates `exprs` (all columns when `None`).
    FilterProject {
        filter: Option<Arc<dyn PhysicalExpr>>,
        exprs: Option<Vec<Arc<dyn PhysicalExpr>>>,
    },
    /// Concatenation of the inputs (`UNION ALL`).
    Union,
    /// `GROUP BY group_by` with `aggregates`; output columns: group keys, then aggregates.
    /// With no grouping expressions it is a global aggregate: always exactly one row.
    Aggregate {
        group_by: Vec<Arc<dyn PhysicalExpr>>,
        aggregates: Vec<AggregateCall>,
        /// The input never deletes (lets min/max keep only the extreme).
        append_only: bool,
    },
    Join(JoinSpec),
    TopK(TopKSpec),
    /// `EMIT ON WINDOW CLOSE`: the input's changes, held back until the watermark makes them
    /// final (the view's last node).
    EmitOnWindowClose,
    /// Keeps the rows for which every bound holds at the epoch's time (`now()`); rows enter and
    /// leave as time passes.
    TemporalFilter(Vec<TemporalBound>),
    /// `SESSION(t, ts, gap, keys…)`: the input's rows with `window_start`, `window_end` of their
    /// session appended.
    SessionWindow(SessionSpec),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    /// The time column (timestamp or date).
    pub ts: usize,
    /// The gap, in µs: a row less than this after the one before it is in its session.
    pub gap: i64,
    /// Sessions are per value of these columns.
    pub keys: Vec<usize>,
}

/// One condition of a temporal filter: `now()` compared with `expr`, an expression of the row
/// giving a timestamp or date.
#[derive(Debug, Clone)]
pub struct TemporalBound {
    pub expr: Arc<dyn PhysicalExpr>,
    pub kind: TemporalBoundKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemporalBoundKind {
    /// The row is visible once `now() >= expr` (`now() > expr` when not inclusive).
    After { inclusive: bool },
    /// The row is visible while `now() < expr` (`now() <= expr` when inclusive).
    Before { inclusive: bool },
}

impl std::fmt::Display for TemporalBound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.kind {
            TemporalBoundKind::After { inclusive: true } => ">=",
            TemporalBoundKind::After { inclusive: false } => ">",
            TemporalBoundKind::Before { inclusive: true } => "<=",
            TemporalBoundKind::Before { inclusive: false } => "<",
        };
        write!(f, "now() {op} {}", self.expr)
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    pub inputs: Vec<NodeId>,
    /// Output schema.
    pub schema: SchemaRef,
}

/// A dataflow: nodes in topological order (inputs before consumers); the last node's output is
/// the view's contents.
#[derive(Debug, Clone, Default)]
pub struct DataflowSpec {
    pub nodes: Vec<Node>,
    /// The output only ever inserts (an APPEND ONLY table through filters, projections, unions
    /// and inner joins): the view's contents then move to the state store once checkpointed.
    pub append_only: bool,
    /// The tables read that have a watermark, with the index of their event-time column.
    pub table_watermarks: Vec<(ObjectId, usize)>,
}

impl DataflowSpec {
    pub fn add(&mut self, kind: NodeKind, inputs: Vec<NodeId>, schema: SchemaRef) -> NodeId {
        self.nodes.push(Node {
            kind,
            inputs,
            schema,
        });
        self.nodes.len() - 1
    }

    pub fn output(&self) -> NodeId {
        self.nodes.len().saturating_sub(1)
    }

    /// Whether node `id` only ever emits inserts, given which inputs are append-only.
    pub fn is_append_only(&self, id: NodeId, input_append_only: &dyn Fn(Input) -> bool) -> bool {
        let node = &self.nodes[id];
        let inputs_ok = || {
            node.inputs
                .iter()
                .all(|i| self.is_append_only(*i, input_append_only))
        };
        match &node.kind {
            NodeKind::Source(input) => input_append_only(*input),
            // Final rows only: nothing it emitted is ever taken back.
            NodeKind::Constant(_) | NodeKind::EmitOnWindowClose => true,
            NodeKind::FilterProject { .. } | NodeKind::Union => inputs_ok(),
            NodeKind::Join(j) => j.kind == JoinKind::Inner && inputs_ok(),
            // Sessions merge: rows move to another window.
            NodeKind::Aggregate { .. } | NodeKind::TopK(_) | NodeKind::SessionWindow(_) => false,
            // Rows that only enter (no upper bound) are never taken back.
            NodeKind::TemporalFilter(bounds) => {
                bounds
                    .iter()
                    .all(|b| matches!(b.kind, TemporalBoundKind::After { .. }))
                    && inputs_ok()
            }
        }
    }

    /// The inputs (tables and views) the dataflow reads.
    pub fn inputs(&self) -> Vec<Input> {
        let mut out = Vec::new();
        for n in &self.nodes {
            if let NodeKind::Source(i) = n.kind
                && !out.contains(&i)
            {
                out.push(i);
            }
        }
        out
    }

    /// Identifies the dataflow's shape — operators, expressions, schemas — so that state
    /// checkpointed by one dataflow is loaded only into an identical one (the same view planned
    /// again by the same server version), run as as many `shards` (state is split by them).
    /// FNV-1a over the spec's debug form.
    pub fn fingerprint(&self, shards: usize) -> u64 {
        let mut text = format!("state format {STATE_FORMAT}: {:?}", self.nodes);
        if self.append_only {
            // Its stored contents also hold their row count (see `Materialize`).
            text.push_str(", append only");
        }
        if shards > 1 {
            let probe = super::exchange::placement_probe();
            let _ = write!(text, ", {shards} shards placed as {probe}");
        }
        text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// A readable tree of the operators, output first (for `EXPLAIN CREATE MATERIALIZED VIEW`).
    /// `name_of` names tables and views.
    pub fn explain(&self, name_of: &dyn Fn(Input) -> String) -> Vec<String> {
        self.explain_with(name_of, &|_| String::new())
    }

    /// The same, each operator's line followed by what `annotate` says of it (`EXPLAIN
    /// ANALYZE`: its rows and time).
    pub fn explain_with(
        &self,
        name_of: &dyn Fn(Input) -> String,
        annotate: &dyn Fn(NodeId) -> String,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        if !self.nodes.is_empty() {
            self.explain_node(self.output(), 0, name_of, annotate, &mut lines);
        }
        lines
    }

    fn explain_node(
        &self,
        id: NodeId,
        depth: usize,
        name_of: &dyn Fn(Input) -> String,
        annotate: &dyn Fn(NodeId) -> String,
        lines: &mut Vec<String>,
    ) {
        let node = &self.nodes[id];
        lines.push(format!(
            "{}{}{}",
            "  ".repeat(depth),
            self.describe(id, name_of),
            annotate(id)
        ));
        for input in &node.inputs {
            self.explain_node(*input, depth + 1, name_of, annotate, lines);
        }
    }

    /// One operator, as EXPLAIN shows it (`HashAggregate: group_by=[…] aggregates=[…]`).
    pub fn describe(&self, id: NodeId, name_of: &dyn Fn(Input) -> String) -> String {
        let node = &self.nodes[id];
        let mut line = String::new();
        let list = |exprs: &[Arc<dyn PhysicalExpr>]| {
            exprs
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &node.kind {
            NodeKind::Source(input) => {
                let _ = write!(line, "Source: {}", name_of(*input));
            }
            NodeKind::Constant(batches) => {
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                let _ = write!(line, "Constant: {rows} rows");
            }
            NodeKind::FilterProject { filter, exprs } => {
                line.push_str("FilterProject:");
                if let Some(f) = filter {
                    let _ = write!(line, " filter={f}");
                }
                if let Some(e) = exprs {
                    let _ = write!(line, " exprs=[{}]", list(e));
                }
            }
            NodeKind::Union => line.push_str("Union"),
            NodeKind::EmitOnWindowClose => line.push_str("EmitOnWindowClose"),
            NodeKind::SessionWindow(s) => {
                let _ = write!(
                    line,
                    "SessionWindow: ts=#{} gap={}µs keys={:?}",
                    s.ts, s.gap, s.keys
                );
            }
            NodeKind::TemporalFilter(bounds) => {
                let conditions: Vec<String> = bounds.iter().map(|b| b.to_string()).collect();
                let _ = write!(line, "TemporalFilter: {}", conditions.join(" AND "));
            }
            NodeKind::Aggregate {
                group_by,
                aggregates,
                ..
            } => {
                let aggs: Vec<String> = aggregates
                    .iter()
                    .map(|a| a.func.name().to_string())
                    .collect();
                if group_by.is_empty() {
                    let _ = write!(line, "GlobalAggregate: [{}]", aggs.join(", "));
                } else {
                    let _ = write!(
                        line,
                        "HashAggregate: group_by=[{}] aggregates=[{}]",
                        list(group_by),
                        aggs.join(", ")
                    );
                }
            }
            NodeKind::Join(j) => {
                let on: Vec<String> = j.on.iter().map(|(l, r)| format!("{l} = {r}")).collect();
                let _ = write!(line, "Join: {:?} on=[{}]", j.kind, on.join(", "));
                if let Some(f) = &j.filter {
                    let _ = write!(line, " filter={f}");
                }
            }
            NodeKind::TopK(t) => {
                let order: Vec<String> = t.order_by.iter().map(|s| s.to_string()).collect();
                line.push_str("TopK:");
                if !t.partition_by.is_empty() {
                    let _ = write!(line, " partition_by=[{}]", list(&t.partition_by));
                }
                let _ = write!(line, " order_by=[{}]", order.join(", "));
                if let Some(l) = t.limit {
                    let _ = write!(line, " limit={l}");
                }
                if t.offset > 0 {
                    let _ = write!(line, " offset={}", t.offset);
                }
                if let Some(r) = t.rank {
                    let _ = write!(line, " rank={r:?}");
                }
            }
        }
        line
    }
}
