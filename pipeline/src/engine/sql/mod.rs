//! The SQL loader: reads a folder of `.sql` files in Arroyo's dialect and splits it into
//! table declarations, views and `INSERT INTO sink SELECT ...` pipelines.
//!
//! DataFusion's stock parser rejects Arroyo's own clauses (`WATERMARK FOR`, `METADATA
//! FROM`, quoted option keys such as `'lookup.cache.ttl'`), so `CREATE TABLE` is parsed
//! here from sqlparser's tokens, which carry file positions. Views and queries are handed
//! to DataFusion as text; every error names the file, line and construct.

mod table;

pub use table::{
    ColumnDef, OptionValue, SINK_CONNECTORS, SOURCE_CONNECTOR, SWEEP_CONNECTOR, TableDef,
    TableKind, WatermarkDef, parse_interval_ms,
};

/// The connector name of the pipeline's own ping source.
pub fn table_source_connector() -> &'static str {
    SOURCE_CONNECTOR
}

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Whitespace};
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// Where a statement or construct is: file and 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pos {
    /// File name (as given; for a folder, the file name inside it).
    pub file: Arc<str>,
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A problem in the SQL: the user's to fix. Names the place and the construct.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pos}: {construct}: {message}")]
pub struct SqlError {
    /// Where.
    pub pos: Pos,
    /// The construct (e.g. `WATERMARK FOR`, `connector = 'kafka'`, `LIMIT`).
    pub construct: String,
    /// What is wrong and, where possible, what to do.
    pub message: String,
}

impl SqlError {
    pub(crate) fn new(pos: &Pos, construct: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pos: pos.clone(),
            construct: construct.into(),
            message: message.into(),
        }
    }
}

/// A `CREATE VIEW name AS query`.
#[derive(Debug, Clone)]
pub struct ViewDef {
    /// View name.
    pub name: String,
    /// Where the statement starts.
    pub pos: Pos,
    /// The whole statement, for DataFusion.
    pub sql: String,
    /// The query after `AS`.
    pub query: String,
}

/// An `INSERT INTO sink query`.
#[derive(Debug, Clone)]
pub struct InsertDef {
    /// Sink table name.
    pub sink: String,
    /// Where the statement starts.
    pub pos: Pos,
    /// The query part (after the sink name), for DataFusion.
    pub query: String,
}

/// Everything declared by a set of SQL files, in file order (files sorted by name).
#[derive(Debug, Clone, Default)]
pub struct Program {
    /// `CREATE TABLE`s.
    pub tables: Vec<TableDef>,
    /// `CREATE VIEW`s.
    pub views: Vec<ViewDef>,
    /// `INSERT INTO`s.
    pub inserts: Vec<InsertDef>,
}

impl Program {
    /// The table called `name` (case-insensitive, as DataFusion folds unquoted names).
    pub fn table(&self, name: &str) -> Option<&TableDef> {
        self.tables
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
    }
}

/// Why loading failed: the SQL (user's) or reading the folder (environment).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A problem in the SQL text.
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// The folder or a file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The folder holds no `.sql` file.
    #[error("no .sql file in {0}")]
    Empty(String),
}

/// Loads every `.sql` file of `dir`, sorted by file name.
pub fn load_dir(dir: &Path) -> Result<Program, LoadError> {
    let io = |source| LoadError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(LoadError::Empty(dir.display().to_string()));
    }
    let mut texts = Vec::with_capacity(files.len());
    for f in &files {
        let text = std::fs::read_to_string(f).map_err(|source| LoadError::Io {
            path: f.display().to_string(),
            source,
        })?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| f.display().to_string());
        texts.push((name, text));
    }
    Ok(parse_files(&texts)?)
}

/// Parses SQL texts given as `(file name, text)`, in the given order.
pub fn parse_files(files: &[(String, String)]) -> Result<Program, SqlError> {
    let mut program = Program::default();
    for (name, text) in files {
        parse_file(name, text, &mut program)?;
    }
    Ok(program)
}

