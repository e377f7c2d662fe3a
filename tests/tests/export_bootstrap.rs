//! `lethe export` then `lethe import` into a blank node as a bootstrap, with real `lethe serve`
//! processes: the import must equal a network bootstrap, dead records included, so a third
//! peer's older write of a key the source deleted is not brought back.

use lethe_tests::cluster::{NodeProc, lethe_bin, wait_until};
use serde_json::Value as Json;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(60);

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

/// `lethe --data DIR args...` with `stdin` fed to it.
fn run(node: &NodeProc, args: &[&str], stdin: &[u8]) -> Output {
    node.cli_with_input(args, stdin)
}

#[test]
fn a_bootstrap_import_keeps_the_sources_tombstones_so_an_older_write_from_a_third_peer_stays_dead() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut c) =
        (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"), NodeProc::init(root.path(), "c"));
    a.start(&[]);
    b.start(&[]);
    c.start(&args(&["--trust", &b.id.to_string()]));
    // c writes k first, and it never reaches a; a then writes k and deletes it.
    assert_eq!(c.cli(&["put", "k", "old"]).0, 0);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(a.cli(&["put", "k", "new"]).0, 0);
    assert_eq!(a.cli(&["put", "kept", "v"]).0, 0);
    assert_eq!(a.cli(&["del", "k"]).0, 0);

    let exported = run(&a, &["export", "--json"], b"");
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    let stderr = String::from_utf8_lossy(&exported.stderr);
    let summary: Json = serde_json::from_str(stderr.lines().last().unwrap_or_default()).expect("a JSON summary");
    assert_eq!(summary, serde_json::json!({ "entries": 1, "dead": 1 }));
    let imported = run(&b, &["import", "--json"], &exported.stdout);
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    let summary: Json = serde_json::from_slice(&imported.stdout).expect("a JSON summary");
    assert_eq!(summary["mode"], "bootstrap", "{summary}");
    let on_a = a.status();
    let on_b = b.status();
    assert_eq!(on_b.digest, on_a.digest, "the same entries");

    let tombstones = on_b.tombstones;
    // b meets c: c's older write of k arrives, and must lose to a's delete.
    b.stop();
    b.start(&args(&["--peer", &c.peer_arg()]));
    let c_id = c.id.to_string();
    wait_until("b has c's writes", CONVERGE, || {
        let vector = b.status().vector;
        (vector.keys().any(|r| c_id.starts_with(r.as_str())), vector)
    });
    let (code, value, _) = b.cli(&["get", "k"]);
    assert_ne!((code, value.as_str()), (0, "old"), "c's older write of k came back to life at b");
    assert_eq!(code, 1, "k is deleted at b");
    assert_eq!(tombstones, on_a.tombstones, "the source's tombstone came with the import");
    // And the delete reaches c.
    wait_until("c learns that k was deleted", CONVERGE, || {
        let (code, value, _) = c.cli(&["get", "k"]);
        (code == 1, value)
    });

    // An export of format 1 (live entries only) is still read, but never as a bootstrap.
    let dump = String::from_utf8(exported.stdout).unwrap();
    let old: String = dump
        .lines()
        .filter(|l| !l.starts_with("{\"dead\""))
        .map(|l| format!("{}\n", l.replace("\"lethe_export\":2", "\"lethe_export\":1").replace(",\"dead\":1}", "}")))
        .collect();
    let mut d = NodeProc::init(root.path(), "d");
    d.start(&[]);
    let imported = run(&d, &["import", "--json"], old.as_bytes());
    let summary: Json = serde_json::from_slice(&imported.stdout).expect("a JSON summary");
    assert_eq!((summary["mode"].as_str(), summary["applied"].as_u64()), (Some("own-writes"), Some(1)), "{summary}");
    assert!(String::from_utf8_lossy(&imported.stderr).contains("format 1"));
}

/// `lethe --data DIR import ARGS` with stdin from `stdin` and `TMPDIR` pointing nowhere, so any
/// temporary copy of the input fails.
fn import_without_tmpdir(node: &NodeProc, args: &[&str], stdin: Stdio) -> Output {
    Command::new(lethe_bin())
        .arg("--data")
        .arg(&node.dir)
        .arg("import")
        .args(args)
        .env("TMPDIR", node.dir.join("no-such-directory"))
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("lethe import")
}

#[test]
fn import_reads_a_regular_file_twice_and_copies_only_a_pipe() {
    let root = tempfile::tempdir().unwrap();
    let mut a = NodeProc::init(root.path(), "a");
    a.start(&[]);
    for i in 0..5 {
        assert_eq!(a.cli(&["put", &format!("k{i}"), "v"]).0, 0);
    }
    let dump = root.path().join("dump.jsonl");
    std::fs::write(&dump, run(&a, &["export"], b"").stdout).unwrap();
    for (name, args, stdin) in [
        ("b", vec![dump.to_str().unwrap()], Stdio::null()),
        ("c", vec![], Stdio::from(std::fs::File::open(&dump).unwrap())),
    ] {
        let mut node = NodeProc::init(root.path(), name);
        node.start(&[]);
        let out = import_without_tmpdir(&node, &args, stdin);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(node.status().live, 5, "{name}");
    }
    // A pipe is copied to $TMPDIR, and says so when it cannot be.
    let mut d = NodeProc::init(root.path(), "d");
    d.start(&[]);
    let out = import_without_tmpdir(&d, &[], Stdio::piped());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("temporary file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
