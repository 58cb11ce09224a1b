//! `kubectl exec` on the node: the agent's side of
//! `/exec/{namespace}/{pod}/{container}?podUID=…&command=…&stdin=…&stdout=…&stderr=…&tty=…`,
//! which the apiserver forwards client WebSocket connections to (see `kubelet_api`).
//!
//! # Protocol
//!
//! The client upgrades the request to a WebSocket with the subprotocol `v5.channel.k8s.io`
//! (what kubectl ≥ 1.30 asks for) or `v4.channel.k8s.io`. Every message is binary and starts
//! with its channel: 0 stdin, 1 stdout, 2 stderr, 3 error (the final `metav1.Status`), 4 resize
//! (`{"Width": w, "Height": h}`). v5 adds the close message `[255, channel]`; the client sends
//! `[255, 0]` when its stdin ends, and the command's stdin is closed then (with v4, stdin only
//! ends with the connection). When the command ends, channel 3 carries
//! `{"metadata":{},"status":"Success"}` or a `NonZeroExitCode` failure whose `ExitCode` cause is
//! the exit code (128 + signal when a signal ended it), which is what makes `kubectl exec` exit
//! with the command's code; the connection is then closed with a normal (1000) close frame.
//! Errors that happen before the command runs (no such running container, no command, no
//! upgrade) are plain HTTP errors, which the apiserver turns into `Status` answers.
//!
//! # How the command runs
//!
//! The target is the container's main process, the `pid` the container's shim recorded under
//! `<root>/pods/<uid>/containers/<name>/<attempt>/` (the newest attempt that has not exited and
//! whose process is still the shim's child). The command is started through util-linux's
//! `nsenter --target PID --mount --uts --ipc --net --pid --root --wd`, which enters the
//! container's mount, UTS, IPC, network and PID namespaces and its root and working directory.
//! `nsenter` rather than `setns(2)` in a `pre_exec` hook because entering a PID namespace only
//! applies to children: something has to fork once more after `setns`, wait for that child and
//! pass its exit status (or its fatal signal) on. `nsenter` does exactly that and is on every
//! host with util-linux; doing it in a post-fork hook of a multi-threaded agent would mean
//! re-implementing it with only async-signal-safe calls.
//!
//! Before `nsenter` runs, the forked child:
//! - starts a session of its own (`setsid`), so the command and everything it starts can be
//!   found and killed as one (`kill_session`). With `tty`, `setsid --ctty` after nsenter's fork
//!   gives the command a session of its own inside the container's PID namespace with the
//!   pseudo-terminal as its controlling terminal (a job-control shell must find the terminal's
//!   process group in its own namespace when it exits); closing the terminal hangs it up;
//! - joins the container's cgroups: the ones rudder made for the container's limits
//!   (`/rudder/<pod uid>/<container>` in each hierarchy, read from `/proc/<pid>/cgroup`), so an
//!   exec'd process counts against the container's memory and CPU limits as with runc. A failure
//!   to join fails the exec, as it does with runc.
//!
//! The command gets the container's environment (`/proc/<pid>/environ`, as the kubelet passes the
//! container's env to the runtime), plus a default `PATH` when it has none and `TERM=xterm` with
//! a terminal.
//!
//! With `tty`, the command runs on a new pseudo-terminal (stdin, stdout and stderr); its output
//! goes to channel 1 and resize messages set its window size (`TIOCSWINSZ`). Without, stdin,
//! stdout and stderr are pipes (or `/dev/null` for streams the client did not ask for).
//!
//! # Ending
//!
//! When the command exits, what it wrote is sent (for at most [`DRAIN`] more, in case a
//! background process keeps its output open), then the status, then the close frame. When the
//! client goes away first, the command's session is killed (SIGKILL to every process of it, and
//! its process group); every process the agent started is reaped. An agent that is killed leaves
//! running exec sessions behind, as a kubelet restart does.

use std::{
    ffi::{CString, OsStr, OsString},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, unix::AsyncFd},
    sync::mpsc,
    task::JoinHandle,
    time::Instant,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        handshake::derive_accept_key,
        protocol::{CloseFrame, Role, frame::coding::CloseCode},
    },
};

use crate::kubelet_api::Body;

/// The v5 remote command subprotocol (adds closing a single channel).
pub const V5: &str = "v5.channel.k8s.io";
/// The v4 remote command subprotocol (exit codes in a `Status` on the error channel).
pub const V4: &str = "v4.channel.k8s.io";
/// The subprotocols served, most preferred first.
pub const PROTOCOLS: [&str; 2] = [V5, V4];

/// Channel of the command's stdin.
pub const STDIN: u8 = 0;
/// Channel of the command's stdout (and of the terminal's output).
pub const STDOUT: u8 = 1;
/// Channel of the command's stderr.
pub const STDERR: u8 = 2;
/// Channel of the final `Status`.
pub const ERROR: u8 = 3;
/// Channel of terminal size changes.
pub const RESIZE: u8 = 4;
/// v5: first byte of a message that closes the channel in its second byte.
pub const CLOSE: u8 = 255;

/// How long output is still forwarded after the command exited, for processes it left running
/// that keep its stdout or stderr open.
pub const DRAIN: Duration = Duration::from_secs(2);

