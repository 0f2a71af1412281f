//! The Redis lookup join (design decision 3) as a DataFusion plan node.
//!
//! `SELECT ... FROM s LEFT JOIN leases l ON l.key = concat('lw:lease:', s.device_id)`,
//! where `leases` is a `connector = 'redis'` table, is rewritten before optimisation into a
//! [`LookupJoinNode`] over the left input. Its physical form, [`LookupJoinExec`], takes each
//! input batch, evaluates the key expression, asks [`RedisLookup`] for the state of the
//! batch's distinct keys (bounded TTL cache, then one `MGET` for the misses) and appends the
//! state columns: the key is the table's primary key, so the join is a gather, and a row
//! with no state keeps nulls (`LEFT JOIN`) or is dropped (`INNER JOIN`).
//!
//! While Redis is unreachable the batch is held and the lookup retried with backoff
//! (counted in [`crate::lookup::LookupStats`]); pings are never dropped for it. Because the
//! node sits wherever the join is in the query, lookups work in per-ping queries, before a
//! window (in the pre-window plan) and after one (on emitted windows).

use crate::lookup::{LookupError, RedisLookup};
use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::compute::{cast, filter_record_batch, nullif};
use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchemaRef, DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Extension, JoinType, LogicalPlan, Operator, UserDefinedLogicalNode,
    UserDefinedLogicalNodeCore,
};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::StreamExt;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A declared lookup table, as the planner needs it.
#[derive(Debug, Clone)]
pub struct LookupTable {
    /// Its `METADATA FROM 'key'` column.
    pub key_column: String,
    /// The declared columns in order (key included).
    pub columns: Vec<String>,
    /// The connection, cache and counters.
    pub lookup: Arc<RedisLookup>,
}

/// Lookup tables by name.
pub type LookupTables = Arc<HashMap<String, LookupTable>>;

/// `input ⋈ table ON table.key = key` (the logical node).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LookupJoinNode {
    input: LogicalPlan,
    key: Expr,
    table: String,
    inner: bool,
    schema: DFSchemaRef,
}

impl PartialOrd for LookupJoinNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.table.cmp(&other.table) {
            Ordering::Equal => {}
            o => return Some(o),
        }
        match self.inner.cmp(&other.inner) {
            Ordering::Equal => {}
            o => return Some(o),
        }
        match self.key.partial_cmp(&other.key) {
            Some(Ordering::Equal) => {}
            o => return o,
        }
        self.input.partial_cmp(&other.input)
    }
}

impl UserDefinedLogicalNodeCore for LookupJoinNode {
    fn name(&self) -> &str {
        "LookupJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![self.key.clone()]
    }

    fn prevent_predicate_push_down_columns(&self) -> HashSet<String> {
        // Filters on the input's columns may run before the lookup (fewer keys to fetch);
        // filters on the looked-up columns must stay above it.
        let left = self.input.schema();
        self.schema
            .fields()
            .iter()
            .skip(left.fields().len())
            .map(|f| f.name().clone())
            .collect()
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "LookupJoin: {} {} ON key = {}",
            if self.inner { "INNER" } else { "LEFT" },
            self.table,
            self.key
        )
    }

    fn with_exprs_and_inputs(
        &self,
        mut exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        let (Some(key), Some(input)) = (exprs.pop(), inputs.pop()) else {
            return Err(DataFusionError::Internal(
                "LookupJoin takes one expression and one input".into(),
            ));
        };
        Ok(Self {
            input,
            key,
            table: self.table.clone(),
            inner: self.inner,
            schema: Arc::clone(&self.schema),
        })
    }
}

/// The lookup table a join side scans, if it is one (`t` or `t AS alias`).
fn lookup_scan<'a>(
    plan: &'a LogicalPlan,
    tables: &HashMap<String, LookupTable>,
) -> Option<&'a str> {
    match plan {
        LogicalPlan::TableScan(t) if tables.contains_key(t.table_name.table()) => {
            Some(t.table_name.table())
        }
        LogicalPlan::SubqueryAlias(a) => lookup_scan(&a.input, tables),
        _ => None,
    }
}

