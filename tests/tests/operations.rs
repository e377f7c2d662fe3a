//! The node's operator paths as real `lethe` processes on 127.0.0.1: stalled handshakes delay no
//! one, refused connections back off, `lethe list` pages, the data directory is private, and
//! zero intervals are refused.

use lethe_node::control::Request;
use lethe_tests::cluster::{NodeProc, Owner, identity, lethe_bin, wait_until};
use lethe_transport::{CloseCode, Endpoint, Identity, TrustList};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const CONVERGE: Duration = Duration::from_secs(60);

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// `n` QUIC Initials (each a TLS ClientHello of a distinct connection), captured by letting a
/// quinn client dial a plain UDP socket that reads the first datagram and never answers.
fn captured_initials(rt: &tokio::runtime::Runtime, n: usize) -> Vec<Vec<u8>> {
    let _guard = rt.enter();
    (0..n)
        .map(|_| {
            let sink = UdpSocket::bind(localhost()).unwrap();
            sink.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let addr = sink.local_addr().unwrap();
            let client = Endpoint::bind(localhost(), Identity::generate().unwrap(), TrustList::default()).unwrap();
            let target = Identity::generate().unwrap().id();
            let dial = rt.spawn(async move {
                let _ = client.connect(addr, target).await;
            });
            let mut buf = vec![0; 2048];
            let len = sink.recv(&mut buf).unwrap();
            dial.abort();
            buf.truncate(len);
            buf
        })
        .collect()
}

/// Replays one captured Initial to `target` every 500 ms, each from a fresh socket that then
/// stays silent, until `stop`: there is always a stalled handshake in flight.
fn stall_handshakes(
    target: SocketAddr,
    initials: Vec<Vec<u8>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut sockets = Vec::new();
        for initial in initials {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let socket = UdpSocket::bind(localhost()).unwrap();
            socket.send_to(&initial, target).unwrap();
            sockets.push(socket);
            std::thread::sleep(Duration::from_millis(500));
        }
        sockets.len()
    })
}

#[test]
fn stalled_handshakes_delay_neither_the_owner_nor_a_trusted_peer() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"));
    a.start(&args(&["--trust", &b.id.to_string()]));
    let rt = runtime();
    let initials = captured_initials(&rt, 60);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = stall_handshakes(a.addr.unwrap(), initials, stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    // The CLI gives up after 5 s without a handshake; each call must get through the stall.
    for i in 0..4 {
        let (code, _, err) = a.cli(&["status"]);
        assert_eq!(code, 0, "lethe status {i} failed while handshakes stall: {err}");
    }
    b.start(&args(&["--peer", &a.peer_arg()]));
    assert_eq!(b.cli(&["put", "through", "the stall"]).0, 0);
    wait_until("a gets b's write while handshakes stall", CONVERGE, || {
        let (code, out, _) = a.cli(&["get", "through"]);
        (code == 0 && out.trim() == "the stall", out)
    });
    // The stalled ones end in their timeout, and a says so.
    wait_until("a drops a stalled handshake", CONVERGE, || (a.log_text().contains("did not finish its handshake"), ()));
    stop.store(true, Ordering::Relaxed);
    assert!(flood.join().unwrap() >= 2, "the stall was in flight throughout");
    a.stop();
    b.stop();
}

#[test]
fn a_peer_cannot_hold_more_than_a_few_connections() {
    let root = tempfile::tempdir().unwrap();
    let mut a = NodeProc::init(root.path(), "a");
    let peer = identity(root.path(), "many");
    a.start(&args(&["--trust", &peer.id().to_string()]));
    let rt = runtime();
    let key = peer.pkcs8().to_vec();
    let closed = rt.block_on(async {
        let endpoint = Endpoint::bind(localhost(), Identity::from_pkcs8(&key).unwrap(), TrustList::default()).unwrap();
        let mut conns = Vec::new();
        for _ in 0..10 {
            conns.push(endpoint.connect(a.addr.unwrap(), a.id).await.unwrap());
        }
        // a closes the extra ones as it registers them (or, without a bound, keeps all ten).
        let closed = || conns.iter().filter(|c| c.conn.close_reason().is_some()).count();
        wait_until_async(|| async { closed() >= 6 || a.status().connections == 10 }).await;
        let closed = closed();
        endpoint.close();
        closed
    });
    let s = a.status();
    assert!(closed >= 6, "a kept {} of 10 connections from one peer", 10 - closed);
    assert!(s.connections <= 4, "{s:#?}");
    a.stop();
}

async fn wait_until_async<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + CONVERGE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How long the backoff tests watch a dialer.
const WATCH: Duration = Duration::from_secs(6);
/// Attempts a dialer may make in [`WATCH`]: its backoff doubles from 100 ms (0, 0.1, 0.3, 0.7,
/// 1.5, 3.1 s ...), so seven, and a margin; a tight loop makes dozens.
const ATTEMPTS_IN_WATCH_MAX: usize = 10;

