//! A slot: a table whose rows are whatever batches the engine put in it last.
//!
//! Physical plans are built once per query; for each incoming batch the engine puts
//! the batch in the slot and executes the plan again, so planning cost is paid at
//! start-up, not per batch.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::Result as DfResult;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use std::fmt;
use std::sync::{Arc, Mutex};

/// Shared batches of one slot.
#[derive(Debug, Clone, Default)]
pub struct Slot(Arc<Mutex<Vec<RecordBatch>>>);

impl Slot {
    /// Replaces the slot's content.
    pub fn set(&self, batches: Vec<RecordBatch>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = batches;
    }

    /// Empties the slot.
    pub fn clear(&self) {
        self.set(Vec::new());
    }

    fn get(&self) -> Vec<RecordBatch> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A table provider whose scans read a [`Slot`].
#[derive(Debug)]
pub struct SlotTable {
    schema: SchemaRef,
    slot: Slot,
}

impl SlotTable {
    /// A table of `schema` reading `slot`.
    pub fn new(schema: SchemaRef, slot: Slot) -> Self {
        Self { schema, slot }
    }
}

#[async_trait]
impl TableProvider for SlotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(SlotExec::new(
            self.schema.clone(),
            projection.cloned(),
            self.slot.clone(),
        )?))
    }
}

/// Leaf plan reading a [`Slot`] at execution time.
#[derive(Debug)]
pub struct SlotExec {
    projection: Option<Vec<usize>>,
    slot: Slot,
    props: Arc<PlanProperties>,
}

impl SlotExec {
    /// A leaf over `slot` with `schema` (the slot's batches' schema), projected.
    pub fn new(schema: SchemaRef, projection: Option<Vec<usize>>, slot: Slot) -> DfResult<Self> {
        let out = match &projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => schema,
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(out),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            projection,
            slot,
            props: Arc::new(props),
        })
    }
}

impl DisplayAs for SlotExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SlotExec")
    }
}

impl ExecutionPlan for SlotExec {
    fn name(&self) -> &str {
        "SlotExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let batches = self.slot.get();
        match batches.first() {
            None => Ok(Box::pin(MemoryStream::try_new(
                vec![],
                self.full_schema(),
                None,
            )?)),
            Some(b) => {
                let schema = b.schema();
                Ok(Box::pin(MemoryStream::try_new(
                    batches,
                    schema,
                    self.projection.clone(),
                )?))
            }
        }
    }
}

impl SlotExec {
    fn full_schema(&self) -> SchemaRef {
        // Without batches the projection is applied to nothing: the output schema serves.
        self.props.eq_properties.schema().clone()
    }
}
