//! The repository is whole: every link in its tracked Markdown files (inline, reference-style,
//! HTML `src`/`href`) that is not a web link names a file or directory git tracks, and nothing
//! points outside it.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// The files git tracks, relative to the root: what a clone holds (an untracked file in the
/// working tree does not count).
fn tracked_files(root: &Path) -> Vec<PathBuf> {
    let out = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output()
        .expect("running git ls-files (the link check needs git)");
    assert!(out.status.success(), "git ls-files: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
        .collect()
}

/// The targets of the links in Markdown `text`: inline `[text](target "title")`, reference
/// definitions `[label]: target`, and HTML `src="target"` and `href="target"`.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            targets.push(rest[..end].to_string());
        }
    }
    for line in text.lines() {
        let line = line.trim_start();
        if let Some(close) = line.strip_prefix('[').and_then(|l| l.find("]:").map(|i| (l, i))) {
            let (l, i) = close;
            if !l[..i].is_empty() && !l[..i].contains(']') {
                targets.push(l[i + 2..].trim().to_string());
            }
        }
    }
    for attribute in ["src=\"", "href=\"", "src='", "href='"] {
        let quote = attribute.chars().last().unwrap_or('"');
        let mut rest = text;
        while let Some(i) = rest.find(attribute) {
            rest = &rest[i + attribute.len()..];
            if let Some(end) = rest.find(quote) {
                targets.push(rest[..end].to_string());
            }
        }
    }
    // The target alone: no title after it, no angle brackets around it.
    targets
        .into_iter()
        .map(|t| {
            t.split_whitespace().next().unwrap_or_default().trim_start_matches('<').trim_end_matches('>').to_string()
        })
        .collect()
}

/// Whether a link leaves the repository on purpose: a web page, a mail address. Any other
/// scheme (`file://` above all) is checked like a path, and so fails.
fn is_web(target: &str) -> bool {
    ["http://", "https://", "mailto:"].iter().any(|scheme| target.starts_with(scheme))
}

#[test]
fn links_are_found_in_every_form_and_only_web_links_are_skipped() {
    let text = "see [a](docs/a.md \"title\") and [b](<b c.md>)\n[ref]: docs/ref.md\n  [r2]: ./r2.md \"t\"\n\
                <img src=\"img/x.png\"> <a href='y.html'>y</a>\n[web](https://example.com) [f](file:///etc/passwd)\n";
    assert_eq!(
        link_targets(text),
        [
            "docs/a.md",
            "b",
            "https://example.com",
            "file:///etc/passwd",
            "docs/ref.md",
            "./r2.md",
            "img/x.png",
            "y.html"
        ]
    );
    assert!(is_web("https://example.com") && is_web("mailto:x@y"));
    assert!(!is_web("file:///etc/passwd"), "a file:// link is checked, not skipped");
}

#[test]
fn every_relative_link_in_the_docs_names_something_in_the_repository() {
    let root = root();
    let tracked = tracked_files(&root);
    let files: Vec<&PathBuf> = tracked.iter().filter(|p| p.extension().is_some_and(|e| e == "md")).collect();
    assert!(files.iter().any(|f| f.ends_with("docs/design.md")), "docs/design.md is missing");
    let names_tracked = |path: &Path| tracked.iter().any(|t| t.starts_with(path));
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        for target in link_targets(&text) {
            if is_web(&target) || target.starts_with('#') {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            if path.is_empty() {
                continue;
            }
            // Resolved without touching the file system, so `..` cannot step out unseen.
            let mut resolved = PathBuf::new();
            let mut outside = false;
            for part in file.parent().unwrap_or(Path::new("")).join(path).components() {
                match part {
                    std::path::Component::Normal(p) => resolved.push(p),
                    std::path::Component::CurDir => {}
                    std::path::Component::ParentDir => outside |= !resolved.pop(),
                    _ => outside = true,
                }
            }
            if outside || !names_tracked(&resolved) {
                broken.push(format!("{}: {target}", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "links that leave the repository or name nothing git tracks:\n{}", broken.join("\n"));
}

#[test]
fn nothing_in_the_repository_points_at_files_beside_it() {
    let root = root();
    let mut files: Vec<PathBuf> = tracked_files(&root)
        .into_iter()
        .filter(|p| {
            let name = p.to_string_lossy();
            name.ends_with(".md") || name.ends_with(".rs") || name.ends_with(".toml") || name == ".ci/run"
        })
        .map(|p| root.join(p))
        .collect();
    files.dedup();
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

#[test]
fn every_published_crate_packages_both_licence_texts() {
    let root = root();
    for krate in ["engine", "transport", "node", "bench", "cli"] {
        for licence in ["LICENSE-MIT", "LICENSE-APACHE"] {
            let text = std::fs::read(root.join(krate).join(licence))
                .unwrap_or_else(|e| panic!("{krate}/{licence}: {e} (cargo package would leave the licence text out)"));
            assert_eq!(text, std::fs::read(root.join(licence)).unwrap(), "{krate}/{licence} is the workspace's");
        }
    }
}
