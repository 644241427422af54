//! SESSION windows in views: the SQL that `SESSION(t, ts, gap, keys…)` becomes (window
//! functions; see `sql::windows`) is marked, and in a view's plan the marked part is replaced
//! by one [`SessionWindowNode`], which the dataflow maintains with
//! `dataflow::ops::session::SessionWindow`:
//!
//! ```text
//!  SubqueryAlias "__eddy_session␟gap␟ts␟keys…"          Extension SessionWindowNode
//!    Projection (window_start, window_end)               { ts, gap, keys,
//!      Window … Window …                          ─►        schema: the same }
//!        SubqueryAlias "__eddy_session_input"               SubqueryAlias "__eddy_session_input"
//!          … t                                                … t
//! ```
//!
//! The node keeps the replaced part's schema, so the plan above it is unchanged. It is opaque to
//! DataFusion's optimizer: no filter is pushed into it (a filter on the output must not change
//! which rows form sessions).

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchemaRef, TableReference};
use datafusion::logical_expr::{
    Expr, Extension, LogicalPlan, SubqueryAlias, UserDefinedLogicalNodeCore,
};

use super::windows::{SESSION_INPUT, SESSION_OUTPUT, SESSION_SEPARATOR};
use crate::error::Result;

/// See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionWindowNode {
    pub input: LogicalPlan,
    pub schema: DFSchemaRef,
    /// The time column (an index into the input's columns).
    pub ts: usize,
    /// In µs.
    pub gap: i64,
    /// Key columns (indices into the input's columns).
    pub keys: Vec<usize>,
}

impl PartialOrd for SessionWindowNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match (self.ts, self.gap, &self.keys).cmp(&(other.ts, other.gap, &other.keys)) {
            Ordering::Equal => self.input.partial_cmp(&other.input),
            o => Some(o),
        }
    }
}

impl UserDefinedLogicalNodeCore for SessionWindowNode {
    fn name(&self) -> &str {
        "SessionWindow"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SessionWindow: ts=#{} gap={}µs keys={:?}",
            self.ts, self.gap, self.keys
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> datafusion::error::Result<Self> {
        let input = inputs.pop().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("SessionWindow without an input".into())
        })?;
        Ok(SessionWindowNode {
            input,
            ..self.clone()
        })
    }
}

/// Replaces every marked SESSION window of `plan` by a [`SessionWindowNode`].
pub fn replace_session_windows(plan: LogicalPlan) -> Result<LogicalPlan> {
    let replaced = plan.transform_down(|node| {
        let LogicalPlan::SubqueryAlias(alias) = &node else {
            return Ok(Transformed::no(node));
        };
        let Some(params) = marker_params(&alias.alias) else {
            return Ok(Transformed::no(node));
        };
        let mut input = None;
        alias.input.apply(|n| {
            if let LogicalPlan::SubqueryAlias(a) = n
                && a.alias.table() == SESSION_INPUT
            {
                input = Some(n.clone());
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        let Some(input) = input else {
            return Ok(Transformed::no(node));
        };
        let index = |name: &str| {
            input
                .schema()
                .fields()
                .iter()
                .position(|f| f.name() == name)
                .ok_or_else(|| {
                    datafusion::error::DataFusionError::Plan(format!(
                        "column \"{name}\" of SESSION does not exist"
                    ))
                })
        };
        let ts = index(&params.ts)?;
        let keys = params
            .keys
            .iter()
            .map(|k| index(k))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let session = LogicalPlan::Extension(Extension {
            node: Arc::new(SessionWindowNode {
                input,
                schema: alias.input.schema().clone(),
                ts,
                gap: params.gap,
                keys,
            }),
        });
        let aliased = SubqueryAlias::try_new(Arc::new(session), alias.alias.clone())?;
        Ok(Transformed::new(
            LogicalPlan::SubqueryAlias(aliased),
            true,
            TreeNodeRecursion::Jump,
        ))
    })?;
    Ok(replaced.data)
}

struct MarkerParams {
    gap: i64,
    ts: String,
    keys: Vec<String>,
}

fn marker_params(alias: &TableReference) -> Option<MarkerParams> {
    let mut parts = alias.table().split(SESSION_SEPARATOR);
    if parts.next()? != SESSION_OUTPUT {
        return None;
    }
    let gap = parts.next()?.parse().ok()?;
    let ts = parts.next()?.to_string();
    Some(MarkerParams {
        gap,
        ts,
        keys: parts.map(str::to_string).collect(),
    })
}
