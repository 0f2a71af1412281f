//! The SQL loader (`engine::sql::parse_files`, what `load_dir` runs on the `sql/`
//! folder) on arbitrary UTF-8 text, as one file or split into two at the first NUL.
#![no_main]

use leasewatch::engine::sql::parse_files;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let files: Vec<(String, String)> = match text.split_once('\0') {
        Some((a, b)) => vec![("a.sql".into(), a.into()), ("b.sql".into(), b.into())],
        None => vec![("rules.sql".into(), text.into())],
    };
    if let Ok(program) = parse_files(&files) {
        // Every construct found has a name, and positions point into the files.
        for t in &program.tables {
            assert!(t.pos.line >= 1);
        }
        for v in &program.views {
            assert!(v.pos.line >= 1 && !v.name.is_empty());
        }
    }
});