/// How long the client has to answer the closing handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The `PATH` a command gets when the container's environment has none (the runtimes' default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What an exec request asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOptions {
    /// The pod's UID (the agent finds the container's state under it).
    pub pod_uid: String,
    /// Program and arguments (`command`, repeated).
    pub command: Vec<String>,
    /// Forward the client's stdin.
    pub stdin: bool,
    /// Forward the command's stdout.
    pub stdout: bool,
    /// Forward the command's stderr (not with `tty`: the terminal carries both).
    pub stderr: bool,
    /// Run the command on a pseudo-terminal.
    pub tty: bool,
}

impl ExecOptions {
    /// Parses a query string; the error names the bad parameter. See [`ExecOptions::validate`]
    /// for what a runnable request needs.
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut o = Self::default();
        let flag = |name: &str, v: &str| match v {
            "true" | "1" | "" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(format!("{name}: {v:?} is not a boolean")),
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "podUID" => o.pod_uid = v.into_owned(),
                "command" => o.command.push(v.into_owned()),
                "stdin" => o.stdin = flag("stdin", &v)?,
                "stdout" => o.stdout = flag("stdout", &v)?,
                "stderr" => o.stderr = flag("stderr", &v)?,
                "tty" => o.tty = flag("tty", &v)?,
                _ => {}
            }
        }
        Ok(o)
    }

    /// Whether the request can run: a command and at least one stream.
    pub fn validate(&self) -> Result<(), String> {
        if self.command.first().is_none_or(String::is_empty) {
            return Err(
                "you must specify at least 1 command (kubectl exec POD -- COMMAND [ARGS...])"
                    .into(),
            );
        }
        if !self.stdin && !self.stdout && !self.stderr {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        Ok(())
    }

    /// The query string that [`ExecOptions::parse`] reads back.
    pub fn to_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        if !self.pod_uid.is_empty() {
            query.append_pair("podUID", &self.pod_uid);
        }
        for c in &self.command {
            query.append_pair("command", c);
        }
        for (name, set) in [
            ("stdin", self.stdin),
            ("stdout", self.stdout),
            ("stderr", self.stderr),
            ("tty", self.tty),
        ] {
            if set {
                query.append_pair(name, "true");
            }
        }
        query.finish()
    }
}

/// `/exec/{ns}/{pod}/{container}` → its three parts.
pub fn parse_exec_path(path: &str) -> Option<(&str, &str, &str)> {
    let mut parts = path.strip_prefix("/exec/")?.split('/');
    let (ns, pod, container) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = |s: &str| !s.is_empty() && s != "." && s != "..";
    (parts.next().is_none() && ok(ns) && ok(pod) && ok(container)).then_some((ns, pod, container))
}

/// The subprotocol to speak, given the values of the client's `Sec-WebSocket-Protocol`
/// headers (each may list several, comma-separated).
pub fn choose_protocol(offered: &[&str]) -> Option<&'static str> {
    let offered: Vec<&str> = offered
        .iter()
        .copied()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    PROTOCOLS.into_iter().find(|p| offered.contains(p))
}

/// Whether a header holds `token` in its comma-separated list (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether `headers` ask for a WebSocket upgrade.
pub fn wants_websocket(headers: &HeaderMap) -> bool {
    has_token(headers, header::UPGRADE, "websocket")
}

/// Checks a WebSocket upgrade request: the subprotocol to answer with and the
/// `Sec-WebSocket-Accept` value, or why it cannot be served.
pub fn accept(headers: &HeaderMap) -> Result<(&'static str, String), String> {
    if !wants_websocket(headers) || !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(format!(
            "exec is served over WebSocket only: upgrade the request to one of the subprotocols {} \
             (SPDY is not supported)",
            PROTOCOLS.join(", ")
        ));
    }
    let version = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok());
    if version.is_some_and(|v| v.trim() != "13") {
        return Err("only WebSocket version 13 is supported".into());
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or("the WebSocket upgrade has no Sec-WebSocket-Key")?;
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let protocol = choose_protocol(&offered).ok_or_else(|| {
        format!(
            "none of the offered WebSocket subprotocols is served; rudder serves {}",
            PROTOCOLS.join(", ")
        )
    })?;
    Ok((protocol, derive_accept_key(key.as_bytes())))
}

/// A terminal size, as resize messages carry it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The last size in a resize message (client-go writes one JSON object per message, but
/// several in one are read too).
pub fn parse_resize(data: &[u8]) -> Option<TerminalSize> {
    serde_json::Deserializer::from_slice(data)
        .into_iter::<TerminalSize>()
        .map_while(Result::ok)
        .last()
}

/// A message from the client, as the session acts on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Bytes for the command's stdin.
    Stdin(Bytes),
    /// The terminal's new size.
    Resize(TerminalSize),
    /// v5: the client's stdin ended.
    CloseStdin,
    /// Anything else (other channels, closes of other channels, malformed resizes).
    Ignored,
}

/// Reads one binary message of protocol v5 (`v5`) or v4.
pub fn parse_inbound(message: &Bytes, v5: bool) -> Inbound {
    match message.as_ref() {
        [STDIN, rest @ ..] if !rest.is_empty() => Inbound::Stdin(message.slice(1..)),
        [RESIZE, rest @ ..] => parse_resize(rest).map_or(Inbound::Ignored, Inbound::Resize),
        [CLOSE, STDIN, ..] if v5 => Inbound::CloseStdin,
        _ => Inbound::Ignored,
    }
}

/// A message for `channel` carrying `data`.
pub fn frame(channel: u8, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    Bytes::from(out)
}

