//! Lowering a view query into a [`DataflowSpec`].
//!
//! ```text
//!  SQL ──SqlToRel──► LogicalPlan ──analyzer (types)──► curated optimizer rules ──► lower() ──► spec
//!                                                      (decorrelation, pushdown,      │
//!                                                       constant folding)             └─ 0A000 naming
//!                                                                                       what is missing
//! ```
//!
//! The optimizer rules are a curated subset of DataFusion's: those that rewrite the query into
//! an equivalent one made of operators Eddy maintains incrementally (subqueries into joins,
//! filters pushed towards sources, unused columns pruned, constants folded). Rules that only make
//! sense for one-shot batch execution (limit pushdown into scans, …) are left out. Expressions
//! become DataFusion physical expressions, so views get DataFusion's whole scalar library.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::compute::concat;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, NullEquality, ScalarValue, TableReference};
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    Distinct, Expr, FetchType, JoinType, LogicalPlan, Operator, SkipType, SortExpr, Volatility,
};
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr, create_physical_expr};

use crate::dataflow::spec::{
    AggregateCall, DataflowSpec, Input, JoinKind, JoinSpec, NodeId, NodeKind, RankKind,
    SessionSpec, TemporalBound, TopKSpec,
};
use crate::error::Result;
use crate::unsupported;

/// What a table reference of the plan reads.
pub struct Resolved {
    pub input: Input,
    pub append_only: bool,
    /// A table's event-time column (`WATERMARK FOR`).
    pub watermark_column: Option<usize>,
}

/// Resolves a table reference of the plan to a table or view.
pub type Resolver<'a> = &'a dyn Fn(&TableReference) -> Option<Resolved>;

/// Runs the analyzer's type coercion and the curated optimizer rules over a planned query.
pub fn optimize(plan: LogicalPlan, state: &SessionState) -> Result<LogicalPlan> {
    reject_time_varying(&plan)?;
    let plan = super::session::replace_session_windows(plan)?;
    let plan = state
        .analyzer()
        .execute_and_check(plan, state.config_options(), |_, _| {})?;
    use datafusion::optimizer::*;
    let rules: Vec<Arc<dyn OptimizerRule + Send + Sync>> = vec![
        Arc::new(rewrite_set_comparison::RewriteSetComparison::new()),
        Arc::new(optimize_unions::OptimizeUnions::new()),
        Arc::new(simplify_expressions::SimplifyExpressions::new()),
        Arc::new(replace_distinct_aggregate::ReplaceDistinctWithAggregate::new()),
        Arc::new(decorrelate_predicate_subquery::DecorrelatePredicateSubquery::new()),
        Arc::new(scalar_subquery_to_join::ScalarSubqueryToJoin::new()),
        Arc::new(decorrelate_lateral_join::DecorrelateLateralJoin::new()),
        Arc::new(extract_equijoin_predicate::ExtractEquijoinPredicate::new()),
        Arc::new(eliminate_duplicated_expr::EliminateDuplicatedExpr::new()),
        Arc::new(eliminate_filter::EliminateFilter::new()),
        Arc::new(eliminate_cross_join::EliminateCrossJoin::new()),
        Arc::new(filter_null_join_keys::FilterNullJoinKeys::default()),
        Arc::new(eliminate_outer_join::EliminateOuterJoin::new()),
        Arc::new(push_down_filter::PushDownFilter::new()),
        Arc::new(optimize_projections::OptimizeProjections::new()),
    ];
    let config = ViewOptimizerConfig {
        state,
        options: {
            let mut options = (**state.config_options()).clone();
            options.optimizer.filter_null_join_keys = true;
            Arc::new(options)
        },
    };
    // A panic inside DataFusion's optimizer must not end the session.
    let plan = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Optimizer::with_rules(rules).optimize(plan, &config, |_, _| {})
    }))
    .map_err(|_| crate::internal!("DataFusion's optimizer panicked on this view query"))??;
    join_uncorrelated_subqueries(plan)
}

