//! The documentation checks itself: every Markdown file's Rust blocks are compiled as doc
//! tests (`tests/src/lib.rs` includes each file), its relative links lead to files of this
//! repository, and nothing in the repository points outside it.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the repository")
        .to_path_buf()
}

/// README.md, fuzz/README.md and every Markdown file of docs/, relative to the root.
fn markdown_files() -> Vec<String> {
    let mut files = vec!["README.md".to_string(), "fuzz/README.md".to_string()];
    let docs = std::fs::read_dir(root().join("docs")).expect("docs/ exists");
    for entry in docs {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".md") {
            files.push(format!("docs/{name}"));
        }
    }
    files.sort();
    files
}

#[test]
fn every_markdown_file_is_compiled_as_doc_tests() {
    let lib = std::fs::read_to_string(root().join("tests/src/lib.rs")).unwrap();
    for file in markdown_files() {
        let include = format!("#[doc = include_str!(\"../../{file}\")]");
        assert!(
            lib.contains(&include),
            "{file} has no doc test: add `{include}` on an item of tests/src/lib.rs"
        );
    }
}

#[test]
fn code_blocks_name_their_language() {
    // An unnamed block is compiled as Rust by rustdoc, but shown as plain text: name it
    // `rust` if it is Rust, `text` (or `sh`, `toml`, ...) if it is not.
    for file in markdown_files() {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        let mut open = false;
        for (n, line) in text.lines().enumerate() {
            let fence = line.trim_start();
            if !fence.starts_with("```") {
                continue;
            }
            if !open {
                assert!(
                    fence.len() > 3,
                    "{file}:{}: a code block without a language",
                    n + 1
                );
            }
            open = !open;
        }
        assert!(!open, "{file}: a code block is not closed");
    }
}

#[test]
fn relative_links_lead_to_files_of_the_repository() {
    let root = root().canonicalize().unwrap();
    for file in markdown_files() {
        let text = std::fs::read_to_string(root.join(&file)).unwrap();
        let dir = root.join(&file).parent().unwrap().to_path_buf();
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(start) = rest.find("](") {
                rest = &rest[start + 2..];
                let Some(end) = rest.find(')') else { break };
                let target = &rest[..end];
                rest = &rest[end..];
                if target.contains("://") || target.starts_with('#') || target.is_empty() {
                    continue;
                }
                let path = target.split('#').next().unwrap();
                let resolved = dir.join(path);
                assert!(
                    resolved.exists(),
                    "{file}:{}: the link `{target}` leads nowhere",
                    n + 1
                );
                let resolved = resolved.canonicalize().unwrap();
                assert!(
                    resolved.starts_with(&root),
                    "{file}:{}: the link `{target}` leads outside the repository",
                    n + 1
                );
            }
        }
    }
}

#[test]
fn nothing_points_outside_the_repository() {
    // Documents that live elsewhere are not there for a reader of this repository.
    let outside = [concat!("DESIGN", ".md"), concat!("../", "shared")];
    let mut stack = vec![root()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if !name.starts_with('.') && name != "target" {
                    stack.push(path);
                }
                continue;
            }
            let text_file = [".rs", ".md", ".toml", ".stderr"]
                .iter()
                .any(|ext| name.ends_with(ext));
            if !text_file {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for needle in outside {
                assert!(
                    !text.contains(needle),
                    "{} mentions `{needle}`, which is not in this repository",
                    path.display()
                );
            }
        }
    }
}