/// The `Status` sent on the error channel for a command that exited with `code`.
pub fn exit_status(code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: exit status {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// The `Status` sent on the error channel when the command could not run (kubectl prints the
/// message, as with the kubelet's internal errors).
pub fn error_status(message: &str) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("Internal error occurred: {message}"),
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    })
}

/// The exit code of a finished process: its code, or 128 + the signal that killed it.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 255,
    }
}

/// Why a container cannot be exec'd into.
#[derive(Debug, PartialEq, Eq)]
pub enum FindError {
    /// The request was malformed (bad pod UID).
    BadRequest(String),
    /// The container does not run.
    NotRunning(String),
}

/// The host pid of the main process of `container` of pod `pod_uid`, which must be running.
pub fn find_container(root: &Path, pod_uid: &str, container: &str) -> Result<i32, FindError> {
    let uid_ok = !pod_uid.is_empty()
        && pod_uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !uid_ok {
        return Err(FindError::BadRequest(
            "podUID: a pod UID is required".into(),
        ));
    }
    let dir = root
        .join("pods")
        .join(pod_uid)
        .join("containers")
        .join(container);
    let mut attempts: Vec<u32> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    attempts.sort_unstable();
    let read_pid = |path: PathBuf| -> Option<i32> {
        std::fs::read_to_string(path)
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
    };
    for attempt in attempts.into_iter().rev() {
        let instance = dir.join(attempt.to_string());
        if instance.join("exit").exists() {
            continue;
        }
        let (Some(pid), Some(shim)) = (
            read_pid(instance.join("pid")),
            read_pid(instance.join("shim")),
        ) else {
            continue;
        };
        // The container's process is the shim's child as long as both run; this also guards
        // against a recycled pid.
        if parent_of(pid) == Some(shim) {
            return Ok(pid);
        }
    }
    Err(FindError::NotRunning(format!(
        "container {container:?} is not running in this pod"
    )))
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_field(&stat, 1)
}

/// Field `n` (0: state, 1: ppid, 2: pgrp, 3: session) of a `/proc/<pid>/stat` line, counted
/// after the command name (which may hold spaces and parentheses).
fn stat_field(stat: &str, n: usize) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(n)?.parse().ok()
}

/// The environment of a process from its `/proc/<pid>/environ`, completed for an exec: a
/// default `PATH` when there is none, `TERM=xterm` with a terminal.
pub fn container_env(environ: &[u8], tty: bool) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = environ
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let eq = entry.iter().position(|b| *b == b'=').filter(|i| *i > 0)?;
            Some((
                OsStr::from_bytes(&entry[..eq]).to_owned(),
                OsStr::from_bytes(&entry[eq + 1..]).to_owned(),
            ))
        })
        .collect();
    let has = |env: &[(OsString, OsString)], name: &str| {
        env.iter().any(|(k, _)| k.as_os_str() == OsStr::new(name))
    };
    if !has(&env, "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if tty && !has(&env, "TERM") {
        env.push(("TERM".into(), "xterm".into()));
    }
    env
}

/// The `cgroup.procs` files of the cgroups rudder made for a container, from the container
/// process's `/proc/<pid>/cgroup` (`proc_cgroup`). `root` is where cgroup file systems are
/// mounted; `exists` tells which candidate files exist (v1 hierarchies may be mounted under
/// their combined name, `cpu,cpuacct`, or one controller's; cgroup2 at `root` itself or, on
/// hybrid hosts, at `root/unified`).
pub fn cgroup_procs(
    proc_cgroup: &str,
    root: &Path,
    exists: impl Fn(&Path) -> bool,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some(relative) = path.strip_prefix('/').filter(|p| p.starts_with("rudder/")) else {
            continue;
        };
        if controllers.starts_with("name=") {
            continue;
        }
        let mounts: Vec<PathBuf> = if controllers.is_empty() {
            vec![root.to_owned(), root.join("unified")]
        } else {
            std::iter::once(root.join(controllers))
                .chain(controllers.split(',').map(|c| root.join(c)))
                .collect()
        };
        if let Some(procs) = mounts
            .iter()
            .map(|m| m.join(relative).join("cgroup.procs"))
            .find(|p| exists(p))
            && !out.contains(&procs)
        {
            out.push(procs);
        }
    }
    out
}

/// What to start for an exec: a program with its arguments and environment, and the
/// `cgroup.procs` files to join first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spawn {
    /// The program (an absolute path).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment.
    pub env: Vec<(OsString, OsString)>,
    /// `cgroup.procs` files the process joins before it runs.
    pub cgroup_procs: Vec<PathBuf>,
}

impl Spawn {
    /// The command to start: program, arguments and the whole environment set, and a hook
    /// that makes the child a session leader and moves it into the container's cgroups before
    /// it runs. Standard streams are left to the caller.
    pub fn command(&self) -> io::Result<tokio::process::Command> {
        let cgroups = self
            .cgroup_procs
            .iter()
            .map(|p| {
                CString::new(p.as_os_str().as_bytes())
                    .map_err(|_| io::Error::other("a cgroup path contains a NUL byte"))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        // SAFETY: the hook runs in the forked child before exec and only makes syscalls
        // (setsid, open, write, close) on memory prepared before the fork; errors are built
        // from errno without allocating.
        unsafe {
            command.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                for procs in &cgroups {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let written = libc::write(fd, c"0".as_ptr().cast(), 1);
                    let error = io::Error::last_os_error();
                    libc::close(fd);
                    if written != 1 {
                        return Err(error);
                    }
                }
                Ok(())
            });
        }
        Ok(command)
    }
}

