//! `stages/README.md`, the stage library's reference, is each stage
//! crate's own documentation (the `//!` comment of its `src/lib.rs`), one
//! section per stage, so it cannot drift from the code. This test fails
//! when it has; `BLESS=1` writes it anew.

use std::path::Path;

use wasmpipe_tests::repo;

/// The stages: every crate under `stages/` that builds a component, and
/// every Python stage (a `pyproject.toml` with `[tool.wasmpipe]`).
fn stage_crates(stages: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(stages)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            std::fs::read_to_string(p.join("Cargo.toml")).is_ok_and(|t| t.contains("cdylib"))
                || std::fs::read_to_string(p.join("pyproject.toml")).is_ok_and(|t| t.contains("[tool.wasmpipe]"))
        })
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The documentation of the stage in `dir`: its crate's, or its Python
/// module's docstring (`app.py`).
fn stage_doc(dir: &Path) -> String {
    let app = dir.join("app.py");
    if !app.is_file() {
        return crate_doc(&dir.join("src/lib.rs"));
    }
    let text = std::fs::read_to_string(&app).unwrap();
    let doc = text
        .strip_prefix("\"\"\"")
        .and_then(|rest| rest.split_once("\"\"\"").map(|(doc, _)| doc.trim().to_string()))
        .unwrap_or_else(|| panic!("{} has no module docstring", app.display()));
    format!("{doc}\n\nWritten in Python (`stages/sdk-python`); `wasmpipe build` builds it with componentize-py.")
}

/// The leading `//!` comment of a Rust file, as Markdown.
fn crate_doc(lib: &Path) -> String {
    let text = std::fs::read_to_string(lib).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.strip_prefix("//! ").unwrap_or(l.trim_start_matches("//!")))
        .collect();
    assert!(!lines.is_empty(), "{} has no crate documentation", lib.display());
    // Headings inside a crate doc sit one level below the stage's own
    // (outside code blocks, where `#` starts a comment).
    let mut in_code = false;
    let mut out = Vec::with_capacity(lines.len());
    for line in lines {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        out.push(if !in_code && line.starts_with('#') { format!("##{line}") } else { line.to_string() });
    }
    out.join("\n").trim_end().to_string()
}

fn render(stages: &Path) -> String {
    let names = stage_crates(stages);
    let mut out = String::from(
        "# The stage library\n\n\
         One section per stage that ships in `stages/`, each the documentation\n\
         comment of the stage crate's `src/lib.rs` (this file is generated from\n\
         them by `tests/docs.rs`; edit the crate, then run\n\
         `BLESS=1 cargo test -p wasmpipe-tests --test docs`).\n\n",
    );
    for name in &names {
        out.push_str(&format!("- [`{name}`](#{name})\n"));
    }
    for name in &names {
        out.push_str(&format!("\n## {name}\n\n{}\n", stage_doc(&stages.join(name))));
    }
    out
}

#[test]
fn the_stage_reference_is_the_stage_crates_documentation() {
    let stages = repo().join("stages");
    let want = render(&stages);
    let path = stages.join("README.md");
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date with the stage crates' documentation; run `BLESS=1 cargo test -p wasmpipe-tests --test docs`",
        path.display()
    );
    for name in stage_crates(&stages) {
        assert!(have.contains(&format!("\n## {name}\n")), "stage {name} has a section");
    }
}
