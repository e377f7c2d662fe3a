//! `lethe serve --metrics`: real `lethe serve` processes on 127.0.0.1, scraped over plain HTTP
//! (`std::net::TcpStream`). The gauges, session counters, bytes and the write latency histogram
//! say what happened; `/health` turns 503 while the store has failed (syncs failing with ENOSPC
//! under an `LD_PRELOAD` shim), while a commit waits on a stalled disk (the same shim), or while
//! the node's clock is ahead of its peers' (another shim steps it), and 200 again once
//! that is over; bad requests get an answer (or a close) and never take the endpoint
//! down; more silent connections than the server holds do not starve a `/health` probe; a
//! non-loopback address is refused.

use lethe_tests::clock_shim;
use lethe_tests::cluster::{NodeProc, identity, lethe_bin, wait_until};
use lethe_tests::disk_shim::DiskShim;
use lethe_transport::{Endpoint, TrustList};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
/// Every value written in the sync test: the bootstrap carries at least this many bytes each.
const VALUE_BYTES: usize = 1000;

fn serve_args(peers: &[&NodeProc], trust: &[&NodeProc]) -> Vec<String> {
    // No anti-entropy session during the test: the session counts stay exact.
    let mut a: Vec<String> = ["--gc-interval", "200ms", "--anti-entropy-interval", "1h", "--metrics", "127.0.0.1:0"]
        .map(String::from)
        .into();
    for p in peers {
        a.extend(["--peer".to_string(), p.peer_arg()]);
    }
    for t in trust {
        a.extend(["--trust".to_string(), t.id.to_string()]);
    }
    a
}

/// Where the node serves its metrics, from the line it logs (the last one: the log is appended
/// to across restarts).
fn metrics_addr(node: &NodeProc) -> SocketAddr {
    let log = node.log_text();
    let marker = "metrics on http://";
    let at = log.rfind(marker).unwrap_or_else(|| panic!("the node logs no metrics address; log:\n{log}"));
    let rest = &log[at + marker.len()..];
    rest[..rest.find('/').expect("an address then /metrics")].parse().expect("a socket address")
}

/// Sends `request` as is and reads the whole answer (the server closes after one): the status
/// code and the body.
fn http_raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connecting to the metrics endpoint");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(request).expect("sending the request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("reading the answer");
    let answer = String::from_utf8(answer).expect("a UTF-8 answer");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head/body split: {answer:?}"));
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status: {head:?}"));
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length: {head:?}"));
    assert_eq!(length, body.len(), "Content-Length does not match the body");
    (code, body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_raw(addr, format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: lethe-test\r\n\r\n").as_bytes())
}

/// A scrape: every series (`name` or `name{k="v",...}`) with its value.
#[derive(Debug)]
struct Scrape(BTreeMap<(String, BTreeMap<String, String>), f64>);

impl Scrape {
    fn of(node: &NodeProc) -> Scrape {
        let (code, body) = get(metrics_addr(node), "/metrics");
        assert_eq!(code, 200, "{body}");
        let mut series = BTreeMap::new();
        for line in body.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
            let (name, labels) = match name.split_once('{') {
                None => (name.to_string(), BTreeMap::new()),
                Some((name, labels)) => {
                    let labels = labels.strip_suffix('}').expect("labels end with }");
                    let labels = labels
                        .split(',')
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').expect("k=v");
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
            };
            series.insert((name, labels), value);
        }
        Scrape(series)
    }

    /// The value of `name` with exactly `labels`; 0 if absent (a counter not yet incremented).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.0.get(&(name.to_string(), labels)).copied().unwrap_or(0.0)
    }

    /// Whether a series named `name` is present at all.
    fn has(&self, name: &str) -> bool {
        self.0.keys().any(|(n, _)| n == name)
    }

    /// The sum over every series named `name`.
    fn sum(&self, name: &str) -> f64 {
        self.0.iter().filter(|((n, _), _)| n == name).map(|(_, v)| v).sum()
    }
}

