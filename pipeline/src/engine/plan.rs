//! Compiles a [`Program`] into executable queries: per-batch plans, and for windowed
//! queries the split pre-window / partial / final / post-window plans.

use super::EngineError;
use super::lookup_join::{self, LookupTable};
use super::slot::{Slot, SlotExec, SlotTable};
use super::sql::{InsertDef, Pos, Program, SqlError, TableDef, TableKind, ViewDef};
use super::window::{self, HopState, SessionState, WindowSpec};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::Column;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::prelude::SessionContext;
use leasewatch_schemas::ping_schema;
use std::collections::HashMap;
use std::sync::Arc;

/// Name of the engine-filled window column in the aggregate input.
pub const WINDOW_COLUMN: &str = "__lw_window";

/// The pipeline's ping source as bound in SQL.
#[derive(Debug, Clone)]
pub struct SourceBinding {
    /// Table name.
    pub name: String,
    /// Columns of the ping schema the table declares, by index.
    pub projection: Vec<usize>,
    /// The table's schema.
    pub schema: SchemaRef,
    /// The slot its scans read.
    pub slot: Slot,
    /// Event-time column (from `WATERMARK FOR`), if declared.
    pub event_time: Option<String>,
    /// Bounded out-of-orderness, ms.
    pub bound_ms: i64,
}

/// One `INSERT INTO`, compiled.
#[derive(Debug)]
pub struct Query {
    /// Where it was declared.
    pub pos: Pos,
    /// Its name in metrics: the view's name, or `insert_into_{sink}@{file}:{line}`.
    pub name: String,
    /// Where its rows go.
    pub output: Output,
    /// Streams a per-batch query reads ([`PINGS`] or `1 + stage`): it runs whenever one of
    /// them has new rows. Windowed queries read the pings.
    pub inputs: Vec<usize>,
    /// Declared sink schema (rows are renamed/cast to it), when the sink declares columns.
    pub sink_schema: Option<SchemaRef>,
    /// How it runs.
    pub kind: QueryKind,
}

/// Stream id of the ping source; a materialised view's output stream is `1 + stage index`.
pub const PINGS: usize = 0;
/// Stream id of the lease sweep table.
pub const SWEEP: usize = usize::MAX;

/// Where a query's rows go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// A sink table, by index in the engine's sink list.
    Sink(usize),
    /// A windowed view's output stream, by stage index (read by later queries).
    Stage(usize),
}

/// How a query runs.
#[derive(Debug)]
pub enum QueryKind {
    /// Per batch: the whole plan over each source batch (late rows included).
    PerBatch(Arc<dyn ExecutionPlan>),
    /// Windowed aggregate.
    Windowed(Box<Windowed>),
}

/// Window state of a query.
#[derive(Debug)]
pub enum WindowState {
    /// Hop/tumble partials.
    Hop(HopState),
    /// Session rows.
    Session(SessionState),
}

/// A windowed query: pre-window plan, two-phase aggregate, post-window plan, state.
#[derive(Debug)]
pub struct Windowed {
    /// The window.
    pub spec: WindowSpec,
    /// The aggregate's input, per on-time source batch.
    pub pre: Arc<dyn ExecutionPlan>,
    /// Event-time column in `pre`'s output.
    pub ts_index: usize,
    /// Slot read by `partial` (pre output + window column), and its schema.
    pub agg_in_slot: Slot,
    /// Schema of `agg_in_slot` batches.
    pub agg_in_schema: SchemaRef,
    /// Partial aggregate (per-slide partial states).
    pub partial: Arc<dyn ExecutionPlan>,
    /// Slot read by `final_agg` and `reduce` (partial states).
    pub final_slot: Slot,
    /// Schema of partial-state batches.
    pub partial_schema: SchemaRef,
    /// Final aggregate (merges partial states per window).
    pub final_agg: Arc<dyn ExecutionPlan>,
    /// Partial-reduce aggregate (compacts a bucket's partial states).
    pub reduce: Arc<dyn ExecutionPlan>,
    /// Index of the window column among the group columns.
    pub window_index: usize,
    /// Whether compactions may settle `max_speed_kmh`'s fixes: every call of it here takes
    /// the window's event time as its time (see `settles`).
    pub settles: bool,
    /// Group-key expressions other than the window, over `agg_in_schema` (sessions).
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Slot read by `post` (final output, renamed), and its schema.
    pub post_slot: Slot,
    /// Schema of `post_slot` batches.
    pub post_schema: SchemaRef,
    /// The rest of the query above the aggregate.
    pub post: Arc<dyn ExecutionPlan>,
    /// State.
    pub state: WindowState,
}