/// Why a join over a lookup table cannot run, for the start-up error.
#[derive(Debug)]
pub struct Unsupported {
    /// The construct.
    pub construct: String,
    /// What to do instead.
    pub message: String,
}

/// Replaces every join whose right side is a lookup table with a [`LookupJoinNode`].
pub fn rewrite(
    plan: LogicalPlan,
    tables: &HashMap<String, LookupTable>,
) -> Result<LogicalPlan, Unsupported> {
    if tables.is_empty() {
        return Ok(plan);
    }
    let mut problem: Option<Unsupported> = None;
    let out = plan.transform_up(|node| {
        let LogicalPlan::Join(j) = &node else {
            return Ok(Transformed::no(node));
        };
        if let Some(t) = lookup_scan(&j.left, tables) {
            problem = Some(Unsupported {
                construct: format!("JOIN with lookup table {t} on the left"),
                message: "a Redis lookup table must be the right side of the join (`FROM stream s LEFT JOIN lookup l ON l.key = ...`)".into(),
            });
            return Ok(Transformed::new(node, false, TreeNodeRecursion::Stop));
        }
        let Some(name) = lookup_scan(&j.right, tables) else {
            return Ok(Transformed::no(node));
        };
        match lookup_key(j, name, tables) {
            Ok((key, inner)) => {
                let n = LookupJoinNode {
                    input: j.left.as_ref().clone(),
                    key,
                    table: name.to_string(),
                    inner,
                    schema: Arc::clone(&j.schema),
                };
                Ok(Transformed::yes(LogicalPlan::Extension(Extension { node: Arc::new(n) })))
            }
            Err(e) => {
                problem = Some(e);
                Ok(Transformed::new(node, false, TreeNodeRecursion::Stop))
            }
        }
    });
    if let Some(p) = problem {
        return Err(p);
    }
    out.map(|t| t.data).map_err(|e| Unsupported {
        construct: "lookup join".into(),
        message: e.to_string(),
    })
}

/// The key expression over the left side, and whether the join is INNER.
fn lookup_key(
    j: &datafusion::logical_expr::Join,
    name: &str,
    tables: &HashMap<String, LookupTable>,
) -> Result<(Expr, bool), Unsupported> {
    let construct = format!("JOIN {name}");
    let inner = match j.join_type {
        JoinType::Inner => true,
        JoinType::Left => false,
        other => {
            return Err(Unsupported {
                construct: format!("{other} JOIN {name}"),
                message: "lookup joins are INNER or LEFT (the lookup table on the right)".into(),
            });
        }
    };
    let key_col = tables
        .get(name)
        .map(|t| t.key_column.as_str())
        .unwrap_or("key");
    let right = j.right.schema();
    let left = j.left.schema();
    let is_key = |e: &Expr| match e {
        Expr::Column(c) => right.index_of_column(c).is_ok() && c.name == key_col,
        _ => false,
    };
    let on_left = |e: &Expr| {
        e.column_refs()
            .iter()
            .all(|c| left.index_of_column(c).is_ok())
    };
    let mut conjuncts: Vec<(Expr, Expr)> = j.on.clone();
    if let Some(f) = &j.filter {
        for c in split_conjunction(f) {
            match c {
                Expr::BinaryExpr(BinaryExpr {
                    left,
                    op: Operator::Eq,
                    right,
                }) => conjuncts.push((left.as_ref().clone(), right.as_ref().clone())),
                other => {
                    return Err(Unsupported {
                        construct,
                        message: format!(
                            "the ON clause of a lookup join may only compare the key column `{key_col}` for equality; `{other}` is not supported (move it to WHERE)"
                        ),
                    });
                }
            }
        }
    }
    let mut key = None;
    for (a, b) in conjuncts {
        let k = if is_key(&b) && on_left(&a) {
            a
        } else if is_key(&a) && on_left(&b) {
            b
        } else {
            return Err(Unsupported {
                construct,
                message: format!(
                    "the ON clause of a lookup join must be `{name}.{key_col} = <expression over the other side>`; `{a} = {b}` is not"
                ),
            });
        };
        if key.replace(k).is_some() {
            return Err(Unsupported {
                construct,
                message: "a lookup join takes exactly one key equality".into(),
            });
        }
    }
    key.map(|k| (k, inner)).ok_or(Unsupported {
        construct,
        message: format!("a lookup join needs `ON {name}.{key_col} = <expression>`"),
    })
}

