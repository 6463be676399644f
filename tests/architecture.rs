//! The module graph of `src/`, read from the code: no import cycles, and ARCHITECTURE.md shows
//! the graph as it is.
//!
//! A module is a file (`src/proxy/mod.rs` is `proxy`, `src/translate/sse/body.rs` is
//! `translate::sse::body`). It uses another when its code names a path into it: `crate::…`,
//! `super::…`, `self::…`, or a child module declared in the same file (`mod auth;` then
//! `auth::…`). Re-exports (`pub use`) and `mod` declarations are not uses: they name a child's
//! item under its parent and run nothing. A file's `#[cfg(test)]` module at its end is not
//! read (tests may reach anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn module_of(src: &Path, file: &Path) -> Option<Module> {
    let relative = file.strip_prefix(src).ok()?;
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    match last.as_str() {
        // The crate root and the binary only wire modules together.
        "lib.rs" | "main.rs" if parts.is_empty() => return None,
        "mod.rs" => {}
        name => parts.push(name.strip_suffix(".rs")?.to_owned()),
    }
    Some(parts)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code a module's uses are read from: comments and the trailing test module removed.
fn code_of(text: &str) -> String {
    let mut code = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "#[cfg(test)]" {
            break;
        }
        let line = line.split("//").next().unwrap_or("");
        let trimmed = line.trim_start();
        let re_export = ["pub use ", "pub(crate) use ", "pub(super) use "]
            .iter()
            .any(|p| trimmed.starts_with(p));
        if !re_export {
            code.push_str(line);
        }
        code.push('\n');
    }
    code
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Expands the path that starts at `at` (`a::b::{c, d::e}`) into its full paths.
fn paths_at(code: &[u8], mut at: usize) -> Vec<Vec<String>> {
    let mut prefix = Vec::new();
    loop {
        let start = at;
        while at < code.len() && is_ident_byte(code[at]) {
            at += 1;
        }
        if at == start {
            break;
        }
        prefix.push(String::from_utf8_lossy(&code[start..at]).into_owned());
        if code[at..].starts_with(b"::") {
            at += 2;
            if code.get(at) == Some(&b'{') {
                let mut depth = 0;
                let open = at;
                for (i, &b) in code[open..].iter().enumerate() {
                    match b {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                let inner = &code[open + 1..open + i];
                                return split_group(inner)
                                    .into_iter()
                                    .flat_map(|item| {
                                        paths_at(item, 0).into_iter().map(|tail| {
                                            let mut path = prefix.clone();
                                            path.extend(tail);
                                            path
                                        })
                                    })
                                    .collect();
                            }
                        }
                        _ => {}
                    }
                }
                break;
            }
        } else {
            break;
        }
    }
    vec![prefix]
}

/// The top-level, comma-separated items of a `{…}` group, trimmed.
fn split_group(inner: &[u8]) -> Vec<&[u8]> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, &b) in inner.iter().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => depth -= 1,
            b',' if depth == 0 => {
                items.push(inner[start..i].trim_ascii());
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(inner[start..].trim_ascii());
    items.retain(|item| !item.is_empty());
    items
}

/// Every module path `code` names, absolute from the crate root.
fn named_paths(module: &Module, code: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !is_ident_byte(bytes[i])
            || (i > 0 && (is_ident_byte(bytes[i - 1]) || bytes[i - 1] == b':'))
        {
            i += 1;
            continue;
        }
        let end = (i..bytes.len())
            .find(|&j| !is_ident_byte(bytes[j]))
            .unwrap_or(bytes.len());
        let word = &code[i..end];
        if !bytes[end..].starts_with(b"::") {
            i = end;
            continue;
        }
        for path in paths_at(bytes, i) {
            let mut segments = path.into_iter().peekable();
            let mut absolute: Vec<String> = match word {
                "crate" => {
                    segments.next();
                    Vec::new()
                }
                "self" => {
                    segments.next();
                    module.clone()
                }
                "super" => {
                    let mut base = module.clone();
                    while segments.peek().is_some_and(|s| s == "super") {
                        segments.next();
                        base.pop();
                    }
                    base
                }
                child if children.contains(child) => module.clone(),
                _ => break,
            };
            absolute.extend(segments.filter(|s| s != "self"));
            found.push(absolute);
        }
        i = end;
    }
    found
}