/// An uncorrelated scalar subquery (`(SELECT max(x) FROM t)`) in a SELECT list or WHERE clause
/// becomes a left join with the subquery's single row, so the dataflow maintains it like any
/// other input: when the subquery's value changes, every row that uses it is updated.
fn join_uncorrelated_subqueries(plan: LogicalPlan) -> Result<LogicalPlan> {
    use datafusion::common::tree_node::Transformed;
    use datafusion::logical_expr::{LogicalPlanBuilder, Projection, col};

    fn extract(
        exprs: Vec<Expr>,
        mut input: LogicalPlan,
        counter: &mut usize,
    ) -> datafusion::error::Result<(Vec<Expr>, LogicalPlan, bool)> {
        let mut changed = false;
        let mut out = Vec::with_capacity(exprs.len());
        for e in exprs {
            let t = e.transform_up(|e| match e {
                Expr::ScalarSubquery(sq) if sq.outer_ref_columns.is_empty() => {
                    *counter += 1;
                    let alias = format!("__eddy_subquery_{counter}");
                    let sub = LogicalPlanBuilder::from(sq.subquery.as_ref().clone())
                        .alias(alias.as_str())?
                        .build()?;
                    let (qualifier, field) = sub.schema().qualified_field(0);
                    let column = Expr::Column(datafusion::common::Column::new(
                        qualifier.cloned(),
                        field.name(),
                    ));
                    let joined = LogicalPlanBuilder::from(std::mem::replace(
                        &mut input,
                        LogicalPlan::EmptyRelation(datafusion::logical_expr::EmptyRelation {
                            produce_one_row: false,
                            schema: Arc::new(DFSchema::empty()),
                        }),
                    ))
                    .join_on(sub, JoinType::Left, [datafusion::logical_expr::lit(true)])?
                    .build()?;
                    input = joined;
                    Ok(Transformed::yes(column))
                }
                other => Ok(Transformed::no(other)),
            })?;
            changed |= t.transformed;
            out.push(t.data);
        }
        Ok((out, input, changed))
    }

    let mut counter = 0usize;
    let plan = plan.transform_up(|node| match node {
        LogicalPlan::Projection(p) => {
            let original = LogicalPlan::Projection(p.clone());
            let (exprs, input, changed) =
                extract(p.expr.clone(), p.input.as_ref().clone(), &mut counter)?;
            if !changed {
                return Ok(Transformed::no(original));
            }
            let projected = Projection::try_new(exprs, Arc::new(input))?;
            Ok(Transformed::yes(LogicalPlan::Projection(projected)))
        }
        LogicalPlan::Filter(f) => {
            let original = LogicalPlan::Filter(f.clone());
            let columns: Vec<Expr> = f.input.schema().columns().into_iter().map(col).collect();
            let (mut exprs, input, changed) = extract(
                vec![f.predicate.clone()],
                f.input.as_ref().clone(),
                &mut counter,
            )?;
            if !changed {
                return Ok(Transformed::no(original));
            }
            let filtered = LogicalPlanBuilder::from(input)
                .filter(exprs.remove(0))?
                .project(columns)?
                .build()?;
            Ok(Transformed::yes(filtered))
        }
        other => Ok(Transformed::no(other)),
    })?;
    Ok(plan.data)
}

/// The session's function registry and options, but no query start time: time-dependent
/// functions must never be folded into constants in a view.
struct ViewOptimizerConfig<'a> {
    state: &'a SessionState,
    options: Arc<datafusion::config::ConfigOptions>,
}

impl datafusion::optimizer::OptimizerConfig for ViewOptimizerConfig<'_> {
    fn query_execution_start_time(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        None
    }

    fn alias_generator(&self) -> &Arc<datafusion::common::alias::AliasGenerator> {
        &self.state.execution_props().alias_generator
    }

    fn options(&self) -> Arc<datafusion::config::ConfigOptions> {
        self.options.clone()
    }

    fn function_registry(&self) -> Option<&dyn datafusion::execution::FunctionRegistry> {
        Some(self.state)
    }
}

