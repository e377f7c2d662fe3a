//! A server and its devices as real processes: `lethe serve` members, `lethe serve --server`
//! devices and one-shot `lethe sync`, on 127.0.0.1 with real redb files and real QUIC. Devices
//! are enrolled and removed with `lethe device` while the server runs.

use lethe_node::{NodeRole, Status, SyncReport};
use lethe_tests::cluster::{NodeProc, wait_until};
use lethe_tests::disk_shim::DiskShim;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(90);

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

/// A member's args: fast GC so tombstones go within the test.
fn member_args(peers: &[&NodeProc]) -> Vec<String> {
    let mut a = args(&["--gc-interval", "200ms"]);
    for p in peers {
        a.extend(["--peer".to_string(), p.peer_arg()]);
    }
    a
}

/// A device's args: a device of `servers`.
fn device_args(servers: &[&NodeProc]) -> Vec<String> {
    let mut a = args(&["--gc-interval", "200ms"]);
    for s in servers {
        a.extend(["--server".to_string(), s.peer_arg()]);
    }
    a
}

fn ok(node: &NodeProc, cmd: &[&str]) -> String {
    let (code, out, err) = node.cli(cmd);
    assert_eq!(code, 0, "lethe {cmd:?} failed: {err}\nlog:\n{}", node.log_text());
    out
}

fn enrol(server: &NodeProc, device: &NodeProc, name: &str) {
    let out = ok(server, &["device", "add", &device.id.to_string(), "--name", name]);
    assert!(out.starts_with("enrolled"), "{out}");
}

fn get(node: &NodeProc, key: &str) -> Option<String> {
    let (code, out, err) = node.cli(&["get", key]);
    match code {
        0 => Some(out),
        1 => None,
        _ => panic!("lethe get {key}: {err}"),
    }
}

/// `lethe sync --json` of a stopped device: its report, or the exit code and stderr.
fn sync(device: &NodeProc, servers: &[&NodeProc]) -> Result<SyncReport, (i32, String)> {
    let mut cmd = vec!["sync".to_string(), "--json".to_string()];
    for s in servers {
        cmd.extend(["--server".to_string(), s.peer_arg()]);
    }
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let (code, out, err) = device.cli(&cmd);
    if code == 0 {
        Ok(serde_json::from_str(out.trim()).expect("sync --json prints a report"))
    } else {
        Err((code, err))
    }
}

fn device_status(d: &NodeProc) -> Status {
    let s = d.status();
    assert_eq!(s.role, NodeRole::Device, "{} is a device", d.id);
    s
}

#[test]
fn twenty_devices_enrolled_at_runtime_converge_and_writes_queued_while_the_server_is_down_arrive_once() {
    let root = tempfile::tempdir().unwrap();
    let mut server = NodeProc::init(root.path(), "server");
    server.start(&member_args(&[]));
    assert_eq!(server.status().role, NodeRole::Member);
    let mut devices: Vec<NodeProc> = (0..20).map(|i| NodeProc::init(root.path(), &format!("d{i:02}"))).collect();
    for (i, d) in devices.iter_mut().enumerate() {
        enrol(&server, d, &format!("phone {i}"));
        d.start(&device_args(&[&server]));
    }
    for (i, d) in devices.iter().enumerate() {
        ok(d, &["put", &format!("d{i:02}/hello"), &format!("from {i}")]);
    }
    ok(&server, &["put", "motd", "from the server"]);
    for d in &devices {
        wait_until("every device holds every write", CONVERGE, || {
            let s = device_status(d);
            (s.live == 21 && s.pending_uploads == 0, (s.live, s.pending_uploads, s.server))
        });
    }
    assert_eq!(get(&devices[7], "d13/hello").as_deref(), Some("from 13"));
    assert_eq!(get(&devices[3], "motd").as_deref(), Some("from the server"));
    let listed: serde_json::Value = serde_json::from_str(&ok(&server, &["device", "list", "--json"])).unwrap();
    let listed = listed.as_array().expect("a JSON array");
    assert_eq!(listed.len(), 20, "{listed:#?}");
    assert!(
        listed.iter().all(|d| d["connected"] == true && d["name"].as_str().is_some_and(|n| n.starts_with("phone")))
    );

    // The server goes down; two devices write meanwhile; the writes wait in their queues.
    let before = server.status().vector.get(&server.status().replica).copied().unwrap_or(0);
    server.stop();
    for i in 0..5 {
        ok(&devices[0], &["put", &format!("offline/a{i}"), "queued"]);
        ok(&devices[1], &["put", &format!("offline/b{i}"), "queued"]);
    }
    assert_eq!(device_status(&devices[0]).pending_uploads, 5, "queued while the server is down");
    assert_eq!(get(&devices[0], "offline/a3").as_deref(), Some("queued"), "read at once on the device");
    server.start(&member_args(&[]));
    for d in &devices {
        wait_until("the queued writes reach every device", CONVERGE, || {
            let s = device_status(d);
            (s.live == 31 && s.pending_uploads == 0, (s.live, s.pending_uploads))
        });
    }
    let status = server.status();
    assert_eq!(status.live, 31);
    let after = status.vector.get(&status.replica).copied().unwrap_or(0);
    assert_eq!(after - before, 10, "each queued write admitted once, under one dot of the server");
    assert!(device_status(&devices[1]).in_sync || device_status(&devices[1]).pending_uploads == 0);
}

