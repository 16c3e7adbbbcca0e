//! The shape of `src/` (ARCHITECTURE.md, "Rules of the house"): dependencies point one way,
//! files and functions stay readable, and every reference stays inside the repository.
//!
//! The import graph is read from the source text: every `crate::a::b` path, every `super::`
//! path, and, in a folder's `mod.rs`, every path through one of its child modules. Each file is
//! a node (`src/allow/list.rs` is `allow::list`); an edge goes to the deepest module the path
//! names. Test code (`tests.rs` files and `#[cfg(test)] mod tests` blocks) is left out: a test
//! may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, lowest first: a module may import its own layer (without cycles) or a lower one.
const LAYERS: &[&[&str]] = &[
    &["util", "domain", "metrics", "logging", "pg", "net"],
    &["allow", "limits", "certs", "shared", "tls", "http"],
    &["config"],
    &["server"],
    &["cli"],
];

const MAX_FILE_LINES: usize = 700;
const MAX_FN_LINES: usize = 120;
/// What a file's opening comment says when it must be longer than `MAX_FILE_LINES`.
const LONG_FILE_REASON: &str = "longer than 700 lines because";
/// What a file's opening comment says about one of its functions that must be longer than
/// `MAX_FN_LINES`: "`name` is longer than 120 lines because ...".
const LONG_FN_REASON: &str = "is longer than 120 lines because";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The module path of a library file: `src/allow/list.rs` → `allow::list`, `src/allow/mod.rs` →
/// `allow`, `src/lib.rs` → `` (the crate root). `None` for binaries and test files.
fn module_of(file: &Path) -> Option<String> {
    let rel = file.strip_prefix(root().join("src")).ok()?;
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    match parts.as_slice() {
        [only] if only == "lib" => Some(String::new()),
        [only] if only == "main" => None,
        [first, ..] if first == "bin" => None,
        _ if parts.last().is_some_and(|p| p == "tests") => None,
        _ => {
            let mut parts = parts;
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            Some(parts.join("::"))
        }
    }
}

/// The file's code without comments, string contents and test modules, line by line (line
/// numbers kept, so messages can point at them).
fn code_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_test = false;
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            in_test = true;
        }
        if in_test {
            out.push(String::new());
            continue;
        }
        out.push(strip_comment_and_strings(line));
    }
    out
}

fn strip_comment_and_strings(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if in_str {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    in_str = false;
                    out.push('"');
                }
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push('"');
            }
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

/// Identifier-ish path segments following `start` in `line`: `crate::a::b::C` → `[a, b, C]`.
fn path_after(line: &str, start: usize) -> Vec<String> {
    let mut segments = Vec::new();
    let rest = &line[start..];
    for seg in rest.split("::") {
        let ident: String = seg
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            break;
        }
        let whole = ident.len() == seg.len();
        segments.push(ident);
        if !whole {
            break;
        }
    }
    segments
}

/// The deepest known module a path names (`["allow", "list", "AllowList"]` → `allow::list`).
fn resolve(segments: &[String], modules: &BTreeSet<String>) -> Option<String> {
    (1..=segments.len())
        .rev()
        .map(|n| segments[..n].join("::"))
        .find(|m| modules.contains(m))
}

struct Edge {
    to: String,
    line: usize,
}