/// One statement: its tokens without whitespace/comments, and the source text.
pub(crate) struct Stmt<'a> {
    pub tokens: Vec<TokenWithSpan>,
    pub text: &'a str,
    pub file: Arc<str>,
    line_starts: Vec<usize>,
}

impl Stmt<'_> {
    pub fn pos(&self, i: usize) -> Pos {
        let loc = self
            .tokens
            .get(i)
            .or(self.tokens.last())
            .map(|t| (t.span.start.line, t.span.start.column))
            .unwrap_or((0, 0));
        Pos {
            file: self.file.clone(),
            line: loc.0,
            column: loc.1,
        }
    }

    /// Byte offset in the file text of the start of token `i`.
    fn offset(&self, i: usize) -> usize {
        self.tokens
            .get(i)
            .map(|t| self.byte_at(t.span.start.line, t.span.start.column))
            .unwrap_or(self.text.len())
    }

    fn end_offset(&self) -> usize {
        self.tokens
            .last()
            .map(|t| self.byte_at(t.span.end.line, t.span.end.column))
            .unwrap_or(self.text.len())
    }

    fn byte_at(&self, line: u64, column: u64) -> usize {
        let Some(&start) = usize::try_from(line)
            .ok()
            .and_then(|l| l.checked_sub(1))
            .and_then(|l| self.line_starts.get(l))
        else {
            return self.text.len();
        };
        let rest = &self.text[start..];
        let skip = usize::try_from(column.saturating_sub(1)).unwrap_or(usize::MAX);
        rest.char_indices()
            .nth(skip)
            .map(|(b, _)| start + b)
            .unwrap_or(self.text.len())
    }

    /// Source text from token `i` to the end of the statement.
    pub fn text_from(&self, i: usize) -> &str {
        let (a, b) = (self.offset(i), self.end_offset());
        self.text.get(a..b.max(a)).unwrap_or("")
    }

    pub fn keyword(&self, i: usize) -> Option<Keyword> {
        match self.tokens.get(i).map(|t| &t.token) {
            Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.keyword),
            _ => None,
        }
    }

    /// True when token `i` is the unquoted word `w` (for keywords sqlparser lacks).
    pub fn is_word(&self, i: usize, w: &str) -> bool {
        matches!(self.tokens.get(i).map(|t| &t.token), Some(Token::Word(x)) if x.quote_style.is_none() && x.value.eq_ignore_ascii_case(w))
    }

    pub fn is_kw(&self, i: usize, kw: Keyword) -> bool {
        self.keyword(i) == Some(kw)
    }

    /// The identifier at `i` (a word, quoted or not; unquoted ones lower-cased as
    /// DataFusion does).
    pub fn ident(&self, i: usize) -> Option<String> {
        match self.tokens.get(i).map(|t| &t.token) {
            Some(Token::Word(w)) if w.quote_style.is_some() => Some(w.value.clone()),
            Some(Token::Word(w)) => Some(w.value.to_ascii_lowercase()),
            _ => None,
        }
    }

    pub fn token(&self, i: usize) -> Option<&Token> {
        self.tokens.get(i).map(|t| &t.token)
    }
}

fn parse_file(name: &str, text: &str, program: &mut Program) -> Result<(), SqlError> {
    let file: Arc<str> = Arc::from(name);
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| {
            SqlError::new(
                &Pos {
                    file: file.clone(),
                    line: e.location.line,
                    column: e.location.column,
                },
                "SQL text",
                e.message.clone(),
            )
        })?;
    let mut line_starts = vec![0];
    line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
    let mut current = Vec::new();
    let flush = |toks: Vec<TokenWithSpan>, program: &mut Program| -> Result<(), SqlError> {
        if toks.is_empty() {
            return Ok(());
        }
        let stmt = Stmt {
            tokens: toks,
            text,
            file: file.clone(),
            line_starts: line_starts.clone(),
        };
        parse_statement(&stmt, program)
    };
    for t in tokens {
        match &t.token {
            Token::Whitespace(Whitespace::Space | Whitespace::Tab | Whitespace::Newline)
            | Token::Whitespace(_) => {}
            Token::SemiColon => flush(std::mem::take(&mut current), program)?,
            Token::EOF => {}
            _ => current.push(t),
        }
    }
    flush(current, program)
}