/// Runs a gate endpoint at a free address that trusts `trust` and closes every connection it
/// accepts with `CloseCode::Refused` (a refused session); counts handshakes refused and
/// connections accepted while `node` (a real `lethe serve --peer GATE`) dials it for [`WATCH`].
fn dial_a_refusing_gate(root: &std::path::Path, trust: bool) -> (usize, usize, NodeProc) {
    let gate_identity = Identity::generate().unwrap();
    let gate_id = gate_identity.id();
    let mut dialer = NodeProc::init(root, "dialer");
    let rt = runtime();
    let _guard = rt.enter();
    let trusted = if trust { TrustList::new([dialer.id]) } else { TrustList::default() };
    let gate = Arc::new(Endpoint::bind(localhost(), gate_identity, trusted).unwrap());
    let gate_addr = gate.local_addr().unwrap();
    let (refused, accepted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let task = rt.spawn({
        let (gate, refused, accepted) = (gate.clone(), refused.clone(), accepted.clone());
        async move {
            while let Some(result) = gate.accept().await {
                match result {
                    Ok(conn) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        conn.close(CloseCode::Refused, "session refused: your clock is ahead (test)");
                    }
                    Err(_) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    });
    dialer.start(&args(&["--peer", &format!("{gate_id}@{gate_addr}")]));
    std::thread::sleep(WATCH);
    dialer.stop();
    task.abort();
    (refused.load(Ordering::Relaxed), accepted.load(Ordering::Relaxed), dialer)
}

#[test]
fn a_dialer_refused_by_its_peer_backs_off_and_says_why_once() {
    let root = tempfile::tempdir().unwrap();
    let (refused, accepted, dialer) = dial_a_refusing_gate(root.path(), false);
    assert_eq!(accepted, 0);
    assert!((1..=ATTEMPTS_IN_WATCH_MAX).contains(&refused), "{refused} attempts in {WATCH:?}");
    let log = dialer.log_text();
    let why = log.lines().filter(|l| l.contains("is not trusted")).count();
    assert!((1..=2).contains(&why), "{why} lines say why:\n{log}");
}

#[test]
fn a_dialer_whose_sessions_are_refused_backs_off_and_says_why_once() {
    let root = tempfile::tempdir().unwrap();
    let (refused, accepted, dialer) = dial_a_refusing_gate(root.path(), true);
    assert_eq!(refused, 0);
    assert!((1..=ATTEMPTS_IN_WATCH_MAX).contains(&accepted), "{accepted} connections in {WATCH:?}");
    let log = dialer.log_text();
    let why = log.lines().filter(|l| l.contains("your clock is ahead")).count();
    assert!((1..=2).contains(&why), "{why} lines say why:\n{log}");
}

#[test]
fn a_node_refusing_a_stranger_says_so_without_a_line_per_attempt() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut stranger) = (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "stranger"));
    a.start(&[]);
    stranger.start(&args(&["--peer", &a.peer_arg()]));
    std::thread::sleep(WATCH);
    stranger.stop();
    let log = a.log_text();
    let lines = log.lines().filter(|l| l.contains("not trusted") || l.contains("untrusted")).count();
    assert!((1..=2).contains(&lines), "{lines} lines about the stranger:\n{log}");
    a.stop();
}

#[test]
fn list_prints_every_value_however_large_the_answer() {
    let root = tempfile::tempdir().unwrap();
    let mut a = NodeProc::init(root.path(), "a");
    a.start(&[]);
    const VALUES: usize = 40;
    const VALUE_BYTES: usize = 120_000;
    let rt = runtime();
    rt.block_on(async {
        let owner = Owner::connect(&a).await.unwrap();
        for i in 0..VALUES {
            let value = vec![b'a' + (i % 26) as u8; VALUE_BYTES];
            let req = Request::Put { key: format!("k{i:02}").into_bytes(), value, ttl_ms: None, metadata: None };
            owner.request(&req).await.unwrap();
        }
        // One value of the largest size allowed.
        let req = Request::Put { key: b"max".to_vec(), value: vec![b'm'; 1 << 20], ttl_ms: None, metadata: None };
        owner.request(&req).await.unwrap();
        owner.close().await;
    });
    let (code, out, err) = a.cli(&["list"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<(&str, usize)> =
        out.lines().map(|l| l.split_once('\t').map(|(k, v)| (k, v.len())).unwrap_or((l, 0))).collect();
    assert_eq!(lines.len(), VALUES + 1, "{:?}", &lines[..lines.len().min(5)]);
    for (i, (key, len)) in lines[..VALUES].iter().enumerate() {
        assert_eq!((*key, *len), (format!("k{i:02}").as_str(), VALUE_BYTES));
    }
    assert_eq!(lines[VALUES], ("max", 1 << 20));
    // A limit and a prefix still apply.
    let (code, out, _) = a.cli(&["list", "--prefix", "k1", "--limit", "3"]);
    assert_eq!(code, 0);
    let keys: Vec<&str> = out.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(keys, ["k10", "k11", "k12"]);
    a.stop();
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[test]
fn the_data_directory_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let mut a = NodeProc::init(root.path(), "a");
    assert_eq!(mode(&a.dir), 0o700, "lethe init makes the directory private");
    a.start(&[]);
    let check = |dir: &std::path::Path| {
        assert_eq!(mode(dir), 0o700);
        let files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(files.iter().any(|f| f.ends_with("store.redb")), "{files:?}");
        for f in files {
            assert_eq!(mode(&f), 0o600, "{} is mode {:o}", f.display(), mode(&f));
        }
    };
    check(&a.dir);
    a.stop();
    // A directory opened up by hand (or made by an older lethe) is closed again at start, and
    // the log says so.
    std::fs::set_permissions(&a.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(a.dir.join("store.redb"), std::fs::Permissions::from_mode(0o644)).unwrap();
    a.start(&[]);
    check(&a.dir);
    let log = a.log_text();
    assert!(log.contains("was readable by other users"), "{log}");
    a.stop();
}

#[test]
fn zero_intervals_are_refused_with_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let a = NodeProc::init(root.path(), "a");
    for flag in ["--lease", "--gc-interval", "--anti-entropy-interval"] {
        let mut child = std::process::Command::new(lethe_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&a.dir)
            .args([flag, "0s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("lethe serve {flag} 0s started instead of refusing");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{flag} 0s: {status}");
        assert!(err.contains(flag) && err.contains("more than zero"), "{flag}: {err}");
    }
}