fn sql_err(pos: &Pos, construct: impl Into<String>, e: impl std::fmt::Display) -> EngineError {
    EngineError::Sql(SqlError::new(pos, construct, e.to_string()))
}

/// Binds the ping source and lease sweep tables and registers them (and lookup tables)
/// in `ctx`.
pub fn bind_tables(
    ctx: &SessionContext,
    program: &Program,
    redis_url: Option<&str>,
) -> Result<(Option<SourceBinding>, Option<SweepBinding>), EngineError> {
    let mut source = None;
    let mut sweep = None;
    for t in &program.tables {
        match t.kind {
            TableKind::Source => {
                if let Some(first) = &source {
                    let first: &SourceBinding = first;
                    return Err(sql_err(
                        &t.pos,
                        format!("CREATE TABLE {}", t.name),
                        format!(
                            "only one '{}' source table is supported (already declared: {})",
                            super::sql::table_source_connector(),
                            first.name
                        ),
                    ));
                }
                let b = bind_source(t)?;
                ctx.register_table(
                    b.name.as_str(),
                    Arc::new(SlotTable::new(b.schema.clone(), b.slot.clone())),
                )
                .map_err(|e| sql_err(&t.pos, format!("CREATE TABLE {}", t.name), e))?;
                source = Some(b);
            }
            TableKind::Lookup => {
                let schema = Arc::new(Schema::new(
                    t.columns
                        .iter()
                        // Any looked-up value may be missing: every column is nullable.
                        .map(|c| Field::new(&c.name, c.data_type.clone(), true))
                        .collect::<Vec<_>>(),
                ));
                ctx.register_table(
                    t.name.as_str(),
                    Arc::new(SlotTable::new(schema, Slot::default())),
                )
                .map_err(|e| sql_err(&t.pos, format!("CREATE TABLE {}", t.name), e))?;
            }
            TableKind::Sweep => {
                let schema = Arc::new(Schema::new(
                    t.columns
                        .iter()
                        .map(|c| Field::new(&c.name, c.data_type.clone(), c.nullable))
                        .collect::<Vec<_>>(),
                ));
                let want = [
                    ("device_id", DataType::Utf8),
                    ("event_time", leasewatch_schemas::timestamp_type()),
                ];
                let ok = schema.fields().len() == 2
                    && schema
                        .fields()
                        .iter()
                        .zip(&want)
                        .all(|(f, (n, ty))| f.name() == n && f.data_type() == ty);
                if !ok {
                    return Err(sql_err(
                        &t.pos,
                        format!("CREATE TABLE {}", t.name),
                        "a lease_sweep table has exactly the columns (device_id TEXT, event_time TIMESTAMP)",
                    ));
                }
                if sweep.is_some() {
                    return Err(sql_err(
                        &t.pos,
                        format!("CREATE TABLE {}", t.name),
                        "only one lease_sweep table is supported",
                    ));
                }
                let slot = Slot::default();
                ctx.register_table(
                    t.name.as_str(),
                    Arc::new(SlotTable::new(schema.clone(), slot.clone())),
                )
                .map_err(|e| sql_err(&t.pos, format!("CREATE TABLE {}", t.name), e))?;
                let opt = |k: &str| t.options.get(k).map(|v| v.as_text());
                sweep = Some(SweepBinding {
                    name: t.name.clone(),
                    schema,
                    slot,
                    url: redis_url
                        .map(str::to_string)
                        .or_else(|| opt("address"))
                        .unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
                    key_prefix: opt("key_prefix").unwrap_or_else(|| "lw:lease:".into()),
                });
            }
            TableKind::Sink => {}
        }
    }
    Ok((source, sweep))
}

