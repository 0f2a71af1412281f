//! `CREATE [TEMPORARY] TABLE` in Arroyo's dialect, parsed from tokens.

use super::{Pos, SqlError, Stmt};
use arrow::datatypes::DataType;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::Token;
use std::collections::BTreeMap;

/// What a table is for, from its `connector` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// The pipeline's own ping stream (`connector = 'leasewatch'`): fed by ingest or replay.
    Source,
    /// A lookup table (`CREATE TEMPORARY TABLE ... (connector = 'redis')`), joined per batch.
    Lookup,
    /// The lease sweep (`connector = 'lease_sweep'`): one row per leased device, fed
    /// periodically by the engine's host so state-only rules (the overdue ladder) also
    /// reach devices that stopped pinging.
    Sweep,
    /// A sink (`blackhole`, `stdout`, `filesystem`).
    Sink,
}

/// A `WITH (...)` option value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionValue {
    /// `'text'`.
    Str(String),
    /// A number, as written.
    Number(String),
    /// `interval '5 seconds'`, in milliseconds.
    Interval(i64),
    /// A bare word (`true`, `json`).
    Word(String),
}

impl OptionValue {
    /// The value as text (numbers and words as written, intervals in ms).
    pub fn as_text(&self) -> String {
        match self {
            Self::Str(s) | Self::Number(s) | Self::Word(s) => s.clone(),
            Self::Interval(ms) => format!("{ms} ms"),
        }
    }
}

/// A declared column.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    /// Name.
    pub name: String,
    /// The SQL type as written.
    pub sql_type: String,
    /// Its Arrow type.
    pub data_type: DataType,
    /// `NOT NULL` absent.
    pub nullable: bool,
    /// `METADATA FROM 'key'`.
    pub metadata_from: Option<String>,
    /// `PRIMARY KEY` on the column or in a table constraint.
    pub primary_key: bool,
}

/// `WATERMARK FOR column AS (column - INTERVAL 'n' SECOND)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatermarkDef {
    /// The event-time column.
    pub column: String,
    /// Bounded out-of-orderness, ms.
    pub bound_ms: i64,
}

/// A `CREATE TABLE`.
#[derive(Debug, Clone)]
pub struct TableDef {
    /// Table name.
    pub name: String,
    /// Where the statement starts.
    pub pos: Pos,
    /// `TEMPORARY` was given (Arroyo's lookup tables).
    pub temporary: bool,
    /// Declared columns (may be empty for sinks).
    pub columns: Vec<ColumnDef>,
    /// The watermark, for sources.
    pub watermark: Option<WatermarkDef>,
    /// `WITH` options, keys lower-cased.
    pub options: BTreeMap<String, OptionValue>,
    /// From `connector`.
    pub kind: TableKind,
    /// The `connector` option.
    pub connector: String,
}

/// The embedded engine's connectors.
pub const SOURCE_CONNECTOR: &str = "leasewatch";
/// The lease sweep's connector.
pub const SWEEP_CONNECTOR: &str = "lease_sweep";
/// Sink connectors the embedded engine implements.
pub const SINK_CONNECTORS: [&str; 4] = ["blackhole", "stdout", "filesystem", "redis"];

/// Parses an interval text like `5 seconds`, `'1' minute` parts, `250 ms` into ms.
pub fn parse_interval_ms(text: &str) -> Option<i64> {
    let mut total: i64 = 0;
    let mut words = text.split_whitespace();
    let mut any = false;
    while let Some(num) = words.next() {
        let n: f64 = num.parse().ok()?;
        let unit = words.next().unwrap_or("second").to_ascii_lowercase();
        let ms = match unit.as_str() {
            "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1.0,
            "s" | "sec" | "secs" | "second" | "seconds" => 1000.0,
            "min" | "mins" | "minute" | "minutes" => 60_000.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000.0,
            "d" | "day" | "days" => 86_400_000.0,
            "w" | "week" | "weeks" => 604_800_000.0,
            _ => return None,
        };
        let v = n * ms;
        if !v.is_finite() {
            return None;
        }
        total = total.checked_add(v.round() as i64)?;
        any = true;
    }
    any.then_some(total)
}

