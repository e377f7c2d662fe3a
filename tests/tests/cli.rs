//! The `lethe` command as users run it: real `lethe serve` processes on 127.0.0.1, real redb
//! files, real QUIC, and the CLI's output and exit status.

use lethe_tests::cluster::{NodeProc, lethe_bin, wait_until};
use serde_json::Value as Json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CONVERGE: Duration = Duration::from_secs(60);

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

/// `lethe --data DIR args...` with `stdin` fed to it.
fn run(node: &NodeProc, args: &[&str], stdin: &[u8]) -> Output {
    node.cli_with_input(args, stdin)
}

fn json_cli(node: &NodeProc, args: &[&str]) -> Json {
    let (code, out, err) = node.cli(args);
    assert_eq!(code, 0, "lethe {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("lethe {args:?} printed no JSON ({e}): {out}"))
}

/// `lethe list --json`, one object per line.
fn list_json(node: &NodeProc) -> Vec<Json> {
    let (code, out, err) = node.cli(&["list", "--json"]);
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

fn fails_saying(out: &(i32, String, String), words: &[&str]) {
    assert_eq!(out.0, 2, "expected exit status 2; stdout {}; stderr {}", out.1, out.2);
    for w in words {
        assert!(out.2.contains(w), "stderr should say `{w}`: {}", out.2);
    }
}

#[test]
fn put_and_get_take_and_show_values_from_every_source_with_receipts() {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(lethe_bin()).args(["init", "--json", "--data"]).arg(root.path().join("x")).output().unwrap();
    let init: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(init["node_id"].as_str().map(str::len), Some(64), "{init}");
    let mut a = NodeProc::init(root.path(), "a");
    a.start(&[]);
    let replica = &a.id.to_string()[..16];

    let receipt = json_cli(&a, &["put", "text", "hello", "--json"]);
    assert_eq!(receipt["seq"], 1);
    assert_eq!(receipt["dot"], serde_json::json!({ "writer": replica, "seq": 1 }));
    assert_eq!(receipt["stamp"]["writer"], replica);

    // Binary-safe from stdin: `-` is the source, not the value.
    let binary = [0x00u8, 0xff, 0x10];
    let put = run(&a, &["put", "bin", "-"], &binary);
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    // `get > FILE` gives back exactly the bytes put: no newline is added off a terminal.
    let got = run(&a, &["get", "bin"], b"");
    assert_eq!(got.stdout, binary, "the value's bytes, exactly");
    let ends_in_newline = run(&a, &["put", "nl", "-"], b"line\n");
    assert!(ends_in_newline.status.success());
    assert_eq!(run(&a, &["get", "nl"], b"").stdout, b"line\n");
    let got = json_cli(&a, &["get", "bin", "--json"]);
    assert_eq!((got["value"].as_str(), got["value_encoding"].as_str()), (Some("AP8Q"), Some("base64")));
    assert_eq!(got["dot"]["seq"], 2);

    let file = root.path().join("value.txt");
    std::fs::write(&file, "from a file").unwrap();
    let meta = root.path().join("meta.bin");
    std::fs::write(&meta, [0xc3u8, 0x28]).unwrap();
    assert_eq!(a.cli(&["put", "f", "--file", file.to_str().unwrap(), "--metadata", "{\"type\": \"note\"}"]).0, 0);
    let got = json_cli(&a, &["get", "f", "--json"]);
    assert_eq!((got["value"].as_str(), got["value_encoding"].as_str()), (Some("from a file"), Some("utf8")));
    assert_eq!(got["metadata"], "{\"type\": \"note\"}", "stored as given");
    assert_eq!(got["expires_at_ms"], Json::Null);

    let at = format!("@{}", meta.display());
    let before_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    assert_eq!(a.cli(&["put", "m", "v", "--metadata", &at, "--ttl", "1h"]).0, 0);
    let got = json_cli(&a, &["get", "m", "--json"]);
    assert_eq!((got["metadata"].as_str(), got["metadata_encoding"].as_str()), (Some("wyg="), Some("base64")));
    let expires = got["expires_at_ms"].as_u64().expect("an expiry");
    assert!((before_ms + 3_600_000..before_ms + 3_700_000).contains(&expires), "{expires}");

    let del = json_cli(&a, &["del", "text", "--json"]);
    assert_eq!(del["seq"], 6);
    assert_eq!(a.cli(&["get", "text"]).0, 1, "absent");
    let keys: Vec<Json> = list_json(&a).into_iter().map(|o| o["key"].clone()).collect();
    assert_eq!(keys, ["bin", "f", "m", "nl"]);

    // Bad input: what was wrong and what to do, exit status 2, nothing written.
    let path = file.to_str().unwrap();
    fails_saying(&a.cli(&["put", "k", "v", "--file", path]), &["give the value once", "--file"]);
    fails_saying(&a.cli(&["put", "k"]), &["no value", "`-`"]);
    fails_saying(&a.cli(&["put", "k", "v", "--metadata", "{oops"]), &["--metadata", "not JSON", "@PATH"]);
    fails_saying(&a.cli(&["put", "k", "v", "--metadata", "@/no/such/file"]), &["/no/such/file"]);
    fails_saying(&a.cli(&["put", "k", "--file", "/no/such/file"]), &["/no/such/file"]);
    assert_eq!(a.cli(&["get", "k"]).0, 1);
    let stopped = NodeProc::init(root.path(), "stopped");
    fails_saying(&stopped.cli(&["get", "k"]), &["not running", "lethe serve"]);
}

#[test]
fn watch_prints_local_and_replicated_changes_until_interrupted() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"));
    a.start(&args(&["--trust", &b.id.to_string()]));
    b.start(&args(&["--peer", &a.peer_arg()]));
    let mut watch = Command::new(lethe_bin())
        .arg("--data")
        .arg(&b.dir)
        .args(["watch", "--prefix", "w:", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(watch.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(first.starts_with("watching"), "{first}");
    let (tx, rx) = mpsc::channel();
    let stdout = BufReader::new(watch.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert_eq!(b.cli(&["put", "w:local", "1"]).0, 0);
    assert_eq!(b.cli(&["put", "elsewhere", "x"]).0, 0, "outside the prefix: not shown");
    assert_eq!(a.cli(&["put", "w:remote", "2"]).0, 0);
    let mut events = Vec::new();
    while events.len() < 2 {
        let line = rx.recv_timeout(CONVERGE).expect("a watch line");
        events.push(serde_json::from_str::<Json>(&line).unwrap());
    }
    events.sort_by_key(|e| e["key"].as_str().map(str::to_string));
    assert_eq!((events[0]["event"].as_str(), events[0]["key"].as_str()), (Some("put"), Some("w:local")));
    assert_eq!(events[0]["value"], "1");
    assert_eq!(events[0]["stamp"]["writer"], b.id.to_string()[..16]);
    assert_eq!((events[1]["key"].as_str(), events[1]["value"].as_str()), (Some("w:remote"), Some("2")));
    assert_eq!(events[1]["stamp"]["writer"], a.id.to_string()[..16], "replicated from a");
    let del = json_cli(&a, &["del", "w:remote", "--json"]);
    let line = rx.recv_timeout(CONVERGE).expect("the delete");
    let event: Json = serde_json::from_str(&line).unwrap();
    assert_eq!((event["event"].as_str(), event["key"].as_str()), (Some("deleted"), Some("w:remote")));
    assert_eq!(event["stamp"], del["stamp"], "the tombstone's stamp");
    let _ = Command::new("kill").arg("-INT").arg(watch.id().to_string()).status();
    let status = watch.wait().unwrap();
    assert!(status.success(), "watch exits 0 when interrupted: {status}");
}

/// `lethe status --json` of a node, as a JSON value.
fn status_json(node: &NodeProc) -> Json {
    json_cli(node, &["status", "--json"])
}

#[test]
fn a_full_export_imported_into_a_blank_node_gives_the_same_digest_and_vector_and_they_sync() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut c) =
        (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"), NodeProc::init(root.path(), "c"));
    let (mut d, mut e) = (NodeProc::init(root.path(), "d"), NodeProc::init(root.path(), "e"));
    a.start(&[]);
    b.start(&args(&["--trust", &c.id.to_string(), "--trust", &d.id.to_string()]));
    // c is connected when the import comes; d connects after it.
    c.start(&args(&["--peer", &b.peer_arg()]));
    wait_until("c is connected to b", CONVERGE, || {
        let connected = b.status().connected;
        (connected.contains(&c.id.to_string()), connected)
    });
    // An empty export into a blank node: a bootstrap of nothing, still checked and finished.
    let mut f = NodeProc::init(root.path(), "f");
    f.start(&[]);
    let empty = run(&a, &["export"], b"").stdout;
    assert_eq!(empty.iter().filter(|&&b| b == b'\n').count(), 2, "a header and an end line");
    let summary: Json = serde_json::from_slice(&run(&f, &["import", "--json"], &empty).stdout).unwrap();
    assert_eq!((summary["mode"].as_str(), summary["entries"].as_u64()), (Some("bootstrap"), Some(0)), "{summary}");

    for i in 0..30 {
        assert_eq!(a.cli(&["put", &format!("k{i:02}"), &format!("v{i}")]).0, 0);
    }
    assert!(run(&a, &["put", "bin", "-"], &[0, 159, 146, 150, 255]).status.success());
    assert_eq!(a.cli(&["put", "meta", "m", "--metadata", "[1,2]", "--ttl", "2h"]).0, 0);
    assert_eq!(a.cli(&["del", "k03"]).0, 0);
    assert_eq!(a.cli(&["put", "k04", "overwritten"]).0, 0);
    let exported = run(&a, &["export"], b"");
    assert!(exported.status.success(), "{}", String::from_utf8_lossy(&exported.stderr));
    let dump = exported.stdout;
    let lines: Vec<Json> =
        dump.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
    assert_eq!(lines.len(), 34, "a header, the tombstone of k03, the 31 live entries, an end line");
    assert_eq!(lines[0]["source"], a.id.to_string()[..16]);
    assert_eq!(lines[0]["vector"][&a.id.to_string()[..16]], 34, "the vector before the listing");
    assert_eq!((lines[1]["dead"].as_str(), lines[1]["key"].as_str()), (Some("tombstone"), Some("k03")));
    assert_eq!(lines[33], serde_json::json!({ "lethe_export_end": 31, "dead": 1 }));

    let imported = run(&b, &["import", "--json"], &dump);
    assert!(imported.status.success(), "{}", String::from_utf8_lossy(&imported.stderr));
    let summary: Json = serde_json::from_slice(&imported.stdout).expect("a JSON summary");
    assert_eq!((summary["mode"].as_str(), summary["applied"].as_u64()), (Some("bootstrap"), Some(32)), "{summary}");
    assert_eq!(summary["dead"], 1, "{summary}");
    let (on_a, on_b) = (status_json(&a), status_json(&b));
    assert_eq!(on_b["digest"], on_a["digest"], "the same entries under the same dots and stamps");
    assert_eq!(on_b["vector"], on_a["vector"], "the source's vector, merged");
    assert_eq!(list_json(&b), list_json(&a));
    assert!(
        list_json(&b).iter().any(|o| o["key"] == "meta" && o["expires_at_ms"].is_u64() && o["metadata"] == "[1,2]")
    );

    // They go on to peers: to c, connected, and to d when it connects.
    wait_until("c has b's digest", CONVERGE, || {
        let digest = status_json(&c)["digest"].clone();
        (digest == on_a["digest"], digest)
    });
    d.start(&args(&["--peer", &b.peer_arg()]));
    wait_until("d has b's digest", CONVERGE, || {
        let digest = status_json(&d)["digest"].clone();
        (digest == on_a["digest"], digest)
    });
    assert_eq!(list_json(&d), list_json(&a));
    // A later write at b wins over the imported one (its clock moved past the source's).
    assert_eq!(b.cli(&["put", "k00", "newer"]).0, 0);
    wait_until("c has b's newer write", CONVERGE, || {
        let (_, v, _) = c.cli(&["get", "k00"]);
        (v == "newer", v)
    });

    // Into a node that holds something: its own writes keeping each entry's time, no vector
    // of a's claimed (it could hide a delete e never saw).
    e.start(&[]);
    assert_eq!(e.cli(&["put", "k03", "e's own"]).0, 0);
    let imported = run(&e, &["import", "--json"], &dump);
    let summary: Json = serde_json::from_slice(&imported.stdout).expect("a JSON summary");
    assert_eq!((summary["mode"].as_str(), summary["applied"].as_u64()), (Some("own-writes"), Some(31)), "{summary}");
    assert!(String::from_utf8_lossy(&imported.stderr).contains("not blank"));
    assert_eq!(e.status().vector.values().copied().collect::<Vec<_>>(), [32]);
    // A prefix export is never a bootstrap either.
    let part = run(&a, &["export", "--prefix", "k1"], b"").stdout;
    let summary: Json = serde_json::from_slice(&run(&f, &["import", "--json"], &part).stdout).unwrap();
    assert_eq!((summary["mode"].as_str(), summary["applied"].as_u64()), (Some("own-writes"), Some(10)), "{summary}");
}

/// One export line of writer `writer` (16 hex digits) at `hlc`.
fn line(key: &str, writer: &str, seq: u64, hlc: u64) -> String {
    format!(
        "{{\"key\":\"{key}\",\"key_encoding\":\"utf8\",\"value\":\"dg==\",\"value_encoding\":\"base64\",\
         \"stamp\":{{\"hlc\":{hlc},\"writer\":\"{writer}\"}},\"dot\":{{\"writer\":\"{writer}\",\"seq\":{seq}}}}}\n"
    )
}

fn now_hlc() -> u64 {
    (SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64) << 16
}

#[test]
fn import_refuses_a_bad_line_by_number_and_applies_nothing_of_its_batch() {
    let root = tempfile::tempdir().unwrap();
    let mut a = NodeProc::init(root.path(), "a");
    a.start(&[]);
    let writer = "00000000000000aa";
    let good = |n: u64| (1..=n).map(|i| line(&format!("k{i:04}"), writer, i, now_hlc())).collect::<String>();
    let count = |a: &NodeProc| a.status().live;

    // A line that is not JSON, a stamp an hour ahead of the clock, a line too long. (A dot of
    // another writer than the stamp's is a device's write numbered by a member: accepted.)
    let bad_json = format!("{}{{\"key\": oops\n{}", good(2), line("z", writer, 99, now_hlc()));
    fails_saying(&(run_text(&a, &bad_json)), &["line 3", "not a line of `lethe export`", "nothing was imported"]);
    let future = format!("{}{}", good(2), line("z", writer, 99, now_hlc() + (3_600_000 << 16)));
    fails_saying(&run_text(&a, &future), &["line 3", "ahead", "nothing was imported"]);
    let long = format!("{}{}\n", good(1), "x".repeat(4 << 20));
    fails_saying(&run_text(&a, &long), &["line 2", "longer than"]);
    assert_eq!(count(&a), 0, "nothing of a refused batch is applied");

    // 1,500 lines, the 1,200th bad: the first request (1,000 lines) stands, the second does not.
    let mut text = good(1500);
    let lines: Vec<&str> = text.lines().collect();
    let broken = lines[1199].replace("\"seq\":1200", "\"seq\":0");
    text = lines
        .iter()
        .enumerate()
        .map(|(i, l)| if i == 1199 { format!("{broken}\n") } else { format!("{l}\n") })
        .collect();
    fails_saying(&run_text(&a, &text), &["line 1200", "seq", "nothing was imported"]);
    assert_eq!(count(&a), 0, "the whole input is checked before anything is sent");

    // An export cut short, its end line miscounted, two exports joined: refused by line.
    let header = format!(
        "{{\"lethe_export\":1,\"source\":\"{writer}\",\"prefix\":\"\",\"vector\":{{\"{writer}\":3}},\"clock\":{}}}\n",
        now_hlc()
    );
    let end = |n: u64| format!("{{\"lethe_export_end\":{n}}}\n");
    fails_saying(&run_text(&a, &format!("{header}{}", good(3))), &["line 4", "cut short", "nothing was imported"]);
    fails_saying(&run_text(&a, &format!("{header}{}{}", good(3), end(2))), &["line 5", "counts 2", "holds 3"]);
    let twice = format!("{header}{}{}{header}", good(3), end(3));
    fails_saying(&run_text(&a, &twice), &["line 6", "after the export's end"]);
    fails_saying(&run_text(&a, &format!("{}{header}", good(1))), &["line 2", "header after the first line"]);
    let bad_vector = header.replace(&format!("\"{writer}\":3"), "\"nope\":3");
    fails_saying(&run_text(&a, &format!("{bad_vector}{}", end(0))), &["line 1", "`vector`", "16 hex digits"]);
    assert_eq!(count(&a), 0);
    assert!(a.status().vector.is_empty(), "no vector merged");

    // What only the node checks (a stamp beyond its drift bound), in the second request: the
    // first request stands, the second does not, and the error says so.
    let late = format!("{}{}", good(1200), line("z", writer, 1201, now_hlc() + (3_600_000 << 16)));
    fails_saying(&run_text(&a, &late), &["line 1201", "ahead", "lines before 1001 were imported"]);
    assert_eq!(count(&a), 1000);
}

fn run_text(node: &NodeProc, input: &str) -> (i32, String, String) {
    let out = run(node, &["import"], input.as_bytes());
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_import_into_the_same_identity_on_an_empty_store_writes_the_entries_again_under_new_dots() {
    let root = tempfile::tempdir().unwrap();
    let mut a = NodeProc::init(root.path(), "a");
    a.start(&[]);
    assert_eq!(a.cli(&["put", "x", "1"]).0, 0);
    assert_eq!(a.cli(&["put", "y", "2"]).0, 0);
    let dump = run(&a, &["export"], b"").stdout;
    // Its own writes, into its own store: already held, nothing applied.
    let again = run(&a, &["import", "--json"], &dump);
    let summary: Json = serde_json::from_slice(&again.stdout).expect("a JSON summary");
    assert_eq!(
        summary,
        serde_json::json!({ "mode": "own-writes", "entries": 2, "dead": 0, "applied": 0, "superseded": 2, "stale": 0 })
    );
    // The same identity on an empty store: written again as new writes (seqs 1 and 2 of this
    // store), with their times; no dot of the old store is claimed.
    a.stop();
    std::fs::remove_file(a.dir.join("store.redb")).unwrap();
    a.start(&[]);
    let out = run(&a, &["import", "--json"], &dump);
    let summary: Json = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    assert_eq!(summary["applied"], 2, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(summary["mode"], "own-writes", "its own old dots are not claimed");
    assert_eq!(a.status().live, 2);
    assert_eq!(a.status().vector.values().copied().collect::<Vec<_>>(), [2]);
}

#[test]
fn serve_reads_its_settings_from_a_config_file_and_flags_override_them() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"));
    a.start(&args(&["--trust", &b.id.to_string()]));
    let config = root.path().join("lethe.toml");
    // The file's listen address is overridden by the harness's --listen; its peer is used.
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:1\"\npeer = [\"{}\"]\ngc-interval = \"300ms\"\nlease = \"1h\"\n", a.peer_arg()),
    )
    .unwrap();
    b.start(&args(&["--config", config.to_str().unwrap()]));
    assert_ne!(b.addr.map(|s| s.port()), Some(1), "the flag overrides the file");
    wait_until("b connects to the peer from its config file", CONVERGE, || {
        let s = b.status();
        (s.connected.contains(&a.id.to_string()), s.connected)
    });

    // The metrics flags from the file, alone or beside the flags.
    let public = "0.0.0.0:0";
    for (name, text, flags) in [
        ("m1", format!("metrics = \"{public}\"\nmetrics-public = true\n"), vec![]),
        ("m2", format!("metrics = \"{public}\"\n"), vec!["--metrics-public"]),
        ("m3", "metrics-public = true\n".to_string(), vec!["--metrics", public]),
    ] {
        let path = root.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        let mut node = NodeProc::init(root.path(), name);
        let mut all = args(&["--config", path.to_str().unwrap()]);
        all.extend(args(&flags));
        node.start(&all);
        assert!(node.log_text().contains("metrics on http://0.0.0.0:"), "{name}: {}", node.log_text());
        node.stop();
    }

    for (text, says) in [
        ("listen = \"127.0.0.1:0\"\nmetrics-public = true\n", "--metrics ADDR"),
        ("listen = \"127.0.0.1:0\"\ngc_interval = \"1s\"\n", "unknown field `gc_interval`"),
        ("listen = \"127.0.0.1:0\"\nlease = \"soon\"\n", "config key `lease`"),
        ("peer = \"not a list\"\n", "lethe.toml"),
        ("gc-interval = \"1s\"\n", "--listen"),
    ] {
        std::fs::write(&config, text).unwrap();
        let c = NodeProc::init(root.path(), &format!("c{}", text.len()));
        let out = c.cli(&["serve", "--config", config.to_str().unwrap()]);
        fails_saying(&out, &[says]);
    }
}

#[test]
fn list_and_watch_text_show_keys_and_values_that_are_not_text_unambiguously() {
    let root = tempfile::tempdir().unwrap();
    let mut a = NodeProc::init(root.path(), "a");
    a.start(&[]);
    let mut watch = Command::new(lethe_bin())
        .arg("--data")
        .arg(&a.dir)
        .arg("watch")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(watch.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(first.starts_with("watching"), "{first}");
    // Two values a lossy conversion prints alike (both as U+FFFD), a tab and a newline.
    assert!(run(&a, &["put", "k\tx", "-"], &[0xff, b'\n', b'a']).status.success());
    assert!(run(&a, &["put", "y", "-"], &[0xfe]).status.success());
    assert!(run(&a, &["put", "z", "-"], "\u{fffd}\\".as_bytes()).status.success());
    let (_, listed, err) = a.cli(&["list"]);
    assert_eq!(listed, "k\\tx\t\\xff\\na\ny\t\\xfe\nz\t\u{fffd}\\\\\n", "{err}");
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let fields: Vec<Vec<String>> = (0..3)
        .map(|_| lines.next().expect("a watch line").unwrap().split('\t').map(str::to_string).collect())
        .collect();
    let shown: Vec<(&str, &str, &str)> = fields.iter().map(|f| (f[0].as_str(), f[1].as_str(), f[2].as_str())).collect();
    assert_eq!(shown, [("put", "k\\tx", "\\xff\\na"), ("put", "y", "\\xfe"), ("put", "z", "\u{fffd}\\\\")]);
    let _ = Command::new("kill").arg("-INT").arg(watch.id().to_string()).status();
    assert!(watch.wait().unwrap().success());
}

#[test]
fn output_into_a_pipe_closed_early_ends_quietly_with_status_0_but_an_export_fails() {
    let root = tempfile::tempdir().unwrap();
    let mut a = NodeProc::init(root.path(), "a");
    a.start(&[]);
    // 3,000 entries of 1 KiB: far more than a pipe holds.
    let writer = "00000000000000aa";
    let dump: String = (1..=3000u64)
        .map(|i| {
            line(&format!("k{i:05}"), writer, i, now_hlc()).replace("\"dg==\"", &format!("\"{}\"", "A".repeat(1368)))
        })
        .collect();
    assert_eq!(run_text(&a, &dump).0, 0);
    for command in [&["list"][..], &["list", "--json"], &["status"], &["status", "--json"], &["get", "k00001"]] {
        let mut child = Command::new(lethe_bin())
            .arg("--data")
            .arg(&a.dir)
            .args(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `| head -1` for the long outputs; the reader gone before anything is written for the
        // short ones.
        let stdout = child.stdout.take().unwrap();
        if command[0] == "list" || command[0] == "export" {
            let mut first = String::new();
            BufReader::new(stdout).read_line(&mut first).unwrap();
            assert!(!first.is_empty());
        } else {
            drop(stdout);
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "lethe {command:?} into a closed pipe: {} {stderr}", out.status);
        assert!(!stderr.contains("panicked") && !stderr.contains("error"), "lethe {command:?}: {stderr}");
    }
    // But an export cut short is a truncated backup: a failure, and it says so.
    let mut child = Command::new(lethe_bin())
        .arg("--data")
        .arg(&a.dir)
        .arg("export")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "an export into a pipe closed early: {stderr}");
    assert!(stderr.contains("cut short"), "{stderr}");
}