/// Plans [`LookupJoinNode`]s.
#[derive(Debug)]
pub struct LookupPlanner {
    tables: LookupTables,
}

impl LookupPlanner {
    /// A planner for these tables.
    pub fn new(tables: LookupTables) -> Self {
        Self { tables }
    }
}

#[async_trait]
impl ExtensionPlanner for LookupPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let Some(n) = node.as_any().downcast_ref::<LookupJoinNode>() else {
            return Ok(None);
        };
        let Some(table) = self.tables.get(&n.table) else {
            return Err(DataFusionError::Plan(format!(
                "unknown lookup table {}",
                n.table
            )));
        };
        let [input] = physical_inputs else {
            return Err(DataFusionError::Internal("LookupJoin has one input".into()));
        };
        let key = planner.create_physical_expr(&n.key, n.input.schema(), session, planning_ctx)?;
        Ok(Some(Arc::new(LookupJoinExec::new(
            Arc::clone(input),
            key,
            table.clone(),
            n.inner,
            Arc::new(n.schema.as_arrow().clone()),
        ))))
    }
}

/// The session's query planner: DataFusion's, plus lookup joins, with projections that
/// record no metrics ([`super::projection`]).
#[derive(Debug)]
pub struct QueryPlanner {
    tables: LookupTables,
}

impl QueryPlanner {
    /// A planner for these tables.
    pub fn new(tables: LookupTables) -> Self {
        Self { tables }
    }
}

#[async_trait]
impl datafusion::execution::context::QueryPlanner for QueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(
            LookupPlanner::new(Arc::clone(&self.tables)),
        )])
        .create_physical_plan(logical_plan, session)
        .await?;
        super::projection::lean(prune(plan)?)
    }
}

/// Physical lookup join: per input batch, one lookup of its distinct keys.
#[derive(Debug)]
pub struct LookupJoinExec {
    input: Arc<dyn ExecutionPlan>,
    key: Arc<dyn PhysicalExpr>,
    table: LookupTable,
    inner: bool,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
    /// Per declared column of the table (in `table.columns` order), whether anything
    /// above reads it ([`prune`]); `None` when all may be read. Unread columns are
    /// nulls instead of a gather.
    read: Option<Arc<[bool]>>,
}

impl LookupJoinExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        key: Arc<dyn PhysicalExpr>,
        table: LookupTable,
        inner: bool,
        schema: SchemaRef,
    ) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(
                input.properties().output_partitioning().partition_count(),
            ),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            input,
            key,
            table,
            inner,
            schema,
            props: Arc::new(props),
            read: None,
        }
    }
}

/// Narrows each lookup join directly under a projection to the table columns the
/// projection reads: a per-ping view that reads four of a lease's eleven columns gathers
/// those four for every ping of the batch, not all eleven. The join's schema stays the
/// same; the columns no one reads are nulls (a column declared NOT NULL is always
/// gathered).
fn prune(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let any: &dyn std::any::Any = node.as_ref();
        let Some(projection) = any.downcast_ref::<ProjectionExec>() else {
            return Ok(Transformed::no(node));
        };
        let child: &dyn std::any::Any = projection.input().as_ref();
        let Some(join) = child.downcast_ref::<LookupJoinExec>() else {
            return Ok(Transformed::no(node));
        };
        let mut used = vec![false; join.schema.fields().len()];
        for e in projection.expr() {
            for c in collect_columns(&e.expr) {
                if let Some(u) = used.get_mut(c.index()) {
                    *u = true;
                }
            }
        }
        let first = join.input.schema().fields().len();
        let read: Vec<bool> = used
            .iter()
            .zip(join.schema.fields().iter())
            .skip(first)
            .map(|(&u, f)| u || !f.is_nullable())
            .collect();
        if read.len() != join.table.columns.len() || read.iter().all(|&r| r) {
            return Ok(Transformed::no(node));
        }
        let narrowed = Arc::new(LookupJoinExec {
            input: Arc::clone(&join.input),
            key: Arc::clone(&join.key),
            table: join.table.clone(),
            inner: join.inner,
            schema: Arc::clone(&join.schema),
            props: Arc::clone(&join.props),
            read: Some(read.into()),
        });
        Ok(Transformed::yes(node.replace_children(
            vec![narrowed],
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
        )?))
    })
    .map(|t| t.data)
}

