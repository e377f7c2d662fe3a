//! `lethe list` and `lethe get` against a real `lethe serve`: a listing goes on past one
//! request's worth of entries unless `--limit` says otherwise, and `get --json` of an absent key
//! prints JSON and exits 1.

use lethe_tests::cluster::{NodeProc, lethe_bin};
use serde_json::Value as Json;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// Imports `n` keys `k00000..` as own writes, in one command.
fn import_keys(node: &NodeProc, n: usize) {
    let hlc = (SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64) << 16;
    let writer = "00000000000000aa";
    let lines: String = (1..=n)
        .map(|i| {
            format!(
                "{{\"key\":\"k{i:05}\",\"key_encoding\":\"utf8\",\"value\":\"dg==\",\"value_encoding\":\"base64\",\
                 \"stamp\":{{\"hlc\":{hlc},\"writer\":\"{writer}\"}},\"dot\":{{\"writer\":\"{writer}\",\"seq\":{i}}}}}\n"
            )
        })
        .collect();
    let mut child = Command::new(lethe_bin())
        .arg("--data")
        .arg(&node.dir)
        .arg("import")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lethe import");
    child.stdin.take().expect("stdin").write_all(lines.as_bytes()).expect("feeding the import");
    let out = child.wait_with_output().expect("lethe import");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn list_shows_every_entry_unless_a_limit_is_given() {
    let root = tempfile::tempdir().unwrap();
    let mut a = NodeProc::init(root.path(), "a");
    a.start(&[]);
    import_keys(&a, 2_500);
    let (code, out, err) = a.cli(&["list"]);
    assert_eq!(code, 0, "{err}");
    let keys: Vec<&str> = out.lines().map(|l| l.split('\t').next().unwrap_or_default()).collect();
    assert_eq!(keys.len(), 2_500, "every key, not the first 1,000");
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "in key order, no repeats");
    let (code, out, _) = a.cli(&["list", "--json", "--prefix", "k01"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1_000, "k01000..k01999");
    let (code, out, _) = a.cli(&["list", "--limit", "1200"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1_200);
}

#[test]
fn get_json_of_an_absent_key_prints_null_and_exits_1() {
    let root = tempfile::tempdir().unwrap();
    let mut a = NodeProc::init(root.path(), "a");
    a.start(&[]);
    let (code, out, err) = a.cli(&["get", "nothing", "--json"]);
    assert_eq!(code, 1, "{err}");
    let printed: Json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("no JSON ({e}): {out:?}"));
    assert_eq!(printed, Json::Null);
}
