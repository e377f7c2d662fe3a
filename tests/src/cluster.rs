//! Real `lethe serve` processes on 127.0.0.1 for the multi-process tests: start, stop, SIGKILL,
//! restart, ask for status, and talk to a node as its owner over QUIC.

use lethe_node::control::{self, Request, Response};
use lethe_node::{DataDir, Status};
use lethe_transport::{Endpoint, Identity, NodeId, PeerConnection, TrustList};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `lethe` binary in `target/<profile>/`, brought up to date by `cargo build` once per test
/// process (a no-op when it is current), so a test never runs a stale binary.
pub fn lethe_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable path");
            let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "-p", "lethe-cli", "--bin", "lethe"]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            assert!(cmd.status().expect("running cargo build").success(), "building the lethe binary failed");
            profile_dir.join("lethe")
        })
        .clone()
}

/// One node: its data directory and, while it runs, its process.
#[derive(Debug)]
pub struct NodeProc {
    /// The data directory.
    pub dir: PathBuf,
    /// The node id.
    pub id: NodeId,
    /// Where it listens (known once started).
    pub addr: Option<SocketAddr>,
    child: Option<Child>,
    log: PathBuf,
}

impl NodeProc {
    /// `lethe init` in `root/name`.
    pub fn init(root: &Path, name: &str) -> NodeProc {
        let dir = root.join(name);
        let out = Command::new(lethe_bin()).arg("init").arg("--data").arg(&dir).output().expect("lethe init");
        assert!(out.status.success(), "lethe init: {}", String::from_utf8_lossy(&out.stderr));
        let id = String::from_utf8_lossy(&out.stdout).trim().parse().expect("init prints a node id");
        NodeProc { log: root.join(format!("{name}.log")), dir, id, addr: None, child: None }
    }

    /// `lethe serve` with `args` (peers, trust, intervals), on `addr` or the address it had
    /// before, or any free port; returns once it listens.
    pub fn start(&mut self, args: &[String]) {
        self.start_with_env(args, &[]);
    }

    /// [`NodeProc::start`] with extra environment variables for the process (an `LD_PRELOAD`
    /// shim, say).
    pub fn start_with_env(&mut self, args: &[String], env: &[(&str, &Path)]) {
        let listen = self.addr.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
        let _ = std::fs::remove_file(self.dir.join("serve.addr"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let child = Command::new(lethe_bin())
            .arg("serve")
            .arg("--data")
            .arg(&self.dir)
            .arg("--listen")
            .arg(listen)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("lethe serve");
        self.child = Some(child);
        let data = DataDir::new(&self.dir);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(addr) = data.addr() {
                self.addr = Some(addr);
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("lethe serve exited with {status}; log:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "lethe serve did not start; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The process's resident memory now, in bytes (Linux: `VmRSS` of `/proc/PID/status`).
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim();
        kb.parse::<u64>().ok().map(|kb| kb * 1024)
    }

    /// `NODEID@ADDR` of this node, for another's `--peer`.
    pub fn peer_arg(&self) -> String {
        format!("{}@{}", self.id, self.addr.expect("started"))
    }

    /// The node's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let status = child.wait().expect("waiting for lethe serve");
            assert!(status.success(), "lethe serve exited with {status} after SIGTERM; log:\n{}", self.log_text());
        }
    }

    /// Runs `lethe --data DIR args...` and returns (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(lethe_bin()).arg("--data").arg(&self.dir).args(args).output().expect("lethe CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `lethe --data DIR args...` with `stdin` fed to it, and returns its output.
    pub fn cli_with_input(&self, args: &[&str], stdin: &[u8]) -> std::process::Output {
        let mut child = Command::new(lethe_bin())
            .arg("--data")
            .arg(&self.dir)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("lethe");
        let mut input = child.stdin.take().expect("stdin");
        let bytes = stdin.to_vec();
        // Fed from a thread: the command may stop reading early (a bad line) and answer at once.
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            let _ = input.write_all(&bytes);
        });
        let out = child.wait_with_output().expect("lethe output");
        let _ = feeder.join();
        out
    }

    /// `lethe status --json`, parsed.
    pub fn status(&self) -> Status {
        let (code, out, err) = self.cli(&["status", "--json"]);
        assert_eq!(code, 0, "lethe status failed: {err}\nlog:\n{}", self.log_text());
        serde_json::from_str(&out).expect("status is JSON")
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `check` holds, polling; panics with `what` and the last state after `timeout`.
pub fn wait_until<T: std::fmt::Debug>(what: &str, timeout: Duration, mut check: impl FnMut() -> (bool, T)) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let (ok, state) = check();
        if ok {
            return state;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}; last state: {state:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every node reports the same digest and the same live count, and returns their
/// statuses.
pub fn wait_converged(nodes: &[&NodeProc], timeout: Duration) -> Vec<Status> {
    wait_until("the nodes converge", timeout, || {
        let statuses: Vec<Status> = nodes.iter().map(|n| n.status()).collect();
        let same = statuses.windows(2).all(|w| w[0].digest == w[1].digest && w[0].live == w[1].live);
        (same, statuses)
    })
}

/// A connection to a node as its owner (the test reads the node's key from its data directory),
/// for many requests without a process each.
pub struct Owner {
    endpoint: Endpoint,
    conn: PeerConnection,
}

impl Owner {
    /// Connects to the running node of `node`.
    pub async fn connect(node: &NodeProc) -> Result<Owner, String> {
        let data = DataDir::new(&node.dir);
        let identity = data.identity().map_err(|e| e.to_string())?;
        let id = identity.id();
        let addr = node.addr.ok_or("not started")?;
        let endpoint = Endpoint::bind("127.0.0.1:0".parse().map_err(|_| "addr")?, identity, TrustList::default())
            .map_err(|e| e.to_string())?;
        let conn = endpoint.connect(addr, id).await.map_err(|e| e.to_string())?;
        Ok(Owner { endpoint, conn })
    }

    /// One request, one response.
    pub async fn request(&self, request: &Request) -> Result<Response, String> {
        let (mut w, mut r) = self.conn.open().await.map_err(|e| e.to_string())?;
        w.send(&control::encode(request)?).await.map_err(|e| e.to_string())?;
        let mut send = w.into_inner().await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let frame = r.next().await.map_err(|e| e.to_string())?.ok_or("no answer")?;
        control::decode(&frame)
    }

    /// Puts `key` = `value`; the seq once durable.
    pub async fn put(&self, key: &str, value: &str) -> Result<u64, String> {
        let req = Request::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            ttl_ms: None,
            metadata: None,
        };
        match self.request(&req).await? {
            Response::Written { seq, .. } => Ok(seq),
            other => Err(format!("{other:?}")),
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.conn.close(lethe_transport::CloseCode::Done, "done");
        self.endpoint.wait_idle().await;
    }
}

/// A fresh identity in `root/name` that is not a running node (an attacker, a stranger).
pub fn identity(root: &Path, name: &str) -> Identity {
    DataDir::new(root.join(name)).init().expect("identity")
}
