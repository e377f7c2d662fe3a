//! The repository is whole: every relative link in its Markdown files names a file or directory
//! that exists in it, and nothing points outside it.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// Every `.md` file of the repository (not under `target/` or hidden directories).
fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            markdown_files(&path, out);
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
}

/// The targets of `[text](target)` links in `text`.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            targets.push(rest[..end].to_string());
        }
    }
    targets
}

#[test]
fn every_relative_link_in_the_docs_names_something_in_the_repository() {
    let root = root();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    assert!(files.iter().any(|f| f.ends_with("docs/design.md")), "docs/design.md is missing");
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            if path.is_empty() {
                continue;
            }
            let resolved = file.parent().unwrap().join(path);
            let inside = resolved.canonicalize().is_ok_and(|p| p.starts_with(&root));
            if !inside {
                broken.push(format!("{}: {target}", file.strip_prefix(&root).unwrap().display()));
            }
        }
    }
    assert!(broken.is_empty(), "links that leave the repository or name nothing:\n{}", broken.join("\n"));
}

#[test]
fn nothing_in_the_repository_points_at_files_beside_it() {
    let root = root();
    let mut files = Vec::new();
    markdown_files(&root, &mut files);
    for dir in ["engine", "transport", "node", "cli", "bench", "tests", "fuzz"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if name == "target" || name.starts_with('.') {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                } else if name.ends_with(".rs") || name.ends_with(".toml") {
                    files.push(path);
                }
            }
        }
    }
    files.push(root.join(".ci/run"));
    // Spelled in two pieces so this file does not match itself.
    let outside = ["../", "shared"].concat();
    let hits: Vec<_> = files
        .iter()
        .filter(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains(&outside)))
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(hits.is_empty(), "files that point outside the repository: {hits:?}");
}

#[test]
fn an_embedder_of_lethe_node_builds_none_of_the_cli_or_benchmark_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(root())
        .args(["tree", "-p", "lethe-node", "-e", "normal", "--prefix", "none", "--offline"])
        .output()
        .expect("running cargo tree");
    assert!(out.status.success(), "cargo tree: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    for name in ["automerge", "plotters", "clap", "indicatif", "anyhow", "metrics-exporter-prometheus", "hyper"] {
        assert!(
            !tree.lines().any(|l| l.split_whitespace().next() == Some(name)),
            "lethe-node depends on {name}:\n{tree}"
        );
    }
    assert!(tree.lines().any(|l| l.starts_with("lethe-engine")), "the tree lists lethe-node's dependencies:\n{tree}");
}

/// The packages `cargo tree -p lethe-cli -e normal` lists, with `extra` flags.
fn cli_tree(extra: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(root())
        .args(["tree", "-p", "lethe-cli", "-e", "normal", "--prefix", "none", "--offline"])
        .args(extra)
        .output()
        .expect("running cargo tree");
    assert!(out.status.success(), "cargo tree: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_cli_without_default_features_builds_none_of_the_benchmark_dependencies() {
    let has = |tree: &str, name: &str| tree.lines().any(|l| l.split_whitespace().next() == Some(name));
    let lean = cli_tree(&["--no-default-features"]);
    for name in ["automerge", "plotters", "lethe-bench"] {
        assert!(!has(&lean, name), "lethe-cli --no-default-features depends on {name}:\n{lean}");
    }
    assert!(has(&lean, "lethe-node"), "the tree lists lethe-cli's dependencies:\n{lean}");
    // The default build keeps `lethe bench` and `lethe demo`.
    let full = cli_tree(&[]);
    assert!(has(&full, "automerge") && has(&full, "lethe-bench"), "the default lethe-cli has the benchmarks:\n{full}");
}