/// The modules `module` (the file's code in `lines`) imports.
fn imports(module: &str, lines: &[String], modules: &BTreeSet<String>) -> Vec<Edge> {
    let children: BTreeSet<String> = modules
        .iter()
        .filter_map(|m| {
            let rest = if module.is_empty() {
                m.as_str()
            } else {
                m.strip_prefix(module)?.strip_prefix("::")?
            };
            (!rest.is_empty() && !rest.contains("::")).then(|| rest.to_string())
        })
        .collect();
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p).to_string();
    let mut edges = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let mut push = |segments: Vec<String>| {
            if let Some(to) = resolve(&segments, modules) {
                if to != module {
                    edges.push(Edge { to, line: i + 1 });
                }
            }
        };
        for (at, _) in line.match_indices("crate::") {
            assert!(
                !line[at..].starts_with("crate::{"),
                "{module}:{}: group imports from the crate root hide edges; one `use` per module",
                i + 1
            );
            push(path_after(line, at + "crate::".len()));
        }
        for (at, _) in line.match_indices("super::") {
            if at >= 2 && &line[at - 2..at] == "::" {
                continue;
            }
            let mut segments: Vec<String> = parent
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            segments.extend(path_after(line, at + "super::".len()));
            push(segments);
        }
        // A folder's mod.rs naming one of its children (`run::RunArgs`).
        for child in &children {
            for (at, _) in line.match_indices(&format!("{child}::")) {
                let before = line[..at].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let mut segments: Vec<String> = module
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                segments.extend(path_after(line, at));
                push(segments);
            }
        }
    }
    edges
}

struct Graph {
    files: BTreeMap<String, PathBuf>,
    edges: BTreeMap<String, Vec<Edge>>,
}