fn sql_type_to_arrow(sql: &str) -> Option<DataType> {
    let upper = sql
        .to_ascii_uppercase()
        .replace(" [ ]", "[]")
        .replace(" < ", "<")
        .replace(" >", ">");
    let base = upper.split('(').next().unwrap_or("").trim();
    Some(match base {
        "TEXT" | "VARCHAR" | "STRING" | "CHAR" | "CHARACTER VARYING" => DataType::Utf8,
        "BIGINT" | "INT8" | "LONG" => DataType::Int64,
        "INT" | "INTEGER" | "INT4" => DataType::Int32,
        "SMALLINT" | "INT2" => DataType::Int16,
        "TINYINT" => DataType::Int8,
        "BIGINT UNSIGNED" => DataType::UInt64,
        "INT UNSIGNED" | "INTEGER UNSIGNED" => DataType::UInt32,
        "SMALLINT UNSIGNED" => DataType::UInt16,
        "TINYINT UNSIGNED" => DataType::UInt8,
        "DOUBLE" | "DOUBLE PRECISION" | "FLOAT8" => DataType::Float64,
        "FLOAT" | "REAL" | "FLOAT4" => DataType::Float32,
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TIMESTAMP" | "TIMESTAMPTZ" => leasewatch_schemas::timestamp_type(),
        "BIGINT[]" | "ARRAY<BIGINT>" => DataType::List(std::sync::Arc::new(
            arrow::datatypes::Field::new_list_field(DataType::Int64, true),
        )),
        _ => return None,
    })
}

/// Parses from just after `TABLE`.
pub(super) fn parse_create_table(
    stmt: &Stmt<'_>,
    mut i: usize,
    temporary: bool,
) -> Result<TableDef, SqlError> {
    let pos = stmt.pos(0);
    if stmt.is_kw(i, Keyword::IF) {
        i += 3; // IF NOT EXISTS
    }
    let name = stmt
        .ident(i)
        .ok_or_else(|| SqlError::new(&stmt.pos(i), "CREATE TABLE", "expected a table name"))?;
    i += 1;
    let mut columns = Vec::new();
    let mut watermark = None;
    if matches!(stmt.token(i), Some(Token::LParen)) {
        let close = matching_paren(stmt, i)?;
        for (a, b) in split_commas(stmt, i + 1, close) {
            if a == b {
                continue;
            }
            if stmt.is_word(a, "watermark") {
                watermark = Some(parse_watermark(stmt, a, b)?);
            } else if stmt.is_kw(a, Keyword::PRIMARY) {
                // table constraint: PRIMARY KEY (a, b)
                for j in a..b {
                    if let Some(n) = stmt.ident(j)
                        && let Some(c) = columns.iter_mut().find(|c: &&mut ColumnDef| c.name == n)
                    {
                        c.primary_key = true;
                    }
                }
            } else {
                columns.push(parse_column(stmt, a, b)?);
            }
        }
        i = close + 1;
    }
    let mut options = BTreeMap::new();
    if stmt.is_kw(i, Keyword::WITH) {
        if !matches!(stmt.token(i + 1), Some(Token::LParen)) {
            return Err(SqlError::new(
                &stmt.pos(i + 1),
                "WITH",
                "expected ( after WITH",
            ));
        }
        let close = matching_paren(stmt, i + 1)?;
        for (a, b) in split_commas(stmt, i + 2, close) {
            if a == b {
                continue;
            }
            let (k, v) = parse_option(stmt, a, b)?;
            options.insert(k, v);
        }
        i = close + 1;
    }
    if i < stmt.tokens.len() {
        return Err(SqlError::new(
            &stmt.pos(i),
            stmt.text_from(i)
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string(),
            "unexpected text after CREATE TABLE ... WITH (...)",
        ));
    }
    let connector = match options.get("connector") {
        Some(v) => v.as_text(),
        None => {
            return Err(SqlError::new(
                &pos,
                format!("CREATE TABLE {name}"),
                "missing WITH (connector = ...)",
            ));
        }
    };
    let kind = match connector.as_str() {
        SOURCE_CONNECTOR => TableKind::Source,
        SWEEP_CONNECTOR => TableKind::Sweep,
        "redis" if temporary => TableKind::Lookup,
        c if SINK_CONNECTORS.contains(&c) => TableKind::Sink,
        c => {
            return Err(SqlError::new(
                &pos,
                format!("connector = '{c}'"),
                format!(
                    "not supported by the embedded engine (sources: '{SOURCE_CONNECTOR}'; sinks: {}; lookup: 'redis')",
                    SINK_CONNECTORS.map(|s| format!("'{s}'")).join(", ")
                ),
            ));
        }
    };
    if let Some(wm) = &watermark {
        if kind != TableKind::Source {
            return Err(SqlError::new(
                &pos,
                "WATERMARK FOR",
                "only source tables have a watermark",
            ));
        }
        if !columns.iter().any(|c| c.name == wm.column) {
            return Err(SqlError::new(
                &pos,
                "WATERMARK FOR",
                format!("column `{}` is not declared in the table", wm.column),
            ));
        }
    }
    if kind == TableKind::Sink && connector == "filesystem" && !options.contains_key("path") {
        return Err(SqlError::new(
            &pos,
            "connector = 'filesystem'",
            "missing option `path`",
        ));
    }
    Ok(TableDef {
        name,
        pos,
        temporary,
        columns,
        watermark,
        options,
        kind,
        connector,
    })
}

