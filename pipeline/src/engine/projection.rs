//! Projections without per-run expression metrics.
//!
//! The engine runs every plan once per batch (`run`), and DataFusion's `ProjectionExec`
//! labels a metric for each of its expressions on every execution: it formats each
//! expression as SQL, twice. On the grading views' long `CASE` and `concat` expressions
//! that was 6% of the engine thread at 200,000 pings/s, for metrics nothing reads.
//! [`LeanProjectionExec`] wraps a planned `ProjectionExec`, keeps its schema, properties
//! and display, and evaluates the same expressions with nothing else.

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::StreamExt;
use std::fmt;
use std::sync::Arc;

/// Replaces every `ProjectionExec` of `plan` with a [`LeanProjectionExec`].
pub fn lean(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let any: &dyn std::any::Any = node.as_ref();
        if any.is::<ProjectionExec>() {
            Ok(Transformed::yes(
                Arc::new(LeanProjectionExec::new(node)?) as Arc<dyn ExecutionPlan>
            ))
        } else {
            Ok(Transformed::no(node))
        }
    })
    .map(|t| t.data)
}

/// A `ProjectionExec` that evaluates its expressions without recording metrics.
#[derive(Debug)]
pub struct LeanProjectionExec {
    /// The `ProjectionExec`: schema, properties, child and display.
    inner: Arc<dyn ExecutionPlan>,
    exprs: Arc<[Arc<dyn PhysicalExpr>]>,
}

impl LeanProjectionExec {
    fn new(inner: Arc<dyn ExecutionPlan>) -> DfResult<Self> {
        let any: &dyn std::any::Any = inner.as_ref();
        let Some(p) = any.downcast_ref::<ProjectionExec>() else {
            return Err(DataFusionError::Internal(format!(
                "LeanProjectionExec wraps a ProjectionExec, not {}",
                inner.name()
            )));
        };
        let exprs = p.expr().iter().map(|e| Arc::clone(&e.expr)).collect();
        Ok(Self { inner, exprs })
    }
}

impl DisplayAs for LeanProjectionExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.fmt_as(t, f)
    }
}

impl ExecutionPlan for LeanProjectionExec {
    fn name(&self) -> &str {
        "LeanProjectionExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.inner.children()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        self.inner.maintains_input_order()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    /// The `ProjectionExec`'s own: with `Keep` (a plan reset) its properties stay the
    /// same `Arc`, so nothing above recomputes its own.
    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let inner = Arc::clone(&self.inner).replace_children(children, options)?;
        Ok(Arc::new(Self {
            inner,
            exprs: Arc::clone(&self.exprs),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let [input] = self.inner.children()[..] else {
            return Err(DataFusionError::Internal(
                "a projection has one input".into(),
            ));
        };
        let input = input.execute(partition, context)?;
        let schema = self.schema();
        let exprs = Arc::clone(&self.exprs);
        let out_schema = Arc::clone(&schema);
        let stream = input.map(move |batch| project(&batch?, &exprs, &schema));
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
    }
}

fn project(
    batch: &RecordBatch,
    exprs: &[Arc<dyn PhysicalExpr>],
    schema: &SchemaRef,
) -> DfResult<RecordBatch> {
    let rows = batch.num_rows();
    let columns = exprs
        .iter()
        .map(|e| e.evaluate(batch).and_then(|v| v.into_array(rows)))
        .collect::<DfResult<Vec<_>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &options,
    )?)
}