/// Finds `name` in the agent's `PATH` or the usual system directories.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// How to run `command` inside the namespaces, root, working directory, cgroups and
/// environment of the container whose main process is `pid`.
pub fn nsenter_spawn(pid: i32, command: &[String], tty: bool) -> io::Result<Spawn> {
    let program = find_program("nsenter").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "nsenter (util-linux) is not installed on this node",
        )
    })?;
    let mut args: Vec<String> = vec!["--target".into(), pid.to_string()];
    args.extend(
        [
            "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd", "--",
        ]
        .map(String::from),
    );
    if tty {
        // The terminal must belong to a session inside the container's PID namespace: a shell
        // with job control gives the terminal back to the process group it found there when it
        // exits, and one outside the namespace does not exist for it ("Cannot set tty process
        // group"). util-linux's setsid, run after nsenter's fork, makes the command a session
        // leader there and takes the terminal (as root it may take it from our outer session).
        args.extend(["setsid", "--ctty"].map(String::from));
    }
    args.extend(command.iter().cloned());
    let environ = std::fs::read(format!("/proc/{pid}/environ")).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("reading the container's environment: {e}"),
        )
    })?;
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| io::Error::new(e.kind(), format!("reading the container's cgroups: {e}")))?;
    Ok(Spawn {
        program,
        args,
        env: container_env(&environ, tty),
        cgroup_procs: cgroup_procs(
            &proc_cgroup,
            Path::new(crate::runtime::cgroups::ROOT),
            Path::exists,
        ),
    })
}

fn text(code: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(message.into())).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Serves an (authenticated) exec request: checks it, answers `101 Switching Protocols` and
/// runs the session on the upgraded connection.
pub async fn serve(root: &Path, mut req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "exec is served for GET and POST",
        );
    }
    let path = req.uri().path().to_owned();
    let Some((_ns, _pod, container)) = parse_exec_path(&path) else {
        return text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
    };
    let options = match ExecOptions::parse(req.uri().query().unwrap_or("")) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    if let Err(e) = options.validate() {
        return text(StatusCode::BAD_REQUEST, e);
    }
    let pid = match find_container(root, &options.pod_uid, container) {
        Ok(pid) => pid,
        Err(FindError::BadRequest(m)) => return text(StatusCode::BAD_REQUEST, m),
        Err(FindError::NotRunning(m)) => return text(StatusCode::NOT_FOUND, m),
    };
    let (protocol, accept_key) = match accept(req.headers()) {
        Ok(a) => a,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let spawn = match nsenter_spawn(pid, &options.command, options.tty) {
        Ok(s) => s,
        Err(e) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("error executing command in container: {e}"),
            );
        }
    };
    let Ok(accept_value) = HeaderValue::from_str(&accept_key) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bad Sec-WebSocket-Accept",
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                session(ws, &spawn, &options, protocol).await;
            }
            Err(e) => tracing::debug!(error = %e, "exec: the connection was not upgraded"),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept_value);
    headers.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol),
    );
    resp
}

type WsSink<S> = SplitSink<WebSocketStream<S>, Message>;
type WsSource<S> = SplitStream<WebSocketStream<S>>;

/// Runs `spawn` for the client on `ws` (speaking `protocol`) until the command ended and its
/// status was sent, or the client went away.
pub async fn session<S>(
    ws: WebSocketStream<S>,
    spawn: &Spawn,
    options: &ExecOptions,
    protocol: &str,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let v5 = protocol == V5;
    let (mut sink, source) = ws.split();
    let (out_tx, out_rx) = mpsc::channel::<Message>(16);
    let (stdin_tx, stdin_rx) = if options.stdin {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let process = Process::start(spawn, options, out_tx, stdin_rx);
    let pty = process.as_ref().ok().and_then(|p| p.pty.clone());
    let mut reader = tokio::spawn(read_client(source, v5, stdin_tx, pty));
    let status = match process {
        Ok(process) => process.supervise(&mut sink, out_rx, &mut reader).await,
        Err(e) => Some(error_status(&format!(
            "error executing command in container: {e}"
        ))),
    };
    match status {
        Some(status) => finish(sink, reader, &status).await,
        None => reader.abort(),
    }
}

/// Reads the client's messages until it closes or goes away: stdin data goes to `stdin`
/// (dropped when the client closes its stdin), resizes to the terminal. Ping and pong are
/// answered by the WebSocket layer as long as this reads. Returns the stream for the closing
/// handshake.
async fn read_client<S>(
    mut source: WsSource<S>,
    v5: bool,
    mut stdin: Option<mpsc::Sender<Bytes>>,
    pty: Option<Arc<Pty>>,
) -> WsSource<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(Ok(message)) = source.next().await {
        let data = match message {
            Message::Binary(data) => data,
            Message::Close(_) => break,
            // Ping and pong are handled below us; text is not part of the protocol.
            _ => continue,
        };
        match parse_inbound(&data, v5) {
            Inbound::Stdin(bytes) => {
                let delivered = match &stdin {
                    Some(tx) => tx.send(bytes).await.is_ok(),
                    None => true,
                };
                if !delivered {
                    // The command no longer reads its stdin.
                    stdin = None;
                }
            }
            Inbound::CloseStdin => stdin = None,
            Inbound::Resize(size) => {
                if let Some(pty) = &pty {
                    pty.resize(size);
                }
            }
            Inbound::Ignored => {}
        }
    }
    source
}