fn matching_paren(stmt: &Stmt<'_>, open: usize) -> Result<usize, SqlError> {
    let mut depth = 0usize;
    for (j, t) in stmt.tokens.iter().enumerate().skip(open) {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Ok(j);
                }
            }
            _ => {}
        }
    }
    Err(SqlError::new(
        &stmt.pos(open),
        "(",
        "unbalanced parenthesis",
    ))
}

/// Token ranges between top-level commas in `[a, b)`.
fn split_commas(stmt: &Stmt<'_>, a: usize, b: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = a;
    for j in a..b {
        match stmt.token(j) {
            Some(Token::LParen) => depth += 1,
            Some(Token::RParen) => depth = depth.saturating_sub(1),
            Some(Token::Comma) if depth == 0 => {
                out.push((start, j));
                start = j + 1;
            }
            _ => {}
        }
    }
    out.push((start, b));
    out
}

fn parse_column(stmt: &Stmt<'_>, a: usize, b: usize) -> Result<ColumnDef, SqlError> {
    let name = stmt
        .ident(a)
        .ok_or_else(|| SqlError::new(&stmt.pos(a), "column", "expected a column name"))?;
    let mut j = a + 1;
    let mut type_words = Vec::new();
    let mut depth = 0;
    while j < b {
        let stop = depth == 0
            && matches!(
                stmt.keyword(j),
                Some(
                    Keyword::NOT
                        | Keyword::NULL
                        | Keyword::METADATA
                        | Keyword::PRIMARY
                        | Keyword::GENERATED
                        | Keyword::DEFAULT
                        | Keyword::AS
                )
            );
        if stop {
            break;
        }
        match stmt.token(j) {
            Some(Token::LParen) => depth += 1,
            Some(Token::RParen) => depth -= 1,
            _ => {}
        }
        type_words.push(stmt.token(j).map(|t| t.to_string()).unwrap_or_default());
        j += 1;
    }
    let sql_type = type_words
        .join(" ")
        .replace(" (", "(")
        .replace("( ", "(")
        .replace(" )", ")");
    let data_type = sql_type_to_arrow(&sql_type).ok_or_else(|| {
        SqlError::new(
            &stmt.pos(a + 1),
            format!("type {sql_type}"),
            "unsupported column type (TEXT, INT, BIGINT, DOUBLE, FLOAT, BOOLEAN, TIMESTAMP, ...)",
        )
    })?;
    let mut col = ColumnDef {
        name,
        sql_type,
        data_type,
        nullable: true,
        metadata_from: None,
        primary_key: false,
    };
    while j < b {
        match stmt.keyword(j) {
            Some(Keyword::NOT) if stmt.is_kw(j + 1, Keyword::NULL) => {
                col.nullable = false;
                j += 2;
            }
            Some(Keyword::NULL) => j += 1,
            Some(Keyword::PRIMARY) if stmt.is_kw(j + 1, Keyword::KEY) => {
                col.primary_key = true;
                j += 2;
            }
            Some(Keyword::METADATA) if stmt.is_kw(j + 1, Keyword::FROM) => {
                match stmt.token(j + 2) {
                    Some(Token::SingleQuotedString(s)) => col.metadata_from = Some(s.clone()),
                    _ => {
                        return Err(SqlError::new(
                            &stmt.pos(j),
                            "METADATA FROM",
                            "expected a quoted metadata key",
                        ));
                    }
                }
                j += 3;
            }
            Some(Keyword::GENERATED) | Some(Keyword::AS) => {
                return Err(SqlError::new(
                    &stmt.pos(j),
                    "GENERATED ALWAYS AS",
                    "virtual columns are not supported by the embedded engine",
                ));
            }
            _ => {
                return Err(SqlError::new(
                    &stmt.pos(j),
                    stmt.token(j).map(|t| t.to_string()).unwrap_or_default(),
                    format!("unsupported column option on `{}`", col.name),
                ));
            }
        }
    }
    Ok(col)
}