fn cli_ok(node: &NodeProc, args: &[&str]) {
    let (code, _, err) = node.cli(args);
    assert_eq!(code, 0, "lethe {args:?}: {err}");
}

#[test]
fn metrics_count_the_writes_the_bootstrap_and_the_pushes_between_two_nodes() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"));
    a.start(&serve_args(&[], &[&b]));
    let value = "v".repeat(VALUE_BYTES);
    for i in 0..5 {
        cli_ok(&a, &["put", &format!("k{i}"), &value]);
    }
    cli_ok(&a, &["del", "k0"]);

    // Alone, before any peer: what it wrote, nothing synced.
    let alone = Scrape::of(&a);
    assert_eq!(alone.value("lethe_live_keys", &[]), 4.0, "{alone:#?}");
    // b, a member, has acknowledged nothing, so the tombstone cannot be collected yet.
    assert_eq!(alone.value("lethe_tombstones", &[]), 1.0, "{alone:#?}");
    assert_eq!(alone.value("lethe_write_latency_seconds_count", &[]), 6.0, "5 puts and a delete: {alone:#?}");
    assert_eq!(alone.value("lethe_write_latency_seconds_bucket", &[("le", "+Inf")]), 6.0, "{alone:#?}");
    assert!(alone.value("lethe_write_latency_seconds_sum", &[]) > 0.0, "{alone:#?}");
    assert_eq!(alone.value("lethe_connected_peers", &[]), 0.0, "{alone:#?}");
    assert_eq!(alone.value("lethe_connected_devices", &[]), 0.0, "{alone:#?}");
    assert_eq!(alone.sum("lethe_sessions_total"), 0.0, "{alone:#?}");
    assert_eq!(alone.value("lethe_bytes_sent_total", &[]), 0.0, "{alone:#?}");
    assert_eq!(alone.value("lethe_store_failed", &[]), 0.0, "{alone:#?}");
    assert_eq!(get(metrics_addr(&a), "/health").0, 200);

    // b starts empty and dials a: one session, a bootstrap from a's side, nothing from b's.
    b.start(&serve_args(&[&a], &[]));
    let (sa, sb) = wait_until("b has bootstrapped from a and both see each other", WAIT, || {
        let (sa, sb) = (Scrape::of(&a), Scrape::of(&b));
        let done = sb.value("lethe_live_keys", &[]) == 4.0
            && sa.sum("lethe_sessions_total") == 1.0
            && sb.sum("lethe_sessions_total") == 1.0
            && sa.value("lethe_connected_peers", &[]) == 1.0
            && sb.value("lethe_connected_peers", &[]) == 1.0;
        (done, (sa, sb))
    });
    let complete = |mode| [("mode", mode), ("outcome", "complete")];
    assert_eq!(sa.value("lethe_sessions_total", &complete("bootstrap")), 1.0, "{sa:#?}");
    assert_eq!(sb.value("lethe_sessions_total", &complete("nothing")), 1.0, "{sb:#?}");
    // The four live values crossed in that session, each with its value bytes.
    assert_eq!(sb.value("lethe_entries_received_total", &[("kind", "live")]), 4.0, "{sb:#?}");
    let received = sb.value("lethe_bytes_received_total", &[]);
    assert!(received >= (4 * VALUE_BYTES) as f64, "b received {received} bytes for 4 values of {VALUE_BYTES}");
    assert!(sa.value("lethe_bytes_sent_total", &[]) >= (4 * VALUE_BYTES) as f64, "{sa:#?}");
    // The same counts as `status`, which counts at the same points through its own counters.
    let (status_a, status_b) = (a.status(), b.status());
    assert_eq!(sb.value("lethe_bytes_received_total", &[]), status_b.bytes_received as f64);
    assert_eq!(sa.sum("lethe_sessions_total"), (status_a.sessions_finished + status_a.sessions_failed) as f64);
    // b wrote nothing: no write latency recorded there.
    assert_eq!(sb.value("lethe_write_latency_seconds_count", &[]), 0.0, "{sb:#?}");
    assert_eq!(get(metrics_addr(&b), "/health").0, 200);

    // Writes after the session go to b as live pushes, not sessions.
    for i in 5..8 {
        cli_ok(&a, &["put", &format!("k{i}"), &value]);
    }
    let (sa, sb) = wait_until("b has the pushed writes", WAIT, || {
        let (sa, sb) = (Scrape::of(&a), Scrape::of(&b));
        (sb.value("lethe_live_keys", &[]) == 7.0, (sa, sb))
    });
    assert_eq!(sa.value("lethe_live_keys", &[]), 7.0, "{sa:#?}");
    assert_eq!(sa.value("lethe_write_latency_seconds_count", &[]), 9.0, "{sa:#?}");
    assert!(sa.value("lethe_pushes_total", &[("direction", "sent")]) >= 1.0, "{sa:#?}");
    assert!(sb.value("lethe_pushes_total", &[("direction", "received")]) >= 1.0, "{sb:#?}");
    assert_eq!(sb.value("lethe_entries_received_total", &[("kind", "live")]), 7.0, "{sb:#?}");
    assert!(sb.value("lethe_bytes_received_total", &[]) >= (7 * VALUE_BYTES) as f64, "{sb:#?}");
    assert_eq!(sa.value("lethe_drift_rejections_total", &[("kind", "remote")]), 0.0, "{sa:#?}");
    a.stop();
    b.stop();
}