#[test]
fn a_fresh_device_gets_no_tombstones_and_removing_a_stopped_device_lets_the_server_forget_them() {
    let root = tempfile::tempdir().unwrap();
    let mut server = NodeProc::init(root.path(), "server");
    server.start(&member_args(&[]));
    let (mut writer, mut away, fresh) = (
        NodeProc::init(root.path(), "writer"),
        NodeProc::init(root.path(), "away"),
        NodeProc::init(root.path(), "fresh"),
    );
    for (d, name) in [(&writer, "writer"), (&away, "away"), (&fresh, "fresh")] {
        enrol(&server, d, name);
    }
    writer.start(&device_args(&[&server]));
    away.start(&device_args(&[&server]));
    for i in 0..50 {
        ok(&writer, &["put", &format!("k{i:02}"), "v"]);
    }
    wait_until("the device that goes away holds the 50 keys", CONVERGE, || {
        let s = device_status(&away);
        (s.live == 50, s.live)
    });
    away.stop();
    for i in 0..40 {
        ok(&writer, &["del", &format!("k{i:02}")]);
    }
    wait_until("the server holds the 40 tombstones for the stopped device", CONVERGE, || {
        let s = server.status();
        (s.live == 10 && s.tombstones == 40, (s.live, s.tombstones))
    });
    // Several GC steps pass: the stopped device still holds collection back.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(server.status().tombstones, 40, "a device within its lease holds collection back");
    let report = sync(&fresh, &[&server]).expect("the fresh device syncs");
    assert_eq!(report.live_received, 10, "{report:?}");
    assert_eq!(report.tombstones_received, 0, "a fresh device receives live entries only: {report:?}");

    let out = ok(&server, &["device", "remove", &away.id.to_string()]);
    assert!(out.starts_with("removed"), "{out}");
    let (code, _, err) = server.cli(&["device", "remove", &away.id.to_string()]);
    assert_eq!(code, 1, "removing twice says it is not enrolled: {err}");
    assert!(err.contains("not an enrolled device"), "{err}");
    wait_until("the server forgets the tombstones once the stopped device is removed", CONVERGE, || {
        let s = server.status();
        (s.tombstones == 0, s.tombstones)
    });

    // The removed device comes back: it is refused, and its writes reach no one.
    away.start(&device_args(&[&server]));
    ok(&away, &["put", "stolen", "by a lost phone"]);
    wait_until("the removed device's log says it was refused", CONVERGE, || {
        let log = away.log_text();
        (log.contains("refused"), log.lines().rev().take(5).map(str::to_string).collect::<Vec<_>>())
    });
    assert_eq!(device_status(&away).pending_uploads, 1, "its write stays queued on it");
    away.stop();
    match sync(&away, &[&server]) {
        Err((1, err)) => assert!(err.contains("refused"), "{err}"),
        other => panic!("a removed device's sync must be refused: {other:?}"),
    }
    assert_eq!(get(&server, "stolen"), None, "a removed device's write reaches no one");
    let report = sync(&fresh, &[&server]).expect("the fresh device syncs again");
    assert_eq!((report.live_received, report.tombstones_received), (0, 0), "{report:?}");
}