fn parse_watermark(stmt: &Stmt<'_>, a: usize, b: usize) -> Result<WatermarkDef, SqlError> {
    let construct = "WATERMARK FOR";
    if !stmt.is_kw(a + 1, Keyword::FOR) {
        return Err(SqlError::new(
            &stmt.pos(a),
            construct,
            "expected WATERMARK FOR column",
        ));
    }
    let column = stmt
        .ident(a + 2)
        .ok_or_else(|| SqlError::new(&stmt.pos(a + 2), construct, "expected a column name"))?;
    if a + 3 >= b {
        return Ok(WatermarkDef {
            column,
            bound_ms: 0,
        });
    }
    if !stmt.is_kw(a + 3, Keyword::AS) {
        return Err(SqlError::new(
            &stmt.pos(a + 3),
            construct,
            "expected AS (column - INTERVAL ...)",
        ));
    }
    // Accept `[(] column - INTERVAL '<n> <unit>' | '<n>' UNIT [)]`.
    let toks: Vec<&Token> = (a + 4..b)
        .filter_map(|j| stmt.token(j))
        .filter(|t| !matches!(t, Token::LParen | Token::RParen))
        .collect();
    let unsupported = || {
        SqlError::new(
            &stmt.pos(a + 4),
            construct,
            "only `column - INTERVAL '<n>' <unit>` (bounded out-of-orderness) is supported",
        )
    };
    match toks.as_slice() {
        [
            Token::Word(c),
            Token::Minus,
            Token::Word(kw),
            Token::SingleQuotedString(s),
            rest @ ..,
        ] if kw.keyword == Keyword::INTERVAL && c.value.eq_ignore_ascii_case(&column) => {
            let unit = match rest {
                [] => String::new(),
                [Token::Word(u)] => u.value.clone(),
                _ => return Err(unsupported()),
            };
            let text = format!("{s} {unit}");
            let bound_ms = parse_interval_ms(text.trim()).ok_or_else(unsupported)?;
            Ok(WatermarkDef { column, bound_ms })
        }
        [Token::Word(c)] if c.value.eq_ignore_ascii_case(&column) => Ok(WatermarkDef {
            column,
            bound_ms: 0,
        }),
        _ => Err(unsupported()),
    }
}

fn parse_option(stmt: &Stmt<'_>, a: usize, b: usize) -> Result<(String, OptionValue), SqlError> {
    let key = match stmt.token(a) {
        Some(Token::Word(w)) => w.value.to_ascii_lowercase(),
        Some(Token::SingleQuotedString(s)) | Some(Token::DoubleQuotedString(s)) => {
            s.to_ascii_lowercase()
        }
        _ => {
            return Err(SqlError::new(
                &stmt.pos(a),
                "WITH",
                "expected an option name",
            ));
        }
    };
    if !matches!(stmt.token(a + 1), Some(Token::Eq)) {
        return Err(SqlError::new(
            &stmt.pos(a),
            format!("option {key}"),
            "expected `=`",
        ));
    }
    let v = a + 2;
    let bad = || {
        SqlError::new(
            &stmt.pos(v),
            format!("option {key}"),
            "unsupported option value",
        )
    };
    let value = match (stmt.token(v), b - v) {
        (Some(Token::SingleQuotedString(s)), 1) => OptionValue::Str(s.clone()),
        (Some(Token::Number(n, _)), 1) => OptionValue::Number(n.clone()),
        (Some(Token::Word(w)), 1) => OptionValue::Word(w.value.clone()),
        (Some(Token::Word(w)), _) if w.keyword == Keyword::INTERVAL => {
            let text: Vec<String> = (v + 1..b)
                .filter_map(|j| match stmt.token(j) {
                    Some(Token::SingleQuotedString(s)) => Some(s.clone()),
                    Some(Token::Word(w)) => Some(w.value.clone()),
                    _ => None,
                })
                .collect();
            OptionValue::Interval(parse_interval_ms(&text.join(" ")).ok_or_else(bad)?)
        }
        _ => return Err(bad()),
    };
    Ok((key, value))
}