/// `random()`, `current_date` and other functions whose value is not fixed by their arguments
/// cannot be maintained by replaying changes. (`now()` can, in temporal filters: see
/// [`super::temporal`].)
fn reject_time_varying(plan: &LogicalPlan) -> Result<()> {
    let mut found: Option<String> = None;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && f.func.signature().volatility != Volatility::Immutable
                    && !super::temporal::is_now(e)
                {
                    found = Some(f.func.name().to_string());
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(if found.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    match found {
        Some(name) => Err(unsupported!(
            "function {name}() in a materialized view: its result changes over time or between calls"
        )),
        None => Ok(()),
    }
}

/// Lowers an optimized plan into a dataflow.
pub fn lower(plan: &LogicalPlan, resolve: Resolver<'_>) -> Result<DataflowSpec> {
    let props = ExecutionProps::new();
    let mut lowering = Lowering {
        spec: DataflowSpec::default(),
        resolve,
        props: &props,
        append_only: Vec::new(),
    };
    let output = lowering.lower(plan)?;
    let append_only = lowering
        .spec
        .is_append_only(output, &|i| lowering.append_only.contains(&i));
    lowering.spec.append_only = append_only;
    Ok(lowering.spec)
}

struct Lowering<'a> {
    spec: DataflowSpec,
    resolve: Resolver<'a>,
    props: &'a ExecutionProps,
    /// Inputs that are APPEND ONLY tables.
    append_only: Vec<Input>,
}

/// The Arrow schema of a plan node with every field nullable: operators never rely on
/// non-nullability, and a NULL produced where the planner assumed none must not fail a batch.
fn arrow_schema(schema: &DFSchema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ))
}