/// The lease sweep table as bound.
#[derive(Debug, Clone)]
pub struct SweepBinding {
    /// Table name.
    pub name: String,
    /// `(device_id, event_time)`.
    pub schema: SchemaRef,
    /// The slot its scans read.
    pub slot: Slot,
    /// Redis holding the leases.
    pub url: String,
    /// Key prefix of the lease keys (`lw:lease:`).
    pub key_prefix: String,
}

fn bind_source(t: &TableDef) -> Result<SourceBinding, EngineError> {
    let ping = ping_schema();
    let mut projection = Vec::new();
    for c in &t.columns {
        let Ok(i) = ping.index_of(&c.name) else {
            return Err(sql_err(
                &t.pos,
                format!("column {}", c.name),
                "not a field of the ping contract (DevicePing); the source's columns must be ping fields",
            ));
        };
        let want = ping.field(i).data_type();
        let compatible = want == &c.data_type
            || matches!(
                (want, &c.data_type),
                (DataType::Timestamp(..), DataType::Timestamp(..))
            )
            || (want.is_integer() && c.data_type.is_integer())
            || (want.is_floating() && c.data_type.is_floating());
        if !compatible {
            return Err(sql_err(
                &t.pos,
                format!("column {} {}", c.name, c.sql_type),
                format!("the ping contract has {want} for this field"),
            ));
        }
        projection.push(i);
    }
    if projection.is_empty() {
        projection = (0..ping.fields().len()).collect();
    }
    let schema = Arc::new(
        ping.project(&projection)
            .map_err(|e| EngineError::Internal(e.to_string()))?,
    );
    Ok(SourceBinding {
        name: t.name.clone(),
        projection,
        schema,
        slot: Slot::default(),
        event_time: t.watermark.as_ref().map(|w| w.column.clone()),
        bound_ms: t.watermark.as_ref().map_or(0, |w| w.bound_ms),
    })
}

/// What a query is compiled against.
#[allow(missing_debug_implementations)]
pub struct Env<'a> {
    /// The session (UDFs, tables, views, the lookup-join planner).
    pub ctx: &'a SessionContext,
    /// The parsed SQL.
    pub program: &'a Program,
    /// The ping source.
    pub source: Option<&'a SourceBinding>,
    /// Lookup tables by name.
    pub lookups: &'a HashMap<String, LookupTable>,
    /// Stream tables by name: the source ([`PINGS`]) and windowed views (`1 + stage`).
    pub streams: &'a HashMap<String, usize>,
}

/// Compiles one `INSERT INTO` writing to sink `sink`.
pub async fn compile_insert(
    env: &Env<'_>,
    ins: &InsertDef,
    sink: usize,
    qn: usize,
) -> Result<Query, EngineError> {
    let pos = &ins.pos;
    let construct = format!("INSERT INTO {}", ins.sink);
    let sink_table = env.program.table(&ins.sink).ok_or_else(|| {
        sql_err(
            pos,
            &construct,
            "no such table; declare it with CREATE TABLE ... WITH (connector = ...)",
        )
    })?;
    let (plan, inputs) = logical(env, &ins.query, pos, &construct).await?;
    let sink_schema = sink_schema(sink_table, plan.schema().as_arrow(), pos, &construct)?;
    let mut q = compile(
        env,
        plan,
        inputs,
        pos,
        &construct,
        Output::Sink(sink),
        sink_schema,
        qn,
    )
    .await?;
    q.name = format!("insert_into_{}@{}:{}", ins.sink, pos.file, pos.line);
    Ok(q)
}