#[test]
fn a_session_that_breaks_the_protocol_counts_as_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut a = NodeProc::init(root.path(), "a");
    let rogue = identity(root.path(), "rogue");
    a.start(&[serve_args(&[], &[]), vec!["--trust".to_string(), rogue.id().to_string()]].concat());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let endpoint = Endpoint::bind("127.0.0.1:0".parse().unwrap(), rogue, TrustList::default()).unwrap();
        let conn = endpoint.connect(a.addr.unwrap(), a.id).await.unwrap();
        // A session stream whose first message is not CBOR: a closes the connection.
        let (mut w, _r) = conn.open().await.unwrap();
        w.send(&[0]).await.unwrap();
        w.send(&[0xff, 0x00, 0x13, 0x37]).await.unwrap();
        w.flush().await.unwrap();
        conn.conn.closed().await;
        endpoint.close();
    });
    let scrape = wait_until("a counts the refused session", WAIT, || {
        let scrape = Scrape::of(&a);
        (scrape.sum("lethe_sessions_total") >= 1.0, scrape)
    });
    // Refused before the handshake was read, so no mode was decided.
    assert_eq!(
        scrape.value("lethe_sessions_total", &[("mode", "undecided"), ("outcome", "refused")]),
        1.0,
        "{scrape:#?}"
    );
    assert_eq!(scrape.sum("lethe_sessions_total"), 1.0, "{scrape:#?}");
    assert_eq!(a.status().sessions_failed, 1);
    a.stop();
}