/// `module → modules it uses`, for every module of `src`.
fn module_graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let sources: BTreeMap<Module, String> = files
        .iter()
        .filter_map(|file| {
            let module = module_of(src, file)?;
            let text = std::fs::read_to_string(file).expect("a source file is readable");
            Some((module, text))
        })
        .collect();
    let modules: BTreeSet<Module> = sources.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, text) in &sources {
        let children: BTreeSet<String> = text
            .lines()
            .filter_map(|line| {
                let line = line.trim_start();
                let rest = line
                    .strip_prefix("pub mod ")
                    .or_else(|| line.strip_prefix("pub(crate) mod "))
                    .or_else(|| line.strip_prefix("mod "))?;
                rest.strip_suffix(';').map(str::to_owned)
            })
            .collect();
        let mut uses = BTreeSet::new();
        for path in named_paths(module, &code_of(text), &children) {
            // The longest module the path goes into; a path to the crate root's re-exports
            // (`crate::Config`) has none and names no dependency of its own.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|prefix| modules.contains(prefix));
            if let Some(target) = target {
                if &target != module {
                    uses.insert(target);
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

fn name(module: &Module) -> String {
    module.join("::")
}

fn render(graph: &BTreeMap<Module, BTreeSet<Module>>) -> String {
    let mut out = String::new();
    for (module, uses) in graph {
        let uses: Vec<String> = uses.iter().map(name).collect();
        let uses = if uses.is_empty() {
            "(nothing)".to_owned()
        } else {
            uses.join(", ")
        };
        out.push_str(&format!("{} → {uses}\n", name(module)));
    }
    out
}

/// One cycle of the graph, if there is any, as the modules along it.
fn find_cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        module: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match marks.get(module) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = stack.iter().position(|m| m == module).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(module.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(module.clone(), Mark::Open);
        stack.push(module.clone());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(module.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|module| visit(module, graph, &mut marks, &mut Vec::new()))
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_of_src_is_part_of_an_import_cycle() {
    let graph = module_graph(&src_dir());
    if let Some(cycle) = find_cycle(&graph) {
        let cycle: Vec<String> = cycle.iter().map(name).collect();
        panic!(
            "import cycle: {}\n\nthe graph:\n{}",
            cycle.join(" → "),
            render(&graph)
        );
    }
}

/// The marker in ARCHITECTURE.md after which the current graph follows, in a `text` block.
const MARKER: &str = "<!-- module graph: generated from src/ by tests/architecture.rs -->";

#[test]
fn architecture_md_shows_the_module_graph_of_the_code() {
    let graph = render(&module_graph(&src_dir()));
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md");
    let doc = std::fs::read_to_string(&doc_path).expect("ARCHITECTURE.md exists");
    let after = doc
        .split_once(MARKER)
        .map(|(_, after)| after)
        .expect("ARCHITECTURE.md has the module graph marker");
    let shown = after
        .split_once("```text\n")
        .and_then(|(_, block)| block.split_once("```"))
        .map(|(block, _)| block)
        .expect("a ```text block follows the marker");
    assert_eq!(
        shown, graph,
        "ARCHITECTURE.md's module graph is not the code's; the code's is:\n{graph}"
    );
}

#[test]
fn the_reader_finds_uses_the_way_the_compiler_does() {
    let module: Module = vec!["proxy".into(), "forward".into()];
    let children: BTreeSet<String> = ["auth".to_owned()].into();
    let code = code_of(
        "use super::{auth, ClientInfo};\n\
         use crate::translate::{self, Exchange};\n\
         pub use crate::ops::metrics::Metrics;\n\
         // crate::headers is only mentioned\n\
         let x = crate::error::describe(y);\n\
         auth::check(z);\n\
         #[cfg(test)]\n\
         mod tests { use crate::listen; }\n",
    );
    let paths = named_paths(&module, &code, &children);
    let expected: Vec<Vec<String>> = [
        &["proxy", "auth"][..],
        &["proxy", "ClientInfo"],
        &["translate"],
        &["translate", "Exchange"],
        &["error", "describe"],
        &["proxy", "forward", "auth", "check"],
    ]
    .iter()
    .map(|p| p.iter().map(|s| s.to_string()).collect())
    .collect();
    assert_eq!(paths, expected);
}