/// Sends `status` and the close frame, waits for the client's close and shuts the connection
/// down.
async fn finish<S>(mut sink: WsSink<S>, mut reader: JoinHandle<WsSource<S>>, status: &Value)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let json = serde_json::to_vec(status).unwrap_or_default();
    let close = Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }));
    if sink
        .send(Message::Binary(frame(ERROR, &json)))
        .await
        .is_err()
        || sink.send(close).await.is_err()
    {
        reader.abort();
        return;
    }
    match tokio::time::timeout(CLOSE_WAIT, &mut reader).await {
        Ok(Ok(source)) => {
            if let Ok(mut ws) = source.reunite(sink) {
                let _ = ws.get_mut().shutdown().await;
            }
        }
        _ => reader.abort(),
    }
}

/// A running exec'd command and the tasks that move its data.
struct Process {
    child: tokio::process::Child,
    /// Its pid, which is also its session and process group id.
    pid: i32,
    pty: Option<Arc<Pty>>,
    pumps: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl Process {
    /// Starts the command with pipes or a terminal; output goes to `out` as channel messages,
    /// `stdin` is written to the command.
    fn start(
        spawn: &Spawn,
        options: &ExecOptions,
        out: mpsc::Sender<Message>,
        stdin: Option<mpsc::Receiver<Bytes>>,
    ) -> io::Result<Self> {
        let tty = options.tty;
        let mut command = spawn.command()?;
        let pty = if tty {
            let (master, slave) = open_pty()?;
            command
                .stdin(Stdio::from(slave.try_clone()?))
                .stdout(Stdio::from(slave.try_clone()?))
                .stderr(Stdio::from(slave));
            // SAFETY: we own the master fd; the AsyncFd owns it from here and deregisters it
            // before closing it.
            let master = unsafe { AsyncFd::register(master) }.map_err(io::Error::from)?;
            Some(Arc::new(Pty { master }))
        } else {
            let pipe = |wanted: bool| {
                if wanted {
                    Stdio::piped()
                } else {
                    Stdio::null()
                }
            };
            command
                .stdin(pipe(stdin.is_some()))
                .stdout(pipe(options.stdout))
                .stderr(pipe(options.stderr));
            None
        };
        let spawned = command.spawn();
        // The command holds our copies of the terminal's far side: close them, so that reading
        // the terminal ends when the command's side is closed.
        drop(command);
        let mut child = spawned.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("starting {}: {e}", spawn.program.display()),
            )
        })?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| io::Error::other("the started process has no pid"))?;
        let mut pumps = Vec::new();
        let mut writer = None;
        if let Some(pty) = &pty {
            pumps.push(tokio::spawn(pump_pty(
                Arc::clone(pty),
                options.stdout,
                out.clone(),
            )));
            if let Some(mut rx) = stdin {
                let pty = Arc::clone(pty);
                writer = Some(tokio::spawn(async move {
                    while let Some(data) = rx.recv().await {
                        if pty.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                }));
            }
        } else {
            if let Some(stdout) = child.stdout.take() {
                pumps.push(tokio::spawn(pump(stdout, STDOUT, out.clone())));
            }
            if let Some(stderr) = child.stderr.take() {
                pumps.push(tokio::spawn(pump(stderr, STDERR, out.clone())));
            }
            if let (Some(mut pipe), Some(mut rx)) = (child.stdin.take(), stdin) {
                writer = Some(tokio::spawn(async move {
                    while let Some(data) = rx.recv().await {
                        if pipe.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    // Dropping the pipe is the command's end of input.
                }));
            }
        }
        Ok(Self {
            child,
            pid,
            pty,
            pumps,
            writer,
        })
    }

    /// Forwards output until the command exited and its output ended (or [`DRAIN`] passed),
    /// or the client went away. Returns the status to send, or `None` when there is nobody to
    /// send it to (the command is then killed).
    async fn supervise<S>(
        mut self,
        sink: &mut WsSink<S>,
        mut out: mpsc::Receiver<Message>,
        reader: &mut JoinHandle<WsSource<S>>,
    ) -> Option<Value>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut status: Option<Value> = None;
        let mut drain_until: Option<Instant> = None;
        let mut outputs_done = false;
        let mut client_gone = false;
        while !(client_gone || status.is_some() && outputs_done) {
            let drain = drain_until.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                message = out.recv(), if !outputs_done => match message {
                    Some(message) => client_gone = sink.send(message).await.is_err(),
                    None => outputs_done = true,
                },
                exited = self.child.wait(), if status.is_none() => {
                    status = Some(match exited {
                        Ok(exit) => exit_status(exit_code(exit)),
                        Err(e) => error_status(&format!("waiting for the command: {e}")),
                    });
                    drain_until = Some(Instant::now() + DRAIN);
                }
                _ = &mut *reader => client_gone = true,
                () = tokio::time::sleep_until(drain), if drain_until.is_some() => break,
            }
        }
        for pump in &self.pumps {
            pump.abort();
        }
        if let Some(writer) = &self.writer {
            writer.abort();
        }
        if status.is_none() {
            // The client went away while the command runs: end it and what it started.
            kill_session(self.pid);
            let _ = self.child.wait().await;
            return None;
        }
        // Closes the terminal once the pumps are gone.
        self.pty = None;
        if client_gone { None } else { status }
    }
}