#[test]
fn the_metrics_endpoint_answers_bad_requests_and_stays_up() {
    let root = tempfile::tempdir().unwrap();
    let mut a = NodeProc::init(root.path(), "a");
    a.start(&serve_args(&[], &[]));
    let addr = metrics_addr(&a);
    assert_eq!(get(addr, "/nowhere").0, 404);
    assert_eq!(get(addr, "/metrics/../health").0, 404);
    assert_eq!(http_raw(addr, b"POST /metrics HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(http_raw(addr, b"garbage\r\n\r\n").0, 400);
    assert_eq!(http_raw(addr, b"GET /metrics SPDY/9\r\n\r\n").0, 400);
    assert_eq!(http_raw(addr, &[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']).0, 400);
    // A head without end, longer than the limit.
    let mut long = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 32 * 1024));
    assert_eq!(http_raw(addr, &long).0, 431);
    // A client that connects and says nothing is closed by the server (after its timeout).
    let mut silent = TcpStream::connect(addr).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut rest = Vec::new();
    assert_eq!(silent.read_to_end(&mut rest).expect("the server closes a silent connection"), 0);
    // A HEAD gets the head alone.
    let mut head = TcpStream::connect(addr).unwrap();
    head.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    head.write_all(b"HEAD /health HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    head.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("\r\n\r\n"), "{answer:?}");
    // And it still serves.
    let (code, body) = get(addr, "/metrics?format=text");
    assert_eq!(code, 200);
    assert!(body.contains("# TYPE lethe_live_keys gauge"), "{body}");
    a.stop();
}

/// More silent connections than the server serves at once (`CONNECTIONS_MAX`, 16).
const SILENT_CONNECTIONS: usize = 20;

#[test]
fn health_is_answered_while_silent_connections_hold_every_slot() {
    let root = tempfile::tempdir().unwrap();
    let mut a = NodeProc::init(root.path(), "a");
    a.start(&serve_args(&[], &[]));
    let addr = metrics_addr(&a);
    // Clients that connect and send nothing (idle keep-alive connections, a slowloris), more
    // than the server holds at once; each is accepted before the probe below.
    let silent: Vec<TcpStream> = (0..SILENT_CONNECTIONS).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // A monitoring probe is still answered: the oldest silent connection makes room for it.
    assert_eq!(get(addr, "/health"), (200, "ok: the node takes writes\n".to_string()));
    // The silent ones are closed unanswered (evicted, or at their head timeout), never answered.
    for mut conn in silent {
        conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut rest = Vec::new();
        assert_eq!(conn.read_to_end(&mut rest).expect("the server closes a silent connection"), 0);
    }
    assert_eq!(get(addr, "/health").0, 200);
    a.stop();
}

#[test]
fn a_metrics_address_off_loopback_is_refused_without_metrics_public() {
    let root = tempfile::tempdir().unwrap();
    let a = NodeProc::init(root.path(), "a");
    let out = Command::new(lethe_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics", "0.0.0.0:0", "--data"])
        .arg(&a.dir)
        .output()
        .expect("lethe serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a loopback address") && stderr.contains("--metrics-public"), "{stderr}");
    // The node did not start.
    assert!(!a.dir.join("serve.addr").exists());
}

#[test]
fn health_is_503_while_the_disk_is_full_and_200_once_it_has_room() {
    // Every sync fails with ENOSPC under an `LD_PRELOAD` shim while the test says the disk is
    // full: no mount, so it runs unprivileged (tests/disk_full.rs fills a real tmpfs).
    let root = tempfile::tempdir().unwrap();
    let shim = DiskShim::build(root.path());
    let mut a = NodeProc::init(root.path(), "a");
    a.start_with_env(&serve_args(&[], &[]), &shim.env());
    let addr = metrics_addr(&a);
    cli_ok(&a, &["put", "before", "v"]);
    assert_eq!(get(addr, "/health"), (200, "ok: the node takes writes\n".to_string()));
    shim.fill();
    let (code, _, refused) = a.cli(&["put", "full", "v"]);
    assert_ne!(code, 0, "a write was acknowledged on a full disk");
    assert!(refused.contains("No space left on device"), "{refused}");
    let (code, body) = wait_until("health says the store failed", WAIT, || {
        let health = get(addr, "/health");
        (health.1.starts_with("store failed: "), health)
    });
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("No space left on device"), "{body}");
    assert_eq!(Scrape::of(&a).value("lethe_store_failed", &[]), 1.0);

    shim.free();
    // The node reopens its store by itself; health follows without a write or a restart.
    let health = wait_until("health is 200 again", WAIT, || {
        let health = get(addr, "/health");
        (health.0 == 200, health)
    });
    assert_eq!(health.1, "ok: the node takes writes\n");
    let scrape = Scrape::of(&a);
    assert_eq!(scrape.value("lethe_store_failed", &[]), 0.0, "{scrape:#?}");
    assert!(scrape.value("lethe_store_reopens_total", &[]) >= 1.0, "{scrape:#?}");
    assert!(scrape.has("lethe_write_latency_seconds_count"), "{scrape:#?}");
    cli_ok(&a, &["put", "after", "room again"]);
    a.stop();
}

#[test]
fn health_is_503_while_the_clock_is_ahead_of_the_peers_and_200_once_it_is_set_right() {
    let root = tempfile::tempdir().unwrap();
    let (shim, offset) = clock_shim::build(root.path());
    let (mut a, mut b) = (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"));
    a.start(&serve_args(&[], &[&b]));
    b.start_with_env(&serve_args(&[&a], &[]), &clock_shim::env(&shim, &offset));
    let addr = metrics_addr(&b);
    // b has measured a's clock in their handshake once a has its write.
    cli_ok(&b, &["put", "before", "v"]);
    wait_until("a has b's write", WAIT, || {
        let got = a.cli(&["get", "before"]);
        (got.0 == 0, got)
    });
    assert_eq!(get(addr, "/health").0, 200);

    // b's clock steps an hour ahead: it would refuse a write, and /health says so before any.
    std::fs::write(&offset, "3600000").unwrap();
    // /health answers from a status snapshot refreshed every 200 ms.
    let (code, body) = wait_until("health says the clock is ahead", WAIT, || {
        let health = get(addr, "/health");
        (health.0 == 503, health)
    });
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("clock ahead: ") && body.contains("check the system clock"), "{body}");
    assert!(Scrape::of(&b).value("lethe_clock_ahead_ms", &[]) > 3_000_000.0);
    let (code, _, err) = b.cli(&["put", "during", "v"]);
    assert_ne!(code, 0, "b took a write while /health said it would not");
    assert!(err.contains("check the system clock"), "{err}");

    // Set right again, b is healthy and takes writes.
    std::fs::write(&offset, "0").unwrap();
    let health = wait_until("b's health is 200 again", WAIT, || {
        let health = get(addr, "/health");
        (health.0 == 200, health)
    });
    assert_eq!(health.1, "ok: the node takes writes\n");
    cli_ok(&b, &["put", "after", "v"]);
    b.stop();
    a.stop();
}

#[test]
fn health_is_503_while_a_commit_waits_on_a_stalled_disk_and_the_probe_never_waits_for_it() {
    let root = tempfile::tempdir().unwrap();
    let shim = DiskShim::build(root.path());
    let mut a = NodeProc::init(root.path(), "a");
    a.start_with_env(&serve_args(&[], &[]), &shim.env());
    let addr = metrics_addr(&a);
    cli_ok(&a, &["put", "before", "v"]);
    assert_eq!(get(addr, "/health").0, 200);

    // Every fsync now hangs: a put's commit holds the store until the disk comes back.
    shim.stall();
    let dir = a.dir.clone();
    let put = std::thread::spawn(move || {
        Command::new(lethe_bin()).arg("--data").arg(&dir).args(["put", "during", "v"]).output().expect("lethe put")
    });
    // Probes are answered meanwhile (each within `get`'s read timeout), and say why once the
    // commit has waited past the threshold.
    let (code, body) = wait_until("health says the store stalled", WAIT, || {
        let health = get(addr, "/health");
        (health.1.starts_with("store stalled: "), health)
    });
    assert_eq!(code, 503, "{body}");
    let (code, body) = get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(!put.is_finished(), "the put waits for the disk");

    shim.free();
    let out = put.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let health = wait_until("health is 200 again", WAIT, || {
        let health = get(addr, "/health");
        (health.0 == 200, health)
    });
    assert_eq!(health.1, "ok: the node takes writes\n");
    a.stop();
}