/// Compiles `CREATE VIEW` `view` as stage `stage` (computed once, its rows a stream that
/// later statements read) when it holds a windowed aggregate or a lookup join, or reads
/// another stage or the lease sweep: `Ok(None)` otherwise (it is then an ordinary view,
/// inlined where it is used).
pub async fn compile_view(
    env: &Env<'_>,
    view: &ViewDef,
    stage: usize,
    qn: usize,
) -> Result<Option<(Query, SchemaRef)>, EngineError> {
    let construct = format!("CREATE VIEW {}", view.name);
    let (plan, inputs) = logical(env, &view.query, &view.pos, &construct).await?;
    let windowed = find_window_aggregate(&plan, &view.pos)?.is_some();
    let looks_up = plan
        .exists(|n| Ok(matches!(n, LogicalPlan::Extension(e) if e.node.name() == "LookupJoin")))
        .unwrap_or(false);
    let reads_stage = inputs.iter().any(|&i| i != PINGS);
    if !windowed && !looks_up && !reads_stage {
        return Ok(None);
    }
    let schema = Arc::new(Schema::new(
        plan.schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let mut q = compile(
        env,
        plan,
        inputs,
        &view.pos,
        &construct,
        Output::Stage(stage),
        None,
        qn,
    )
    .await?;
    q.name = view.name.clone();
    Ok(Some((q, schema)))
}

/// The optimised logical plan of `sql` with lookup joins rewritten, and the streams it reads.
async fn logical(
    env: &Env<'_>,
    sql: &str,
    pos: &Pos,
    construct: &str,
) -> Result<(LogicalPlan, Vec<usize>), EngineError> {
    let state = env.ctx.state();
    let plan = state
        .create_logical_plan(sql)
        .await
        .map_err(|e| sql_err(pos, construct, e))?;
    let plan = match env.source.and_then(|s| s.event_time.as_deref()) {
        Some(ts) => add_event_time_arg(plan, ts, pos)?,
        None => plan,
    };
    let plan = lookup_join::rewrite(plan, env.lookups)
        .map_err(|u| sql_err(pos, u.construct, u.message))?;
    let plan = state
        .optimize(&plan)
        .map_err(|e| sql_err(pos, construct, e))?;
    check_tables(env.program, &plan, pos)?;
    let mut inputs = Vec::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(s) = node
            && let Some(&id) = env.streams.get(s.table_name.table())
            && !inputs.contains(&id)
        {
            inputs.push(id);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    inputs.sort_unstable();
    Ok((plan, inputs))
}

#[allow(clippy::too_many_arguments)]
async fn compile(
    env: &Env<'_>,
    plan: LogicalPlan,
    inputs: Vec<usize>,
    pos: &Pos,
    construct: &str,
    output: Output,
    sink_schema: Option<SchemaRef>,
    qn: usize,
) -> Result<Query, EngineError> {
    let state = env.ctx.state();
    let source = env.source;
    let Some((agg, spec, w_idx)) = find_window_aggregate(&plan, pos)? else {
        check_supported(&plan, None, pos)?;
        let physical = state
            .create_physical_plan(&plan)
            .await
            .map_err(|e| sql_err(pos, construct, e))?;
        tracing::debug!(
            "{construct} at {pos}: per-batch plan\n{}",
            datafusion::physical_plan::displayable(physical.as_ref()).indent(true)
        );
        return Ok(Query {
            pos: pos.clone(),
            name: String::new(),
            output,
            inputs,
            sink_schema,
            kind: QueryKind::PerBatch(physical),
        });
    };
    check_supported(&plan, Some(&agg), pos)?;
    if let Some(stage) = inputs.iter().find(|&&i| i != PINGS) {
        let name = env
            .streams
            .iter()
            .find(|(_, id)| *id == stage)
            .map(|(n, _)| n.as_str())
            .unwrap_or("?");
        return Err(sql_err(
            pos,
            "windowed aggregate",
            format!(
                "a window over the output of windowed view {name} is not supported: window the ping source, and combine windowed views without a further window"
            ),
        ));
    }
    let source = source.ok_or_else(|| sql_err(pos, "windowed aggregate", "no source table"))?;
    let ts_name = source.event_time.clone().ok_or_else(|| {
        sql_err(
            pos,
            "windowed aggregate",
            format!(
                "source table {} has no WATERMARK FOR <column> AS (<column> - INTERVAL ...) clause: windows need event time",
                source.name
            ),
        )
    })?;
    let in_schema = agg.input.schema().clone();
    let ts_index = match strip_alias(&agg.group_expr[w_idx]) {
        Expr::ScalarFunction(f) => match f.args.last() {
            Some(Expr::Column(c)) => in_schema.index_of_column(c).ok(),
            _ => None,
        },
        _ => None,
    }
    .ok_or_else(|| {
        sql_err(
            pos,
            "windowed aggregate",
            format!("the window's input must carry the event-time column `{ts_name}` (do not project it away before the GROUP BY)"),
        )
    })?;

    // Pre-window plan: the aggregate's input.
    let pre = state
        .create_physical_plan(&agg.input)
        .await
        .map_err(|e| sql_err(pos, construct, e))?;

    // The aggregate over a slot of (input columns c0.., window column).
    let mut fields: Vec<Field> = in_schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), f.is_nullable()))
        .collect();
    fields.push(Field::new(WINDOW_COLUMN, window::key_type(spec), false));
    let agg_in_schema = Arc::new(Schema::new(fields));
    let agg_in_slot = Slot::default();
    let in_name = format!("__lw_agg_in_{qn}");
    let scan = LogicalPlanBuilder::scan(
        in_name.as_str(),
        provider_as_source(Arc::new(SlotTable::new(
            agg_in_schema.clone(),
            agg_in_slot.clone(),
        ))),
        None,
    )
    .and_then(|b| {
        let mut exprs: Vec<Expr> = in_schema
            .iter()
            .enumerate()
            .map(|(i, (q, f))| {
                Expr::Column(Column::new_unqualified(format!("c{i}")))
                    .alias_qualified(q.cloned(), f.name())
            })
            .collect();
        exprs.push(Expr::Column(Column::new_unqualified(WINDOW_COLUMN)));
        b.project(exprs)
    })
    .and_then(|b| b.build())
    .map_err(|e| EngineError::Internal(e.to_string()))?;
    let window_name = agg.schema.field(w_idx).name().clone();
    let mut group = agg.group_expr.clone();
    group[w_idx] = Expr::Column(Column::new_unqualified(WINDOW_COLUMN)).alias(window_name);
    let new_agg = Aggregate::try_new(Arc::new(scan), group, agg.aggr_expr.clone())
        .map_err(|e| sql_err(pos, construct, e))?;
    let agg_physical = state
        .create_physical_plan(&LogicalPlan::Aggregate(new_agg))
        .await
        .map_err(|e| sql_err(pos, construct, e))?;
    let lowest = lowest_aggregate(&agg_physical).ok_or_else(|| {
        EngineError::Internal("no AggregateExec in the windowed aggregate's plan".into())
    })?;
    let settles = in_schema.field(ts_index).name() == &ts_name && settles(lowest, ts_index);
    let internal = |e: datafusion::error::DataFusionError| EngineError::Internal(e.to_string());
    let partial = Arc::new(
        AggregateExec::try_new(
            AggregateMode::Partial,
            lowest.group_expr().clone(),
            lowest.aggr_expr().to_vec(),
            lowest.filter_expr().to_vec(),
            lowest.input().clone(),
            lowest.input_schema(),
        )
        .map_err(internal)?,
    );
    let partial_schema = partial.schema();
    let final_slot = Slot::default();
    let final_input: Arc<dyn ExecutionPlan> = Arc::new(
        SlotExec::new(partial_schema.clone(), None, final_slot.clone()).map_err(internal)?,
    );
    let final_agg: Arc<dyn ExecutionPlan> = Arc::new(
        AggregateExec::try_new(
            AggregateMode::Final,
            lowest.group_expr().as_final(),
            lowest.aggr_expr().to_vec(),
            lowest.filter_expr().to_vec(),
            final_input.clone(),
            lowest.input_schema(),
        )
        .map_err(internal)?,
    );
    let reduce: Arc<dyn ExecutionPlan> = Arc::new(
        AggregateExec::try_new(
            AggregateMode::PartialReduce,
            lowest.group_expr().as_final(),
            lowest.aggr_expr().to_vec(),
            lowest.filter_expr().to_vec(),
            final_input,
            lowest.input_schema(),
        )
        .map_err(internal)?,
    );
    let keys: Vec<Arc<dyn PhysicalExpr>> = lowest
        .group_expr()
        .expr()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != w_idx)
        .map(|(_, (e, _))| e.clone())
        .collect();

    // Post-window plan: the query with the aggregate replaced by a slot of its output.
    // The final aggregate's window key becomes the `window` struct again (see
    // `window::key_type`) before the post-window plan reads it.
    let final_schema = final_agg.schema();
    let post_schema = Arc::new(Schema::new(
        final_schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let t = if i == w_idx {
                    window::window_type()
                } else {
                    f.data_type().clone()
                };
                Field::new(format!("c{i}"), t, f.is_nullable())
            })
            .collect::<Vec<_>>(),
    ));
    let post_slot = Slot::default();
    let out_name = format!("__lw_agg_out_{qn}");
    let replacement = LogicalPlanBuilder::scan(
        out_name.as_str(),
        provider_as_source(Arc::new(SlotTable::new(
            post_schema.clone(),
            post_slot.clone(),
        ))),
        None,
    )
    .and_then(|b| {
        b.project(agg.schema.iter().enumerate().map(|(i, (q, f))| {
            Expr::Column(Column::new_unqualified(format!("c{i}")))
                .alias_qualified(q.cloned(), f.name())
        }))
    })
    .and_then(|b| b.build())
    .map_err(|e| EngineError::Internal(e.to_string()))?;
    let target = LogicalPlan::Aggregate(agg.clone());
    let post_logical = plan
        .transform_down(|node| {
            if node == target {
                Ok(Transformed::new(
                    replacement.clone(),
                    true,
                    TreeNodeRecursion::Jump,
                ))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map_err(internal)?
        .data;
    let post = state
        .create_physical_plan(&post_logical)
        .await
        .map_err(|e| sql_err(pos, construct, e))?;
    let state = match spec {
        WindowSpec::Hop { .. } => WindowState::Hop(HopState::default()),
        WindowSpec::Session { .. } => WindowState::Session(SessionState::default()),
    };
    Ok(Query {
        pos: pos.clone(),
        name: String::new(),
        output,
        inputs: vec![PINGS],
        sink_schema,
        kind: QueryKind::Windowed(Box::new(Windowed {
            spec,
            pre,
            ts_index,
            agg_in_slot,
            agg_in_schema,
            partial,
            final_slot,
            partial_schema,
            final_agg,
            reduce,
            window_index: w_idx,
            settles,
            keys,
            post_slot,
            post_schema,
            post,
            state,
        })),
    })
}

/// Whether `agg` has a `max_speed_kmh` and every one takes column `ts_index`, the
/// window's event time, as it is. Only then do the engine's guarantees on event time (no
/// row older than the watermark enters window state) hold for the fixes' times, so that a
/// compaction may settle them (`leasewatch_udfs::datafusion::SettledSpans`). Without
/// one there is nothing to settle, and such a query's parts above level 0 are merged
/// without waiting for the watermark (`HopState::take_compaction`).
fn settles(agg: &AggregateExec, ts_index: usize) -> bool {
    use datafusion::physical_expr::expressions::Column as ColumnExpr;
    let mut speeds = agg
        .aggr_expr()
        .iter()
        .filter(|a| a.fun().name() == "max_speed_kmh")
        .peekable();
    speeds.peek().is_some()
        && speeds.all(|a| {
            !a.is_distinct()
                && a.expressions()
                    .first()
                    .and_then(|e| e.downcast_ref::<ColumnExpr>())
                    .is_some_and(|c| c.index() == ts_index)
        })
}

fn lowest_aggregate(plan: &Arc<dyn ExecutionPlan>) -> Option<&AggregateExec> {
    for child in plan.children() {
        if let Some(a) = lowest_aggregate(child) {
            return Some(a);
        }
    }
    let any: &dyn std::any::Any = plan.as_ref();
    any.downcast_ref::<AggregateExec>()
}

/// The aggregate grouping by a window function, its spec and the window's group index.
fn find_window_aggregate(
    plan: &LogicalPlan,
    pos: &Pos,
) -> Result<Option<(Aggregate, WindowSpec, usize)>, EngineError> {
    let mut found: Vec<(Aggregate, WindowSpec, usize)> = Vec::new();
    let mut err = None;
    let _ = plan.apply(|node| {
        if let LogicalPlan::Aggregate(a) = node {
            let specs: Vec<(usize, Result<WindowSpec, String>)> = a
                .group_expr
                .iter()
                .enumerate()
                .filter_map(|(i, e)| window::window_spec(strip_alias(e)).map(|s| (i, s)))
                .collect();
            match specs.as_slice() {
                [] => {}
                [(i, Ok(s))] => found.push((a.clone(), *s, *i)),
                [(_, Err(m))] => err = Some(sql_err(pos, "window function", m)),
                _ => {
                    err = Some(sql_err(
                        pos,
                        "GROUP BY",
                        "more than one window function in one GROUP BY",
                    ))
                }
            }
            if a.group_expr
                .iter()
                .any(|e| matches!(e, Expr::GroupingSet(_)))
            {
                err = Some(sql_err(
                    pos,
                    "GROUPING SETS / ROLLUP / CUBE",
                    "not supported in streaming queries",
                ));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if let Some(e) = err {
        return Err(e);
    }
    if found.len() > 1 {
        return Err(sql_err(
            pos,
            "nested windowed aggregates",
            "only one windowed GROUP BY per INSERT is supported by the embedded engine",
        ));
    }
    Ok(found.pop())
}

/// Gives every window call in a `GROUP BY` the event-time column as a last argument
/// (aliased to its old name), so the optimizer keeps that column in the aggregate input.
fn add_event_time_arg(plan: LogicalPlan, ts: &str, pos: &Pos) -> Result<LogicalPlan, EngineError> {
    let out = plan.transform_up(|node| {
        let LogicalPlan::Aggregate(a) = &node else {
            return Ok(Transformed::no(node));
        };
        if !a.group_expr.iter().any(|e| window::window_spec(strip_alias(e)).is_some()) {
            return Ok(Transformed::no(node));
        }
        let Ok((q, f)) = a.input.schema().qualified_field_with_unqualified_name(ts) else {
            return Err(datafusion::error::DataFusionError::Plan(format!(
                "the window's input must carry the event-time column `{ts}` (do not project it away before the GROUP BY)"
            )));
        };
        let ts_col = Expr::Column(Column::new(q.cloned(), f.name()));
        let group = a
            .group_expr
            .iter()
            .map(|e| match e {
                Expr::ScalarFunction(sf) if window::window_spec(e).is_some() => {
                    let name = e.schema_name().to_string();
                    let mut sf = sf.clone();
                    sf.args.push(ts_col.clone());
                    Expr::ScalarFunction(sf).alias(name)
                }
                e => e.clone(),
            })
            .collect();
        let new = Aggregate::try_new(a.input.clone(), group, a.aggr_expr.clone())?;
        Ok(Transformed::yes(LogicalPlan::Aggregate(new)))
    });
    out.map(|t| t.data)
        .map_err(|e| sql_err(pos, "windowed aggregate", e))
}

fn strip_alias(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => strip_alias(&a.expr),
        e => e,
    }
}

/// Rejects what the embedded engine cannot run in a stream, naming the construct.
fn check_supported(
    plan: &LogicalPlan,
    window_agg: Option<&Aggregate>,
    pos: &Pos,
) -> Result<(), EngineError> {
    let mut err = None;
    let _ = plan.apply(|node| {
        let bad = match node {
            LogicalPlan::Join(_) => Some(("JOIN", "only lookup joins (a connector = 'redis' table on the right) are supported: a join of two streams is not")),
            LogicalPlan::Limit(_) => Some(("LIMIT", "a stream has no end: LIMIT is not supported")),
            LogicalPlan::Window(_) => Some(("OVER (...)", "window functions (OVER) are not supported by the embedded engine")),
            LogicalPlan::Distinct(_) => Some(("DISTINCT", "SELECT DISTINCT on a stream is an updating query: not supported")),
            LogicalPlan::RecursiveQuery(_) => Some(("WITH RECURSIVE", "not supported")),
            LogicalPlan::Aggregate(a) => {
                let is_window = window_agg.is_some_and(|w| w == a);
                let above_window = window_agg.is_some_and(|w| contains(&a.input, w));
                (!is_window && !above_window).then_some((
                    "GROUP BY",
                    "an aggregate without tumble()/hop()/session() in its GROUP BY is an updating aggregate: not supported",
                ))
            }
            _ => None,
        };
        if let Some((c, m)) = bad {
            err = Some(sql_err(pos, c, m));
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    err.map_or(Ok(()), Err)
}

fn contains(plan: &LogicalPlan, agg: &Aggregate) -> bool {
    let mut hit = false;
    let _ = plan.apply(|n| {
        if matches!(n, LogicalPlan::Aggregate(a) if a == agg) {
            hit = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    hit
}

/// Fails when the plan reads a lookup table other than through a lookup join.
fn check_tables(program: &Program, plan: &LogicalPlan, pos: &Pos) -> Result<(), EngineError> {
    let mut err = None;
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(s) = node
            && let Some(t) = program.table(s.table_name.table())
            && t.kind == TableKind::Lookup
        {
            err = Some(sql_err(
                pos,
                format!("lookup table {} (connector = 'redis')", t.name),
                "a lookup table can only be read through a join on its key (`LEFT JOIN t ON t.key = ...`), not scanned",
            ));
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    err.map_or(Ok(()), Err)
}

fn sink_schema(
    sink: &TableDef,
    out: &Schema,
    pos: &Pos,
    construct: &str,
) -> Result<Option<SchemaRef>, EngineError> {
    if sink.kind != TableKind::Sink {
        return Err(sql_err(
            pos,
            construct,
            format!(
                "{} is not a sink table (connector = '{}')",
                sink.name, sink.connector
            ),
        ));
    }
    if sink.columns.is_empty() {
        return Ok(None);
    }
    if sink.columns.len() != out.fields().len() {
        return Err(sql_err(
            pos,
            construct,
            format!(
                "the query yields {} columns but sink {} declares {}",
                out.fields().len(),
                sink.name,
                sink.columns.len()
            ),
        ));
    }
    for (c, f) in sink.columns.iter().zip(out.fields()) {
        if !arrow::compute::can_cast_types(f.data_type(), &c.data_type) {
            return Err(sql_err(
                pos,
                construct,
                format!(
                    "column {} is {} but the sink declares {} {}",
                    f.name(),
                    f.data_type(),
                    c.name,
                    c.sql_type
                ),
            ));
        }
    }
    Ok(Some(Arc::new(Schema::new(
        sink.columns
            .iter()
            .map(|c| Field::new(&c.name, c.data_type.clone(), true))
            .collect::<Vec<_>>(),
    ))))
}
