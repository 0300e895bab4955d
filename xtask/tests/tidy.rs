//! Tidy: the project's conventions, checked as a test so `cargo test` keeps them.
//!
//! - every Rust source file opens with a `//!` doc saying what it is;
//! - no ignored tests (an ignored test checks nothing);
//! - no trailing whitespace or tabs;
//! - every library crate's `lib.rs` says what the crate never does;
//! - `docs/ARCHITECTURE.md` names every crate and example, so the map stays true.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            // Build output and the fuzz packages (outside the workspace) are not ours to tidy.
            if name != "target" && name != "fuzz" && !name.starts_with('.') {
                rust_files(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

fn all_rust_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["crates", "examples", "xtask"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 5, "tidy found too few files: {files:?}");
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let missing: Vec<String> = all_rust_files()
        .into_iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            !text.trim_start().starts_with("//!")
        })
        .map(|p| relative(&p))
        .collect();
    assert!(
        missing.is_empty(),
        "files without a leading `//!` doc: {missing:#?}"
    );
}

#[test]
fn no_test_is_ignored() {
    let marker = ["#[", "ignore"].concat();
    let offenders: Vec<String> = all_rust_files()
        .into_iter()
        .filter(|p| std::fs::read_to_string(p).unwrap().contains(&marker))
        .map(|p| relative(&p))
        .collect();
    assert!(
        offenders.is_empty(),
        "ignored tests check nothing; make them run: {offenders:#?}"
    );
}

#[test]
fn no_trailing_whitespace_or_tabs() {
    let mut offenders = Vec::new();
    for path in all_rust_files() {
        for (n, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
            if line.ends_with(' ') || line.contains('\t') {
                offenders.push(format!("{}:{}", relative(&path), n + 1));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "trailing whitespace or tabs: {offenders:#?}"
    );
}

fn package_dirs(parent: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join(parent))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").exists())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_library_says_what_it_never_does() {
    for name in package_dirs("crates") {
        let lib = root().join("crates").join(&name).join("src/lib.rs");
        let text = std::fs::read_to_string(&lib).unwrap_or_default();
        let doc: String = text
            .lines()
            .take_while(|l| l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            doc.contains("never"),
            "{}: the crate doc must say what the crate never does",
            relative(&lib)
        );
        assert!(
            doc.contains("```"),
            "{}: the crate doc must open with an example",
            relative(&lib)
        );
    }
}

#[test]
fn the_architecture_map_names_every_crate_and_example() {
    let map = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    for (parent, name) in package_dirs("crates")
        .into_iter()
        .map(|n| ("crates", n))
        .chain(
            package_dirs("examples")
                .into_iter()
                .map(|n| ("examples", n)),
        )
    {
        let path = format!("{parent}/{name}");
        assert!(
            map.contains(&format!("`{path}`")),
            "docs/ARCHITECTURE.md does not mention `{path}`"
        );
    }
}