#[test]
fn a_device_enrolled_at_one_member_syncs_with_the_other() {
    let root = tempfile::tempdir().unwrap();
    let mut a = NodeProc::init(root.path(), "a");
    let mut b = NodeProc::init(root.path(), "b");
    let mut a_args = member_args(&[]);
    a_args.extend(["--trust".to_string(), b.id.to_string()]);
    a.start(&a_args);
    b.start(&member_args(&[&a]));
    let mut phone = NodeProc::init(root.path(), "phone");
    enrol(&a, &phone, "phone");
    ok(&a, &["put", "from-a", "1"]);
    // b learns the enrolment from a; the phone knows only b.
    wait_until("b knows the phone", CONVERGE, || {
        let (_, out, _) = b.cli(&["device", "list", "--json"]);
        let known = out.contains(&phone.id.to_string());
        (known, out)
    });
    phone.start(&device_args(&[&b]));
    ok(&phone, &["put", "from-phone", "2"]);
    wait_until("the phone's write reaches a through b, and a's write the phone", CONVERGE, || {
        let at_a = get(&a, "from-phone");
        let at_phone = get(&phone, "from-a");
        (at_a.as_deref() == Some("2") && at_phone.as_deref() == Some("1"), (at_a, at_phone))
    });
}

/// 200 device endpoints (embedded nodes in this process, each with its own QUIC endpoint and
/// redb file) on one `lethe serve` server: all converge, and the server's memory per device is
/// printed (resident memory after, less before, over the devices: a figure, not a limit).
#[test]
fn two_hundred_device_endpoints_on_one_server_converge() {
    const DEVICES: usize = 200;
    let root = tempfile::tempdir().unwrap();
    let mut server = NodeProc::init(root.path(), "server");
    server.start(&member_args(&[]));
    let dirs: Vec<lethe_node::DataDir> = (0..DEVICES)
        .map(|i| {
            let d = lethe_node::DataDir::new(root.path().join(format!("e{i:03}")));
            let id = d.init().unwrap().id();
            ok(&server, &["device", "add", &id.to_string()]);
            d
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = server.rss_bytes();
    let at = lethe_node::PeerAddr { id: server.id, addr: server.addr.unwrap() };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let statuses = rt.block_on(async {
        let mut nodes = Vec::new();
        for d in &dirs {
            let config = lethe_node::NodeConfig::new(d.clone(), "127.0.0.1:0".parse().unwrap()).with_server(at);
            nodes.push(config.start().await.unwrap());
        }
        for (i, n) in nodes.iter().enumerate() {
            n.put(format!("e{i:03}"), "v", lethe_engine::PutOptions::default()).await.unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            let statuses: Vec<Status> = nodes.iter().map(|n| n.status().unwrap()).collect();
            if statuses.iter().all(|s| s.live == DEVICES as u64 && s.pending_uploads == 0) {
                for n in &nodes {
                    n.shutdown().await;
                }
                return statuses;
            }
            let behind = statuses.iter().filter(|s| s.live < DEVICES as u64).count();
            assert!(std::time::Instant::now() < deadline, "{behind} of {DEVICES} devices still behind");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let digests: std::collections::BTreeSet<_> = statuses.iter().map(|s| s.digest.clone()).collect();
    assert_eq!(digests.len(), 1, "every device holds the same entries");
    let server_status = server.status();
    assert_eq!(server_status.live, DEVICES as u64);
    assert_eq!(server_status.digest, statuses[0].digest);
    let rss_after = server.rss_bytes();
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        println!(
            "server resident memory: {before} B with {DEVICES} devices enrolled, {after} B after they connected and \
             converged: {} B per device",
            after.saturating_sub(before) / DEVICES as u64
        );
    }
}

#[test]
fn a_device_data_directory_is_not_served_as_a_member_nor_a_member_synced_as_a_device() {
    let root = tempfile::tempdir().unwrap();
    let mut server = NodeProc::init(root.path(), "server");
    server.start(&member_args(&[]));
    let phone = NodeProc::init(root.path(), "phone");
    enrol(&server, &phone, "phone");
    sync(&phone, &[&server]).expect("the phone syncs once, as a device");
    // Served without --server, its queued writes would never be uploaded.
    let out = std::process::Command::new(lethe_tests::cluster::lethe_bin())
        .args(["serve", "--data"])
        .arg(&phone.dir)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds a device's store") && err.contains("--server"), "{err}");
    server.stop();
    match sync(&server, &[&server]) {
        Err((2, err)) => assert!(err.contains("member"), "{err}"),
        other => panic!("a member's store must not be synced as a device: {other:?}"),
    }
}

/// The node ids `device list --json` prints.
fn listed(server: &NodeProc) -> Vec<String> {
    let out = ok(server, &["device", "list", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(out.trim()).expect("device list --json prints a list");
    list.iter().filter_map(|d| d["node_id"].as_str().map(str::to_string)).collect()
}

/// Runs `lethe cmd` until it succeeds (what an operator told "retry" does).
fn retry_until_ok(node: &NodeProc, cmd: &[&str]) {
    wait_until(&format!("lethe {cmd:?} succeeds"), CONVERGE, || {
        let (code, _, err) = node.cli(cmd);
        if code != 0 {
            assert!(err.contains("retry"), "a failure that does not say to retry: {err}");
            std::thread::sleep(Duration::from_millis(100));
        }
        (code == 0, err)
    });
}

/// On a full disk (every sync fails with ENOSPC, under the `LD_PRELOAD` shim) `device add` and
/// `device remove` fail and say why: the device directory's commit could not be made durable.
/// Their retries once the disk has room succeed without a restart, and a restart finds what
/// they wrote (`devices.redb`, one transaction per change).
#[test]
fn device_add_and_remove_on_a_full_disk_fail_and_their_retries_persist() {
    let root = tempfile::tempdir().unwrap();
    let shim = DiskShim::build(root.path());
    let mut server = NodeProc::init(root.path(), "server");
    let dev = NodeProc::init(root.path(), "dev");
    let other = NodeProc::init(root.path(), "other");
    server.start_with_env(&member_args(&[]), &shim.env());
    enrol(&server, &other, "tablet");
    shim.fill();
    let (code, _, err) = server.cli(&["device", "add", &dev.id.to_string(), "--name", "phone"]);
    assert_ne!(code, 0, "an enrolment was acknowledged on a full disk");
    assert!(err.contains("device directory") && err.contains("retry"), "{err}");
    shim.free();
    // The node reopens its store by itself once the disk has room; until then it says to retry.
    retry_until_ok(&server, &["device", "add", &dev.id.to_string(), "--name", "phone"]);
    server.stop();
    server.start_with_env(&member_args(&[]), &shim.env());
    let mut want = vec![dev.id.to_string(), other.id.to_string()];
    want.sort();
    let mut got = listed(&server);
    got.sort();
    assert_eq!(got, want, "the retried enrolment was kept across a restart");

    shim.fill();
    let (code, _, err) = server.cli(&["device", "remove", &dev.id.to_string()]);
    assert_ne!(code, 0, "a removal was acknowledged on a full disk");
    assert!(err.contains("device directory") || err.contains("No space left"), "{err}");
    shim.free();
    retry_until_ok(&server, &["device", "remove", &dev.id.to_string()]);
    server.stop();
    server.start(&member_args(&[]));
    assert_eq!(listed(&server), vec![other.id.to_string()], "the retried removal was kept across a restart");
    server.stop();
}