/// SIGKILLs the process group `sid` and every process of session `sid` (an interactive shell
/// moves its jobs to process groups of their own, but they stay in the session).
pub(crate) fn kill_session(sid: i32) {
    if sid <= 1 {
        return;
    }
    // SAFETY: plain killpg(2) of the group this agent created.
    unsafe {
        libc::killpg(sid, libc::SIGKILL);
    }
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let in_session = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| stat_field(&stat, 3))
            == Some(sid);
        if in_session {
            crate::runtime::process::kill(pid, libc::SIGKILL);
        }
    }
}

/// Copies one output pipe of the command to `channel` until it ends.
async fn pump(mut from: impl AsyncRead + Unpin, channel: u8, out: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out
                    .send(Message::Binary(frame(channel, &buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Copies the terminal's output to stdout (`forward`) until every process closed the
/// terminal.
async fn pump_pty(pty: Arc<Pty>, forward: bool, out: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match pty.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                if forward
                    && out
                        .send(Message::Binary(frame(STDOUT, &buf[..n])))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // EIO: the last process holding the terminal closed it.
            Err(_) => return,
        }
    }
}

/// The agent's side of a pseudo-terminal.
struct Pty {
    master: AsyncFd<OwnedFd>,
}

impl Pty {
    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.master
            .async_io(Interest::READABLE, |fd| {
                // SAFETY: reads into a buffer we own from an fd we own.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            })
            .await
    }

    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self
                .master
                .async_io(Interest::WRITABLE, |fd| {
                    // SAFETY: writes from a buffer we own to an fd we own.
                    let n =
                        unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(n as usize)
                    }
                })
                .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            data = &data[n..];
        }
        Ok(())
    }

    fn resize(&self, size: TerminalSize) {
        let ws = libc::winsize {
            ws_row: size.height,
            ws_col: size.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize we own; the fd is ours.
        unsafe {
            libc::ioctl(
                self.master.get_ref().as_raw_fd(),
                libc::TIOCSWINSZ,
                &ws as *const libc::winsize,
            );
        }
    }
}

/// Opens a pseudo-terminal: the agent's side (non-blocking) and the command's side.
fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    let last = |what: &str| {
        let e = io::Error::last_os_error();
        io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    // SAFETY: open(2) of a constant path; the fd is owned right after.
    let master = unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if master < 0 {
        return Err(last("opening /dev/ptmx"));
    }
    // SAFETY: a fresh fd that nobody else owns.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    // SAFETY: grantpt and unlockpt take the master fd.
    if unsafe { libc::grantpt(master.as_raw_fd()) } != 0
        || unsafe { libc::unlockpt(master.as_raw_fd()) } != 0
    {
        return Err(last("unlocking the pseudo-terminal"));
    }
    let mut name: [libc::c_char; 128] = [0; 128];
    // SAFETY: ptsname_r writes at most `name.len()` bytes, NUL included.
    let rc = unsafe { libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: `name` is NUL-terminated by ptsname_r; the fd is owned right after.
    let slave = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(last("opening the pseudo-terminal"));
    }
    // SAFETY: a fresh fd that nobody else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    Ok((master, slave))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_round_trip() {
        let o = ExecOptions::parse(
            "command=sh&command=-c&command=echo%20hi%3B%20exit%203&stdin=true&stdout=1&tty=false&container=app",
        )
        .unwrap();
        assert_eq!(
            o,
            ExecOptions {
                pod_uid: String::new(),
                command: vec!["sh".into(), "-c".into(), "echo hi; exit 3".into()],
                stdin: true,
                stdout: true,
                stderr: false,
                tty: false,
            }
        );
        assert!(o.validate().is_ok());
        let with_uid = ExecOptions {
            pod_uid: "1f-2a".into(),
            ..o
        };
        assert_eq!(ExecOptions::parse(&with_uid.to_query()).unwrap(), with_uid);
        assert!(ExecOptions::parse("tty=maybe").unwrap_err().contains("tty"));
        let no_command = ExecOptions::parse("stdout=true").unwrap();
        assert!(no_command.validate().unwrap_err().contains("command"));
        let no_stream = ExecOptions::parse("command=ls").unwrap();
        assert!(
            no_stream
                .validate()
                .unwrap_err()
                .contains("stdin, stdout, stderr")
        );
    }

    #[test]
    fn paths_parse() {
        assert_eq!(
            parse_exec_path("/exec/default/web/app"),
            Some(("default", "web", "app"))
        );
        assert_eq!(parse_exec_path("/exec/default/web"), None);
        assert_eq!(parse_exec_path("/exec/default/../app"), None);
        assert_eq!(parse_exec_path("/containerLogs/a/b/c"), None);
    }

    #[test]
    fn protocols_prefer_v5() {
        assert_eq!(choose_protocol(&["v5.channel.k8s.io"]), Some(V5));
        assert_eq!(
            choose_protocol(&["v4.channel.k8s.io, v5.channel.k8s.io"]),
            Some(V5)
        );
        assert_eq!(
            choose_protocol(&["channel.k8s.io", "v4.channel.k8s.io"]),
            Some(V4)
        );
        assert_eq!(choose_protocol(&["base64.channel.k8s.io"]), None);
        assert_eq!(choose_protocol(&[]), None);
    }

    #[test]
    fn upgrades_are_checked() {
        let mut headers = HeaderMap::new();
        assert!(accept(&headers).unwrap_err().contains("WebSocket only"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        assert!(accept(&headers).unwrap_err().contains("Sec-WebSocket-Key"));
        // RFC 6455's example key and answer.
        headers.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert!(accept(&headers).unwrap_err().contains("subprotocols"));
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v5.channel.k8s.io"),
        );
        assert_eq!(
            accept(&headers).unwrap(),
            (V5, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_owned())
        );
        let mut spdy = HeaderMap::new();
        spdy.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        spdy.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        assert!(accept(&spdy).unwrap_err().contains("SPDY is not supported"));
    }

    #[test]
    fn inbound_messages_follow_the_protocol_version() {
        let msg = |b: &[u8]| Bytes::copy_from_slice(b);
        assert_eq!(
            parse_inbound(&msg(b"\x00hello"), true),
            Inbound::Stdin(Bytes::from_static(b"hello"))
        );
        assert_eq!(parse_inbound(&msg(b"\x00"), true), Inbound::Ignored);
        assert_eq!(
            parse_inbound(&msg(&[CLOSE, STDIN]), true),
            Inbound::CloseStdin
        );
        assert_eq!(
            parse_inbound(&msg(&[CLOSE, STDIN]), false),
            Inbound::Ignored
        );
        assert_eq!(
            parse_inbound(&msg(&[CLOSE, RESIZE]), true),
            Inbound::Ignored
        );
        assert_eq!(
            parse_inbound(&msg(b"\x04{\"Width\":120,\"Height\":40}\n"), false),
            Inbound::Resize(TerminalSize {
                width: 120,
                height: 40
            })
        );
        assert_eq!(
            parse_resize(b"{\"Width\":80,\"Height\":24}\n{\"Width\":100,\"Height\":30}\n"),
            Some(TerminalSize {
                width: 100,
                height: 30
            })
        );
        assert_eq!(parse_inbound(&msg(b"\x04not json"), true), Inbound::Ignored);
        assert_eq!(parse_inbound(&msg(b"\x01out"), true), Inbound::Ignored);
        assert_eq!(parse_inbound(&msg(b""), true), Inbound::Ignored);
        assert_eq!(&frame(STDERR, b"err")[..], b"\x02err");
    }

    #[test]
    fn statuses_carry_exit_codes() {
        assert_eq!(exit_status(0), json!({"metadata": {}, "status": "Success"}));
        assert_eq!(
            exit_status(3),
            json!({
                "metadata": {},
                "status": "Failure",
                "message": "command terminated with non-zero exit code: exit status 3",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
            })
        );
        let failed = error_status("error executing command in container: boom");
        assert_eq!(failed["reason"], "InternalError");
        assert_eq!(
            failed["message"],
            "Internal error occurred: error executing command in container: boom"
        );
    }

    #[test]
    fn environments_come_from_the_container() {
        let env = container_env(b"HOSTNAME=web\0EMPTY=\0A=b=c\0=bad\0noequals\0", false);
        let pairs: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string_lossy().into(), v.to_string_lossy().into()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("HOSTNAME", "web"),
                ("EMPTY", ""),
                ("A", "b=c"),
                ("PATH", DEFAULT_PATH)
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let tty = container_env(b"PATH=/bin\0", true);
        assert_eq!(tty.len(), 2);
        assert_eq!(tty[1], (OsString::from("TERM"), OsString::from("xterm")));
    }

    #[test]
    fn cgroups_are_the_containers_own() {
        let root = Path::new("/sys/fs/cgroup");
        let hybrid = "12:pids:/user.slice\n\
                      5:memory:/rudder/u1/app\n\
                      4:cpu,cpuacct:/rudder/u1/app\n\
                      1:name=systemd:/rudder/u1/app\n\
                      0::/user.slice/session-1.scope\n";
        let exists = |p: &Path| {
            [
                "/sys/fs/cgroup/memory/rudder/u1/app/cgroup.procs",
                "/sys/fs/cgroup/cpu/rudder/u1/app/cgroup.procs",
            ]
            .iter()
            .any(|e| Path::new(e) == p)
        };
        assert_eq!(
            cgroup_procs(hybrid, root, exists),
            [
                PathBuf::from("/sys/fs/cgroup/memory/rudder/u1/app/cgroup.procs"),
                PathBuf::from("/sys/fs/cgroup/cpu/rudder/u1/app/cgroup.procs"),
            ]
        );
        let unified = "0::/rudder/u1/app\n";
        assert_eq!(
            cgroup_procs(unified, root, |p| p
                == Path::new("/sys/fs/cgroup/rudder/u1/app/cgroup.procs")),
            [PathBuf::from("/sys/fs/cgroup/rudder/u1/app/cgroup.procs")]
        );
        assert!(cgroup_procs("0::/system.slice/rudder.service\n", root, |_| true).is_empty());
    }

    #[test]
    fn stat_fields_skip_the_command_name() {
        let stat = "4242 (a (weird) name) S 17 4242 4242 0 -1";
        assert_eq!(stat_field(stat, 1), Some(17));
        assert_eq!(stat_field(stat, 3), Some(4242));
        assert_eq!(stat_field("garbage", 1), None);
    }

    #[test]
    fn the_running_attempt_is_found() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pods/u-1/containers/app");
        // Attempt 0 exited; attempt 1 "runs": this test process, child of its parent.
        std::fs::create_dir_all(dir.join("0")).unwrap();
        std::fs::write(dir.join("0/pid"), "1").unwrap();
        std::fs::write(dir.join("0/exit"), "{}").unwrap();
        std::fs::create_dir_all(dir.join("1")).unwrap();
        std::fs::write(dir.join("1/pid"), std::process::id().to_string()).unwrap();
        std::fs::write(
            dir.join("1/shim"),
            std::os::unix::process::parent_id().to_string(),
        )
        .unwrap();
        let me = i32::try_from(std::process::id()).unwrap();
        assert_eq!(find_container(root.path(), "u-1", "app"), Ok(me));
        // A pid whose parent is not the shim is not the container.
        std::fs::write(dir.join("1/shim"), std::process::id().to_string()).unwrap();
        assert!(matches!(
            find_container(root.path(), "u-1", "app"),
            Err(FindError::NotRunning(_))
        ));
        assert!(matches!(
            find_container(root.path(), "u-1", "nope"),
            Err(FindError::NotRunning(m)) if m.contains("\"nope\" is not running")
        ));
        assert!(matches!(
            find_container(root.path(), "../x", "app"),
            Err(FindError::BadRequest(_))
        ));
    }

    /// What a client saw of a session.
    #[derive(Debug, Default)]
    struct Seen {
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        status: Option<Value>,
        closed_normally: bool,
    }

    /// Runs a session of `argv` (a plain process, no namespaces) over an in-memory connection;
    /// the client sends `input` messages, then reads until the server closes.
    async fn run(argv: &[&str], options: ExecOptions, input: Vec<Bytes>) -> Seen {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let spawn = Spawn {
            program: PathBuf::from(argv[0]),
            args: argv[1..].iter().map(|s| s.to_string()).collect(),
            env: container_env(b"", options.tty),
            cgroup_procs: Vec::new(),
        };
        let server = tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
            session(ws, &spawn, &options, V5).await;
        });
        let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        for message in input {
            client.send(Message::Binary(message)).await.unwrap();
        }
        let mut seen = Seen::default();
        let read = async {
            while let Some(Ok(message)) = client.next().await {
                match message {
                    Message::Binary(data) => match data.first() {
                        Some(&STDOUT) => seen.stdout.extend_from_slice(&data[1..]),
                        Some(&STDERR) => seen.stderr.extend_from_slice(&data[1..]),
                        Some(&ERROR) => seen.status = serde_json::from_slice(&data[1..]).ok(),
                        _ => {}
                    },
                    Message::Close(Some(frame)) => {
                        seen.closed_normally = frame.code == CloseCode::Normal;
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .unwrap()
            .unwrap();
        seen
    }

    fn streams(stdin: bool, tty: bool) -> ExecOptions {
        ExecOptions {
            stdin,
            stdout: true,
            stderr: !tty,
            tty,
            ..ExecOptions::default()
        }
    }

    #[tokio::test]
    async fn sessions_forward_output_and_exit_codes() {
        let seen = run(
            &["/bin/sh", "-c", "echo out; echo err >&2; exit 3"],
            streams(false, false),
            Vec::new(),
        )
        .await;
        assert_eq!(seen.stdout, b"out\n");
        assert_eq!(seen.stderr, b"err\n");
        assert_eq!(seen.status, Some(exit_status(3)));
        assert!(seen.closed_normally);
    }

    #[tokio::test]
    async fn stdin_ends_with_the_v5_close_message() {
        let seen = run(
            &["/bin/cat"],
            streams(true, false),
            vec![
                frame(STDIN, b"hel"),
                frame(STDIN, b"lo\n"),
                Bytes::from_static(&[CLOSE, STDIN]),
            ],
        )
        .await;
        assert_eq!(seen.stdout, b"hello\n");
        assert_eq!(seen.status, Some(exit_status(0)));
    }

    #[tokio::test]
    async fn commands_that_cannot_start_report_an_error() {
        let seen = run(&["/nonexistent/program"], streams(false, false), Vec::new()).await;
        let status = seen.status.unwrap();
        assert_eq!(status["reason"], "InternalError");
        assert!(
            status["message"]
                .as_str()
                .unwrap()
                .contains("/nonexistent/program"),
            "{status}"
        );
    }

    #[tokio::test]
    async fn terminals_are_controlling_and_resizable() {
        // The resize is applied before the line is written, so `read` returns after it.
        let seen = run(
            &["/bin/sh", "-c", "tty; read line; stty size"],
            streams(true, true),
            vec![
                frame(RESIZE, b"{\"Width\":91,\"Height\":27}"),
                frame(STDIN, b"go\n"),
            ],
        )
        .await;
        let out = String::from_utf8_lossy(&seen.stdout);
        assert!(out.contains("/dev/pts/"), "{out:?}");
        assert!(out.contains("27 91"), "{out:?}");
        assert_eq!(seen.status, Some(exit_status(0)));
    }

    #[tokio::test]
    async fn a_vanished_client_ends_the_command() {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let spawn = Spawn {
            program: "/bin/sleep".into(),
            args: vec!["100".into()],
            env: container_env(b"", false),
            cgroup_procs: Vec::new(),
        };
        let options = streams(false, false);
        let server = tokio::spawn(async move {
            let ws = WebSocketStream::from_raw_socket(server_io, Role::Server, None).await;
            session(ws, &spawn, &options, V5).await;
        });
        drop(client_io);
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
    }
}