impl Lowering<'_> {
    /// A projection node: `exprs` (over `input_schema`) evaluated on the rows of `input`.
    fn add_projection(
        &mut self,
        input: NodeId,
        exprs: &[Expr],
        input_schema: &DFSchema,
        schema: SchemaRef,
    ) -> Result<NodeId> {
        let exprs = exprs
            .iter()
            .map(|e| self.phys(e, input_schema))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.spec.add(
            NodeKind::FilterProject {
                filter: None,
                exprs: Some(exprs),
            },
            vec![input],
            schema,
        ))
    }

    /// The nodes keeping the rows of `input` for which all of `conjuncts` are true: a filter,
    /// then a temporal filter for those that compare with `now()`.
    fn add_conditions(
        &mut self,
        input: NodeId,
        conjuncts: &[&Expr],
        input_schema: &DFSchema,
        schema: SchemaRef,
    ) -> Result<NodeId> {
        let (plain, temporal) = super::temporal::split(conjuncts, input_schema)?;
        let mut node = input;
        if let Some(predicate) = plain.into_iter().reduce(Expr::and) {
            node = self.add_filter(node, &predicate, input_schema, schema.clone())?;
        }
        if !temporal.is_empty() {
            let bounds = temporal
                .iter()
                .map(|(e, kind)| {
                    Ok(TemporalBound {
                        expr: self.phys(e, input_schema)?,
                        kind: *kind,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            node = self
                .spec
                .add(NodeKind::TemporalFilter(bounds), vec![node], schema);
        }
        Ok(node)
    }

    /// A filter node: the rows of `input` for which `predicate` is true.
    fn add_filter(
        &mut self,
        input: NodeId,
        predicate: &Expr,
        input_schema: &DFSchema,
        schema: SchemaRef,
    ) -> Result<NodeId> {
        let filter = self.phys(predicate, input_schema)?;
        Ok(self.spec.add(
            NodeKind::FilterProject {
                filter: Some(filter),
                exprs: None,
            },
            vec![input],
            schema,
        ))
    }

    fn sort_exprs(&self, sorts: &[SortExpr], schema: &DFSchema) -> Result<Vec<PhysicalSortExpr>> {
        sorts
            .iter()
            .map(|s| {
                Ok(PhysicalSortExpr {
                    expr: self.phys(&s.expr, schema)?,
                    options: SortOptions {
                        descending: !s.asc,
                        nulls_first: s.nulls_first,
                    },
                })
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn add_topk(
        &mut self,
        input: NodeId,
        partition_by: Vec<Arc<dyn PhysicalExpr>>,
        order_by: Vec<PhysicalSortExpr>,
        offset: usize,
        limit: Option<usize>,
        rank: Option<RankKind>,
        schema: SchemaRef,
    ) -> NodeId {
        self.spec.add(
            NodeKind::TopK(TopKSpec {
                partition_by,
                order_by,
                offset,
                limit,
                rank,
            }),
            vec![input],
            schema,
        )
    }

    /// `LIMIT k OFFSET n` over `ORDER BY` (possibly under projections): a top-k below the
    /// projections. Without ORDER BY any k rows would do; Eddy keeps the first k by all columns.
    fn lower_limit(&mut self, l: &datafusion::logical_expr::Limit) -> Result<NodeId> {
        let offset = match l.get_skip_type()? {
            SkipType::Literal(n) => n,
            SkipType::UnsupportedExpr => return Err(unsupported!("a non-constant OFFSET")),
        };
        let limit = match l.get_fetch_type()? {
            FetchType::Literal(n) => n,
            FetchType::UnsupportedExpr => return Err(unsupported!("a non-constant LIMIT")),
        };
        let mut projections = Vec::new();
        let mut inner = l.input.as_ref();
        loop {
            match inner {
                LogicalPlan::Projection(p) => {
                    projections.push(p);
                    inner = p.input.as_ref();
                }
                LogicalPlan::SubqueryAlias(a) => inner = a.input.as_ref(),
                _ => break,
            }
        }
        let mut node = match inner {
            LogicalPlan::Sort(s) => {
                let input = self.lower(&s.input)?;
                let order_by = self.sort_exprs(&s.expr, s.input.schema())?;
                let limit = match (limit, s.fetch) {
                    (Some(a), Some(b)) => Some(a.min(b.saturating_sub(offset))),
                    (a, None) => a,
                    (None, Some(b)) => Some(b.saturating_sub(offset)),
                };
                self.add_topk(
                    input,
                    vec![],
                    order_by,
                    offset,
                    limit,
                    None,
                    arrow_schema(s.input.schema()),
                )
            }
            other => {
                let input = self.lower(other)?;
                self.add_topk(
                    input,
                    vec![],
                    vec![],
                    offset,
                    limit,
                    None,
                    arrow_schema(other.schema()),
                )
            }
        };
        for p in projections.into_iter().rev() {
            node = self.add_projection(node, &p.expr, p.input.schema(), arrow_schema(&p.schema))?;
        }
        Ok(node)
    }

    /// `Filter(rank <= k) ← Window(ROW_NUMBER()|RANK()|DENSE_RANK() OVER (…))`: a top-k per
    /// partition. `None` when the plan does not have that shape.
    fn lower_ranked(
        &mut self,
        predicate: &Expr,
        w: &datafusion::logical_expr::Window,
    ) -> Result<Option<NodeId>> {
        let [expr] = w.window_expr.as_slice() else {
            return Ok(None);
        };
        let Expr::WindowFunction(func) = expr.clone().unalias() else {
            return Ok(None);
        };
        let rank = match func.fun.name() {
            "row_number" => RankKind::RowNumber,
            "rank" => RankKind::Rank,
            "dense_rank" => RankKind::DenseRank,
            _ => return Ok(None),
        };
        if !func.params.args.is_empty() || func.params.filter.is_some() {
            return Ok(None);
        }
        let rank_index = w.input.schema().fields().len();
        let rank_column = w.schema.qualified_field(rank_index);
        let is_rank = |e: &Expr| {
            matches!(e, Expr::Column(c) if c.name == *rank_column.1.name()
                && c.relation.as_ref() == rank_column.0)
        };
        let literal = |e: &Expr| -> Option<i64> {
            match e {
                Expr::Literal(v, _) => v
                    .cast_to(&datafusion::arrow::datatypes::DataType::Int64)
                    .ok()
                    .and_then(|v| match v {
                        ScalarValue::Int64(Some(n)) => Some(n),
                        _ => None,
                    }),
                _ => None,
            }
        };
        let mut bound: Option<i64> = None;
        let mut rest = Vec::new();
        for conjunct in split_conjunction(predicate) {
            let found = match conjunct {
                Expr::BinaryExpr(b) if is_rank(&b.left) => {
                    literal(&b.right).and_then(|k| match b.op {
                        Operator::LtEq => Some(k),
                        Operator::Lt => Some(k - 1),
                        Operator::Eq if k == 1 => Some(1),
                        _ => None,
                    })
                }
                Expr::BinaryExpr(b) if is_rank(&b.right) => {
                    literal(&b.left).and_then(|k| match b.op {
                        Operator::GtEq => Some(k),
                        Operator::Gt => Some(k - 1),
                        Operator::Eq if k == 1 => Some(1),
                        _ => None,
                    })
                }
                _ => None,
            };
            match found {
                Some(k) => bound = Some(bound.map_or(k, |b| b.min(k))),
                None => rest.push(conjunct.clone()),
            }
        }
        let Some(k) = bound else {
            return Ok(None);
        };
        let input = self.lower(&w.input)?;
        let input_schema = w.input.schema();
        let partition_by = func
            .params
            .partition_by
            .iter()
            .map(|e| self.phys(e, input_schema))
            .collect::<Result<Vec<_>>>()?;
        let order_by = self.sort_exprs(&func.params.order_by, input_schema)?;
        let schema = arrow_schema(&w.schema);
        let mut node = self.add_topk(
            input,
            partition_by,
            order_by,
            0,
            Some(k.max(0) as usize),
            Some(rank),
            schema.clone(),
        );
        if let Some(rest) = rest.into_iter().reduce(Expr::and) {
            node = self.add_filter(node, &rest, &w.schema, schema)?;
        }
        Ok(Some(node))
    }

    fn phys(&self, e: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        let has_subquery = e.exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
            ))
        })?;
        if has_subquery {
            return Err(unsupported!(
                "a subquery here in a materialized view (subqueries in the SELECT list and WHERE are supported): {e}"
            ));
        }
        if super::temporal::contains_now(e) {
            return Err(super::temporal::unsupported_now(e));
        }
        Ok(create_physical_expr(
            e,
            schema,
            self.props,
            &PhysicalPlanningContext::default(),
        )?)
    }

    fn lower(&mut self, plan: &LogicalPlan) -> Result<NodeId> {
        let schema = arrow_schema(plan.schema());
        match plan {
            LogicalPlan::TableScan(scan) => {
                if scan.fetch.is_some() {
                    return Err(unsupported!("LIMIT pushed into a scan"));
                }
                let Resolved {
                    input,
                    append_only,
                    watermark_column,
                } = (self.resolve)(&scan.table_name).ok_or_else(|| {
                    unsupported!(
                        "reading \"{}\" in a materialized view (only tables and materialized views can be read)",
                        scan.table_name
                    )
                })?;
                let source_schema = Arc::new(Schema::new(
                    scan.source
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| Field::new(f.name(), f.data_type().clone(), true))
                        .collect::<Vec<_>>(),
                ));
                if append_only && !self.append_only.contains(&input) {
                    self.append_only.push(input);
                }
                if let (Input::Table(id), Some(column)) = (input, watermark_column)
                    && !self.spec.table_watermarks.contains(&(id, column))
                {
                    self.spec.table_watermarks.push((id, column));
                }
                let mut node =
                    self.spec
                        .add(NodeKind::Source(input), vec![], source_schema.clone());
                let full = DFSchema::try_from_qualified_schema(
                    scan.table_name.clone(),
                    &scan.source.schema(),
                )?;
                if !scan.filters.is_empty() {
                    let conjuncts: Vec<&Expr> = scan.filters.iter().collect();
                    node = self.add_conditions(node, &conjuncts, &full, source_schema)?;
                }
                if let Some(projection) = &scan.projection {
                    let exprs = projection
                        .iter()
                        .map(|i| {
                            Arc::new(datafusion::physical_expr::expressions::Column::new(
                                full.field(*i).name(),
                                *i,
                            )) as Arc<dyn PhysicalExpr>
                        })
                        .collect();
                    node = self.spec.add(
                        NodeKind::FilterProject {
                            filter: None,
                            exprs: Some(exprs),
                        },
                        vec![node],
                        schema,
                    );
                }
                Ok(node)
            }
            LogicalPlan::Projection(p) => {
                let input = self.lower(&p.input)?;
                self.add_projection(input, &p.expr, p.input.schema(), schema)
            }
            LogicalPlan::Filter(f) => {
                // A rank filter over a window, possibly with a column-pruning projection between.
                let (window, pruning) = match f.input.as_ref() {
                    LogicalPlan::Window(w) => (Some(w), None),
                    LogicalPlan::Projection(p)
                        if p.expr.iter().all(|e| matches!(e, Expr::Column(_))) =>
                    {
                        match p.input.as_ref() {
                            LogicalPlan::Window(w) => (Some(w), Some(p)),
                            _ => (None, None),
                        }
                    }
                    _ => (None, None),
                };
                if let Some(w) = window
                    && let Some(mut node) = self.lower_ranked(&f.predicate, w)?
                {
                    if let Some(p) = pruning {
                        node = self.add_projection(node, &p.expr, &w.schema, schema)?;
                    }
                    return Ok(node);
                }
                let input = self.lower(&f.input)?;
                if !super::temporal::contains_now(&f.predicate) {
                    return self.add_filter(input, &f.predicate, f.input.schema(), schema);
                }
                let conjuncts = split_conjunction(&f.predicate);
                self.add_conditions(input, &conjuncts, f.input.schema(), schema)
            }
            LogicalPlan::SubqueryAlias(a) => self.lower(&a.input),
            LogicalPlan::Extension(e) => {
                let Some(session) = e
                    .node
                    .as_any()
                    .downcast_ref::<super::session::SessionWindowNode>()
                else {
                    return Err(unsupported!("{} in a materialized view", e.node.name()));
                };
                let input = self.lower(&session.input)?;
                Ok(self.spec.add(
                    NodeKind::SessionWindow(SessionSpec {
                        ts: session.ts,
                        gap: session.gap,
                        keys: session.keys.clone(),
                    }),
                    vec![input],
                    schema,
                ))
            }
            LogicalPlan::Aggregate(a) => {
                if a.group_expr
                    .iter()
                    .any(|e| matches!(e, Expr::GroupingSet(_)))
                {
                    return Err(unsupported!(
                        "GROUPING SETS, CUBE and ROLLUP in a materialized view"
                    ));
                }
                let input = self.lower(&a.input)?;
                let input_schema = a.input.schema();
                let group_by = a
                    .group_expr
                    .iter()
                    .map(|e| self.phys(e, input_schema))
                    .collect::<Result<Vec<_>>>()?;
                let physical_input = input_schema.as_arrow();
                let planning = PhysicalPlanningContext::default();
                let aggregates = a
                    .aggr_expr
                    .iter()
                    .map(|e| {
                        let lowered = LoweredAggregateBuilder::new(
                            e,
                            input_schema,
                            physical_input,
                            self.props,
                            &planning,
                        )
                        .build()?;
                        Ok(AggregateCall {
                            func: lowered.aggregate,
                            filter: lowered.filter,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let append_only = self
                    .spec
                    .is_append_only(input, &|i| self.append_only.contains(&i));
                Ok(self.spec.add(
                    NodeKind::Aggregate {
                        group_by,
                        aggregates,
                        append_only,
                    },
                    vec![input],
                    schema,
                ))
            }
            LogicalPlan::Distinct(Distinct::All(input_plan)) => {
                let input = self.lower(input_plan)?;
                let group_by = (0..input_plan.schema().fields().len())
                    .map(|i| {
                        Arc::new(datafusion::physical_expr::expressions::Column::new(
                            input_plan.schema().field(i).name(),
                            i,
                        )) as Arc<dyn PhysicalExpr>
                    })
                    .collect();
                Ok(self.spec.add(
                    NodeKind::Aggregate {
                        group_by,
                        aggregates: vec![],
                        append_only: false,
                    },
                    vec![input],
                    schema,
                ))
            }
            LogicalPlan::Distinct(Distinct::On(_)) => {
                Err(unsupported!("DISTINCT ON in a materialized view"))
            }
            LogicalPlan::Union(u) => {
                let inputs = u
                    .inputs
                    .iter()
                    .map(|i| self.lower(i))
                    .collect::<Result<Vec<_>>>()?;
                Ok(self.spec.add(NodeKind::Union, inputs, schema))
            }
            LogicalPlan::Sort(s) if s.fetch.is_none() => {
                // A view is a set: ORDER BY without LIMIT does not change its contents.
                self.lower(&s.input)
            }
            LogicalPlan::EmptyRelation(e) => {
                let rows = if e.produce_one_row { 1 } else { 0 };
                let batch = RecordBatch::try_new_with_options(
                    schema.clone(),
                    vec![],
                    &RecordBatchOptions::new().with_row_count(Some(rows)),
                )?;
                Ok(self
                    .spec
                    .add(NodeKind::Constant(vec![batch]), vec![], schema))
            }
            LogicalPlan::Values(v) => {
                let one_row = RecordBatch::try_new_with_options(
                    Arc::new(Schema::empty()),
                    vec![],
                    &RecordBatchOptions::new().with_row_count(Some(1)),
                )?;
                let empty = DFSchema::empty();
                let mut columns: Vec<ArrayRef> = Vec::new();
                for col in 0..schema.fields().len() {
                    let parts = v
                        .values
                        .iter()
                        .map(|row| {
                            let e = self.phys(&row[col], &empty)?;
                            let a = e.evaluate(&one_row)?.into_array(1)?;
                            let target = schema.field(col).data_type();
                            Ok(if a.data_type() == target {
                                a
                            } else {
                                datafusion::arrow::compute::cast(&a, target)?
                            })
                        })
                        .collect::<Result<Vec<ArrayRef>>>()?;
                    let refs: Vec<&dyn datafusion::arrow::array::Array> =
                        parts.iter().map(|a| a.as_ref()).collect();
                    columns.push(concat(&refs)?);
                }
                let batch = RecordBatch::try_new_with_options(
                    schema.clone(),
                    columns,
                    &RecordBatchOptions::new().with_row_count(Some(v.values.len())),
                )?;
                Ok(self
                    .spec
                    .add(NodeKind::Constant(vec![batch]), vec![], schema))
            }
            LogicalPlan::Join(j) => {
                if j.null_aware && (j.filter.is_some() || j.on.len() != 1) {
                    return Err(unsupported!(
                        "this NOT IN (subquery) in a materialized view (correlated or multi-column); NOT EXISTS works"
                    ));
                }
                let (kind, swap) = match j.join_type {
                    JoinType::Inner => (JoinKind::Inner, false),
                    JoinType::Left => (JoinKind::Left, false),
                    JoinType::Right => (JoinKind::Right, false),
                    JoinType::Full => (JoinKind::Full, false),
                    JoinType::LeftSemi => (JoinKind::LeftSemi, false),
                    JoinType::LeftAnti => (JoinKind::LeftAnti, false),
                    JoinType::RightSemi => (JoinKind::LeftSemi, true),
                    JoinType::RightAnti => (JoinKind::LeftAnti, true),
                    other => {
                        return Err(unsupported!("{other} join in a materialized view"));
                    }
                };
                let (lp, rp) = if swap {
                    (&j.right, &j.left)
                } else {
                    (&j.left, &j.right)
                };
                let left = self.lower(lp)?;
                let right = self.lower(rp)?;
                let on =
                    j.on.iter()
                        .map(|(l, r)| {
                            let (l, r) = if swap { (r, l) } else { (l, r) };
                            Ok((self.phys(l, lp.schema())?, self.phys(r, rp.schema())?))
                        })
                        .collect::<Result<Vec<_>>>()?;
                let pair = lp.schema().join(rp.schema())?;
                let filter = j.filter.as_ref().map(|f| self.phys(f, &pair)).transpose()?;
                let spec = JoinSpec {
                    kind,
                    on,
                    nulls_equal: j.null_equality == NullEquality::NullEqualsNull,
                    filter,
                    null_aware: j.null_aware,
                };
                Ok(self
                    .spec
                    .add(NodeKind::Join(spec), vec![left, right], schema))
            }
            LogicalPlan::Sort(s) => {
                // ORDER BY … with a fetch pushed into the sort.
                let input = self.lower(&s.input)?;
                let order_by = self.sort_exprs(&s.expr, s.input.schema())?;
                Ok(self.add_topk(input, vec![], order_by, 0, s.fetch, None, schema))
            }
            LogicalPlan::Limit(l) => self.lower_limit(l),
            LogicalPlan::Window(_) => Err(unsupported!(
                "window functions in a materialized view, except ROW_NUMBER(), RANK() and DENSE_RANK() filtered with <= k (top-k per partition)"
            )),
            LogicalPlan::Subquery(_) => Err(unsupported!(
                "this correlated subquery in a materialized view (it could not be decorrelated)"
            )),
            other => Err(unsupported!(
                "{} in a materialized view",
                other
                    .display()
                    .to_string()
                    .split(':')
                    .next()
                    .unwrap_or("this plan")
            )),
        }
    }
}