fn graph() -> Graph {
    let mut files = BTreeMap::new();
    for file in rust_files(&root().join("src")) {
        if let Some(m) = module_of(&file) {
            files.insert(m, file);
        }
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut edges = BTreeMap::new();
    for (m, file) in &files {
        let text = std::fs::read_to_string(file).unwrap();
        edges.insert(m.clone(), imports(m, &code_lines(&text), &modules));
    }
    Graph { files, edges }
}

/// Strongly connected components with more than one node (Tarjan), each as a cycle to print.
fn cycles(nodes: &[String], next: &dyn Fn(&str) -> Vec<String>) -> Vec<Vec<String>> {
    struct State<'a> {
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on_stack: BTreeSet<String>,
        out: Vec<Vec<String>>,
        next: &'a dyn Fn(&str) -> Vec<String>,
    }
    fn visit(s: &mut State<'_>, v: &str) {
        let i = s.index.len();
        s.index.insert(v.to_string(), i);
        s.low.insert(v.to_string(), i);
        s.stack.push(v.to_string());
        s.on_stack.insert(v.to_string());
        for w in (s.next)(v) {
            if !s.index.contains_key(&w) {
                visit(s, &w);
                let lw = s.low[&w];
                let lv = s.low[v];
                s.low.insert(v.to_string(), lv.min(lw));
            } else if s.on_stack.contains(&w) {
                let iw = s.index[&w];
                let lv = s.low[v];
                s.low.insert(v.to_string(), lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(&w);
                let done = w == v;
                component.push(w);
                if done {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
        next,
    };
    for n in nodes {
        if !s.index.contains_key(n) {
            visit(&mut s, n);
        }
    }
    s.out
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top(module)))
}

#[test]
fn no_import_cycles_between_files_or_folders() {
    let g = graph();
    let nodes: Vec<String> = g.files.keys().cloned().collect();
    let next = |v: &str| -> Vec<String> { g.edges[v].iter().map(|e| e.to.clone()).collect() };
    let file_cycles = cycles(&nodes, &next);
    let tops: Vec<String> = nodes
        .iter()
        .map(|m| top(m).to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let folder_next = |t: &str| -> Vec<String> {
        g.edges
            .iter()
            .filter(|(from, _)| top(from) == t)
            .flat_map(|(_, es)| es.iter().map(|e| top(&e.to).to_string()))
            .filter(|to| to != t)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let folder_cycles = cycles(&tops, &folder_next);
    let mut report = String::new();
    for c in file_cycles.iter().chain(&folder_cycles) {
        report.push_str(&format!("cycle: {}\n", c.join(" <-> ")));
        for from in c {
            for e in g.edges.get(from).into_iter().flatten() {
                if c.contains(&e.to) || c.contains(&top(&e.to).to_string()) {
                    report.push_str(&format!(
                        "  {}:{} imports {}\n",
                        g.files
                            .get(from)
                            .map_or(from.clone(), |f| f.display().to_string()),
                        e.line,
                        e.to
                    ));
                }
            }
        }
    }
    assert!(report.is_empty(), "import cycles in src/:\n{report}");
}

#[test]
fn dependencies_point_down_the_layers() {
    let g = graph();
    let mut wrong = Vec::new();
    for (from, edges) in &g.edges {
        if from.is_empty() {
            continue; // lib.rs declares every module
        }
        let Some(lf) = layer(from) else {
            wrong.push(format!(
                "{from}: not in any layer of this test; add it to LAYERS"
            ));
            continue;
        };
        for e in edges {
            let lt = layer(&e.to).unwrap_or(usize::MAX);
            if lt > lf {
                wrong.push(format!(
                    "{}:{}: {from} imports {} (a higher layer)",
                    g.files[from].display(),
                    e.line,
                    e.to
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Lines of each non-test function: from its `fn` line to the `}` at the same indentation.
fn long_functions(file: &Path, lines: &[String], opening: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let is_fn = [
            "fn ",
            "pub fn ",
            "async fn ",
            "pub async fn ",
            "pub(crate) fn ",
            "pub(crate) async fn ",
            "pub(super) fn ",
            "pub(super) async fn ",
            "const fn ",
            "pub const fn ",
        ]
        .iter()
        .any(|p| trimmed.starts_with(p));
        if !is_fn {
            continue;
        }
        // A declaration without a body (a trait method) ends with `;` before any `{`.
        let mut j = i;
        while j < lines.len() && !lines[j].contains('{') && !lines[j].trim_end().ends_with(';') {
            j += 1;
        }
        if j >= lines.len() || !lines[j].contains('{') {
            continue;
        }
        let closing = " ".repeat(indent) + "}";
        let one_line = lines[j].trim_end().ends_with('}');
        let end = if one_line {
            Some(j)
        } else {
            (j..lines.len()).find(|&k| lines[k] == closing)
        };
        if let Some(end) = end {
            let len = end - i + 1;
            let name: String = trimmed[trimmed.find("fn ").unwrap_or(0) + 3..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let excused = opening.contains(&format!("`{name}` {LONG_FN_REASON}"));
            if len > MAX_FN_LINES && !excused {
                out.push(format!(
                    "{}:{}: {} lines: {}",
                    file.display(),
                    i + 1,
                    len,
                    trimmed
                ));
            }
        }
    }
    out
}

#[test]
fn files_and_functions_stay_readable() {
    let mut problems = Vec::new();
    for file in rust_files(&root().join("src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let is_test_file = file.file_name().is_some_and(|n| n == "tests.rs");
        let code_len = text
            .lines()
            .position(|l| l.starts_with("#[cfg(test)]"))
            .unwrap_or_else(|| text.lines().count());
        let opening: String = text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join(" ");
        if !is_test_file && code_len > MAX_FILE_LINES && !opening.contains(LONG_FILE_REASON) {
            problems.push(format!(
                "{}: {code_len} lines of code (at most {MAX_FILE_LINES}, or say in the opening comment why it is {LONG_FILE_REASON} ...)",
                file.display()
            ));
        }
        if !is_test_file {
            problems.extend(long_functions(&file, &code_lines(&text), &opening));
        }
    }
    let main = std::fs::read_to_string(root().join("src/main.rs")).unwrap();
    let main_lines = main.lines().count();
    if main_lines >= 100 {
        problems.push(format!(
            "src/main.rs: {main_lines} lines (a table of contents is under 100)"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn lib_rs_lists_every_module() {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let docs: String = lib.lines().filter(|l| l.starts_with("//!")).collect();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| {
            l.strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("mod "))
        })
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert!(!declared.is_empty());
    for m in declared {
        assert!(
            docs.contains(&format!("`{m}`")),
            "src/lib.rs does not describe `{m}`"
        );
    }
}

/// Every text file in the repository that a reader follows: code, docs, configs, scripts.
fn repository_text_files() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() {
                if !matches!(name.as_str(), "target" | ".git" | "data" | "bench-results") {
                    stack.push(path);
                }
            } else if [
                ".rs",
                ".md",
                ".yaml",
                ".yml",
                ".sh",
                ".py",
                ".toml",
                ".sql",
                ".json",
                ".service",
                ".template",
                "Makefile",
                "Dockerfile",
                "run",
            ]
            .iter()
            .any(|ext| name.ends_with(ext))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn references_stay_inside_the_repository() {
    let outside = ["DESIGN.md", "STYLE.md", "../shared/", "seed/multi-tenant"];
    let mut found = Vec::new();
    for file in repository_text_files() {
        if file.ends_with("tests/it/layout.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            for o in outside {
                if line.contains(o) {
                    found.push(format!(
                        "{}:{}: names {o}, outside the repository",
                        file.display(),
                        i + 1
                    ));
                }
            }
            let lower = line.to_ascii_lowercase();
            for (at, _) in lower.match_indices("issue ") {
                let after = &lower[at + 6..];
                let word_start = at == 0 || !lower.as_bytes()[at - 1].is_ascii_alphabetic();
                if word_start && after.starts_with(|c: char| c.is_ascii_digit()) {
                    found.push(format!(
                        "{}:{}: cites an issue number: {}",
                        file.display(),
                        i + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Paths into the repository's own folders that a text names: `src/allow/list.rs`,
/// `deploy/postgres/notify.sql`.
fn repository_paths(line: &str) -> Vec<String> {
    const ROOTS: &[&str] = &[
        "src/",
        "tests/",
        "deploy/",
        "conf/",
        "scripts/",
        "bench/",
        "benches/",
        "examples/",
        "migrations/",
    ];
    let mut out = Vec::new();
    for root_dir in ROOTS {
        for (at, _) in line.match_indices(root_dir) {
            let before = line[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || "_./-~$".contains(c)) {
                continue;
            }
            let path: String = line[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "_./-".contains(*c))
                .collect();
            let path = path.trim_end_matches(['.', '/']).to_string();
            // Only file-like paths and folders, not globs or templates (`src/*.rs`, `<name>`).
            if path.len() > root_dir.len() && !line[at + path.len()..].starts_with(['*', '<', '{'])
            {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn paths_named_in_code_and_docs_exist() {
    let mut missing = Vec::new();
    for file in repository_text_files() {
        if file.ends_with("tests/it/layout.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            for path in repository_paths(line) {
                if !root().join(&path).exists() {
                    missing.push(format!(
                        "{}:{}: {path} does not exist",
                        file.display(),
                        i + 1
                    ));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle() {
    // The graph code on a made-up graph: a → b → c → a and d alone.
    let edges: BTreeMap<&str, Vec<&str>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into();
    let nodes: Vec<String> = edges.keys().map(|k| k.to_string()).collect();
    let next = |v: &str| -> Vec<String> { edges[v].iter().map(|s| s.to_string()).collect() };
    assert_eq!(cycles(&nodes, &next), vec![vec!["a", "b", "c"]]);
    // And path reading: a parent naming a child, `super::`, `crate::`.
    let modules: BTreeSet<String> = ["cli", "cli::run", "cli::certs", "certs", "certs::store"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let lines = vec![
        "    Run(run::RunArgs),".to_string(),
        "use crate::certs::store::Store;".to_string(),
    ];
    let mut got: Vec<String> = imports("cli", &lines, &modules)
        .into_iter()
        .map(|e| e.to)
        .collect();
    got.sort();
    assert_eq!(got, vec!["certs::store", "cli::run"]);
    let got: Vec<String> = imports("cli::run", &["use super::certs::X;".to_string()], &modules)
        .into_iter()
        .map(|e| e.to)
        .collect();
    assert_eq!(got, vec!["cli::certs"]);
}