fn parse_statement(stmt: &Stmt<'_>, program: &mut Program) -> Result<(), SqlError> {
    let pos = stmt.pos(0);
    match stmt.keyword(0) {
        Some(Keyword::CREATE) => {
            let mut i = 1;
            if stmt.is_kw(i, Keyword::OR) {
                return Err(SqlError::new(
                    &stmt.pos(i),
                    "CREATE OR REPLACE",
                    "not supported; declare each table or view once",
                ));
            }
            let temporary = matches!(stmt.keyword(i), Some(Keyword::TEMPORARY | Keyword::TEMP));
            if temporary {
                i += 1;
            }
            match stmt.keyword(i) {
                Some(Keyword::TABLE) => {
                    let def = table::parse_create_table(stmt, i + 1, temporary)?;
                    if program.table(&def.name).is_some() {
                        return Err(SqlError::new(
                            &pos,
                            format!("CREATE TABLE {}", def.name),
                            "a table of this name is already declared",
                        ));
                    }
                    program.tables.push(def);
                    Ok(())
                }
                Some(Keyword::VIEW) if !temporary => {
                    let name = stmt.ident(i + 1).ok_or_else(|| {
                        SqlError::new(&stmt.pos(i + 1), "CREATE VIEW", "expected a view name")
                    })?;
                    if !stmt.is_kw(i + 2, Keyword::AS) {
                        return Err(SqlError::new(
                            &stmt.pos(i + 2),
                            format!("CREATE VIEW {name}"),
                            "expected CREATE VIEW name AS SELECT ... (a column list is not supported)",
                        ));
                    }
                    program.views.push(ViewDef {
                        name,
                        pos,
                        sql: stmt.text_from(0).to_string(),
                        query: stmt.text_from(i + 3).to_string(),
                    });
                    Ok(())
                }
                _ => Err(SqlError::new(
                    &stmt.pos(i),
                    format!(
                        "CREATE {}",
                        stmt.text_from(i).split_whitespace().next().unwrap_or("")
                    ),
                    "only CREATE [TEMPORARY] TABLE and CREATE VIEW are supported",
                )),
            }
        }
        Some(Keyword::INSERT) => {
            if !stmt.is_kw(1, Keyword::INTO) {
                return Err(SqlError::new(
                    &stmt.pos(1),
                    "INSERT",
                    "expected INSERT INTO sink SELECT ...",
                ));
            }
            let sink = stmt.ident(2).ok_or_else(|| {
                SqlError::new(&stmt.pos(2), "INSERT INTO", "expected a sink table name")
            })?;
            if matches!(stmt.token(3), Some(Token::LParen)) {
                return Err(SqlError::new(
                    &stmt.pos(3),
                    "INSERT INTO t (columns)",
                    "a column list is not supported: select the sink's columns in order",
                ));
            }
            program.inserts.push(InsertDef {
                sink,
                pos,
                query: stmt.text_from(3).to_string(),
            });
            Ok(())
        }
        Some(Keyword::SELECT | Keyword::WITH) => Err(SqlError::new(
            &pos,
            "SELECT",
            "a bare query has no sink: write INSERT INTO <sink table> SELECT ...",
        )),
        _ => Err(SqlError::new(
            &pos,
            stmt.text_from(0)
                .split_whitespace()
                .next()
                .unwrap_or("statement")
                .to_string(),
            "unsupported statement (expected CREATE TABLE, CREATE VIEW or INSERT INTO)",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Program, SqlError> {
        parse_files(&[("t.sql".to_string(), text.to_string())])
    }

    #[test]
    fn splits_statements_and_keeps_positions() {
        let p = parse(
            "-- comment; with a semicolon\nCREATE TABLE pings (\n  device_id TEXT,\n  event_time TIMESTAMP,\n  WATERMARK FOR event_time AS (event_time - INTERVAL '5' SECOND)\n) WITH (connector = 'leasewatch');\n\nCREATE TABLE out WITH (connector = 'blackhole');\nCREATE VIEW v AS SELECT device_id FROM pings WHERE device_id <> ';';\nINSERT INTO out\nSELECT * FROM v;\n",
        )
        .unwrap();
        assert_eq!(p.tables.len(), 2);
        let t = &p.tables[0];
        assert_eq!(t.name, "pings");
        assert_eq!(t.pos.line, 2);
        assert_eq!(t.columns.len(), 2);
        assert_eq!(
            t.watermark,
            Some(WatermarkDef {
                column: "event_time".into(),
                bound_ms: 5000
            })
        );
        assert_eq!(t.kind, TableKind::Source);
        assert_eq!(p.views[0].name, "v");
        assert!(
            p.views[0].sql.ends_with("device_id <> ';'"),
            "{}",
            p.views[0].sql
        );
        assert_eq!(p.inserts[0].sink, "out");
        assert_eq!(p.inserts[0].pos.line, 10);
        assert_eq!(p.inserts[0].query, "SELECT * FROM v");
    }

    #[test]
    fn arroyo_lookup_table_is_parsed() {
        let p = parse(
            "CREATE TEMPORARY TABLE lease (\n  key TEXT METADATA FROM 'key' PRIMARY KEY,\n  lease_id TEXT NOT NULL\n) WITH (connector = 'redis', address = 'redis://localhost', format = 'json', 'lookup.cache.max_bytes' = 1000000, 'lookup.cache.ttl' = interval '5 seconds');",
        )
        .unwrap();
        let t = &p.tables[0];
        assert_eq!(t.kind, TableKind::Lookup);
        assert_eq!(t.columns[0].metadata_from.as_deref(), Some("key"));
        assert!(t.columns[0].primary_key);
        assert!(!t.columns[1].nullable);
        assert_eq!(
            t.options.get("lookup.cache.ttl"),
            Some(&OptionValue::Interval(5000))
        );
        assert_eq!(
            t.options.get("lookup.cache.max_bytes"),
            Some(&OptionValue::Number("1000000".into()))
        );
    }

    #[test]
    fn unsupported_constructs_name_file_line_and_construct() {
        let e = parse("\n\nCREATE TABLE k (x INT) WITH (connector = 'kafka');").unwrap_err();
        assert_eq!(e.pos.line, 3);
        assert!(e.construct.contains("kafka"), "{e}");
        let e = parse("SELECT 1").unwrap_err();
        assert_eq!(e.construct, "SELECT");
        let e = parse("DROP TABLE x").unwrap_err();
        assert!(e.to_string().starts_with("t.sql:1:1: DROP"), "{e}");
        let e = parse(
            "CREATE TABLE s (a TEXT, b TEXT GENERATED ALWAYS AS (a)) WITH (connector='leasewatch');",
        )
        .unwrap_err();
        assert!(e.construct.contains("GENERATED"), "{e}");
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval_ms("5 seconds"), Some(5000));
        assert_eq!(parse_interval_ms("1 minute"), Some(60_000));
        assert_eq!(parse_interval_ms("2 HOURS"), Some(7_200_000));
        assert_eq!(parse_interval_ms("250 ms"), Some(250));
        assert_eq!(parse_interval_ms("1 day"), Some(86_400_000));
        assert_eq!(parse_interval_ms("x"), None);
    }
}