impl DisplayAs for LookupJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "LookupJoinExec: {} key={}",
            if self.inner { "inner" } else { "left" },
            self.key
        )?;
        if let Some(read) = &self.read {
            let names: Vec<&str> = self
                .table
                .columns
                .iter()
                .zip(read.iter())
                .filter(|(_, r)| **r)
                .map(|(c, _)| c.as_str())
                .collect();
            write!(f, " reads=[{}]", names.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for LookupJoinExec {
    fn name(&self) -> &str {
        "LookupJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        f(&self.key)
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

    /// Keeps the same properties (the same `Arc`) when the input's are unchanged: the
    /// engine resets every plan before each run, and a node above a join whose
    /// properties changed would recompute its own (a projection's equivalences cost more
    /// than many a run).
    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let (Some(input), true) = (children.pop(), children.is_empty()) else {
            return Err(DataFusionError::Internal(
                "LookupJoinExec has one child".into(),
            ));
        };
        let (key, table, schema) = (
            Arc::clone(&self.key),
            self.table.clone(),
            Arc::clone(&self.schema),
        );
        let read = self.read.clone();
        Ok(Arc::new(match options.children_properties {
            ChildrenPropertiesMode::Keep => Self {
                input,
                key,
                table,
                inner: self.inner,
                schema,
                props: Arc::clone(&self.props),
                read,
            },
            ChildrenPropertiesMode::Recompute => Self {
                read,
                ..Self::new(input, key, table, self.inner, schema)
            },
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let key = Arc::clone(&self.key);
        let table = self.table.clone();
        let inner = self.inner;
        let schema = Arc::clone(&self.schema);
        let read = self.read.clone();
        let out_schema = Arc::clone(&schema);
        let stream = input.then(move |batch| {
            let key = Arc::clone(&key);
            let table = table.clone();
            let schema = Arc::clone(&schema);
            let read = read.clone();
            async move {
                join_batch(
                    batch?,
                    key.as_ref(),
                    &table,
                    inner,
                    &schema,
                    read.as_deref(),
                )
                .await
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
    }
}

/// First wait after a failed lookup; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

async fn join_batch(
    batch: RecordBatch,
    key: &dyn PhysicalExpr,
    table: &LookupTable,
    inner: bool,
    schema: &SchemaRef,
    read: Option<&[bool]>,
) -> DfResult<RecordBatch> {
    let n = batch.num_rows();
    if n == 0 {
        return Ok(RecordBatch::new_empty(Arc::clone(schema)));
    }
    let keys = key.evaluate(&batch)?.into_array(n)?;
    let keys = cast(&keys, &DataType::Utf8)?;
    let keys = keys
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| DataFusionError::Internal("lookup key is not a string".into()))?;
    let mut wait = FIRST_BACKOFF;
    let found = loop {
        match table.lookup.lookup_distinct(keys).await {
            Ok(d) => break d,
            Err(e) if e.is_retryable() => {
                table
                    .lookup
                    .stats()
                    .held
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "Redis lookup failed; holding the batch and retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(DataFusionError::External(Box::new(e))),
        }
    };
    let missing = arrow::compute::is_null(&found.indices)?;
    let value_schema = table.lookup.aligned_schema();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    // Only the declared columns are gathered, each straight from the decoded rows, and of
    // those only the ones read above.
    for (j, name) in table.columns.iter().enumerate() {
        if read.is_some_and(|r| !r.get(j).copied().unwrap_or(true)) {
            let field = schema.fields().get(columns.len()).ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "lookup join of {} columns into a schema of {}",
                    columns.len() + 1,
                    schema.fields().len()
                ))
            })?;
            columns.push(arrow::array::new_null_array(field.data_type(), n));
        } else if *name == table.key_column {
            columns.push(nullif(keys, &missing)?);
        } else {
            // the state schema is the key column, then the value columns
            let i = value_schema.index_of(name)? + 1;
            columns.push(found.aligned_column(i).map_err(|e| {
                DataFusionError::External(Box::new(LookupError::Internal(e.to_string())))
            })?);
        }
    }
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c)
            } else {
                cast(&c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let out = RecordBatch::try_new(Arc::clone(schema), columns)?;
    if inner {
        let found = arrow::compute::not(&missing)?;
        Ok(filter_record_batch(&out, &found)?)
    } else {
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::lookup::LookupConfig;
    use arrow::datatypes::{Field, Schema};
    use datafusion::physical_expr::expressions::{Column, col};
    use datafusion::physical_plan::displayable;
    use datafusion::physical_plan::empty::EmptyExec;

    /// A join of `device_id` with a three-column table (never connected: planning only),
    /// its `lease_id` nullable or not.
    fn join(lease_id_nullable: bool) -> Arc<dyn ExecutionPlan> {
        let value_schema = Arc::new(Schema::new(vec![
            Field::new("lease_id", DataType::Utf8, true),
            Field::new("area_res", DataType::Int32, true),
        ]));
        let lookup = RedisLookup::new(LookupConfig::default(), value_schema).unwrap();
        let table = LookupTable {
            key_column: "key".into(),
            columns: vec!["key".into(), "lease_id".into(), "area_res".into()],
            lookup: Arc::new(lookup),
        };
        let input_schema = Arc::new(Schema::new(vec![Field::new(
            "device_id",
            DataType::Utf8,
            false,
        )]));
        let fields = vec![
            Field::new("device_id", DataType::Utf8, false),
            Field::new("key", DataType::Utf8, true),
            Field::new("lease_id", DataType::Utf8, lease_id_nullable),
            Field::new("area_res", DataType::Int32, true),
        ];
        let key = col("device_id", &input_schema).unwrap();
        let input = Arc::new(EmptyExec::new(input_schema));
        Arc::new(LookupJoinExec::new(
            input,
            key,
            table,
            true,
            Arc::new(Schema::new(fields)),
        ))
    }

    fn project(columns: &[(&str, usize)], input: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        let exprs = columns.iter().map(|&(name, i)| {
            (
                Arc::new(Column::new(name, i)) as Arc<dyn PhysicalExpr>,
                name.to_string(),
            )
        });
        Arc::new(ProjectionExec::try_new(exprs, input).unwrap())
    }

    fn shown(plan: &Arc<dyn ExecutionPlan>) -> String {
        displayable(plan.as_ref()).indent(true).to_string()
    }

    #[test]
    fn a_join_under_a_projection_reads_only_the_columns_it_uses() {
        let read = [("device_id", 0), ("area_res", 3)];
        let plan = prune(project(&read, join(true))).unwrap();
        assert!(
            shown(&plan).contains("LookupJoinExec: inner key=device_id@0 reads=[area_res]"),
            "{}",
            shown(&plan)
        );
        // The schema above is unchanged.
        assert_eq!(plan.schema().fields().len(), 2);
        // A column that may not be null is gathered, read or not.
        let plan = prune(project(&read, join(false))).unwrap();
        assert!(
            shown(&plan).contains("reads=[lease_id, area_res]"),
            "{}",
            shown(&plan)
        );
    }

    #[test]
    fn a_join_read_whole_or_not_under_a_projection_is_left_as_it_is() {
        let all = [
            ("device_id", 0),
            ("key", 1),
            ("lease_id", 2),
            ("area_res", 3),
        ];
        for plan in [project(&all, join(true)), join(true)] {
            let pruned = prune(Arc::clone(&plan)).unwrap();
            assert!(!shown(&pruned).contains("reads="), "{}", shown(&pruned));
        }
    }
}
