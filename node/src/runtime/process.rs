//! The agent's side of a container process: start a [`shim`](super::shim) in a session of its
//! own, learn the container's pid, wait for its end through a pidfd, signal it, and adopt shims
//! that an earlier agent started.
//!
//! A container instance lives in a directory `<pod dir>/containers/<name>/<attempt>/` holding
//! the shim's `pid` and `exit` files and the `shim` file with the shim's own pid.

use std::{
    fs, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tokio::io::unix::AsyncFd;

use super::shim::{ExitRecord, ShimArgs, now_rfc3339};

/// A container process that is running (or was, until [`Running::wait`] returns).
#[derive(Debug)]
pub struct Running {
    /// The shim's pid.
    pub shim_pid: i32,
    /// The container's pid (host view; PID 1 of its PID namespace).
    pub pid: i32,
    /// Its state directory.
    pub dir: PathBuf,
    /// RFC 3339 time it started (the `pid` file's time for adopted ones).
    pub started_at: String,
    pidfd: AsyncFd<OwnedFd>,
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the kernel just gave us this fd and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Registers a pidfd with the runtime (readable once the process ended).
fn watch_pid(pid: i32) -> io::Result<AsyncFd<OwnedFd>> {
    let fd = pidfd_open(pid)?;
    // SAFETY: we own the pidfd; the AsyncFd owns it from here and deregisters before closing it.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// Sends `signal` to `pid` (no error when it is already gone).
pub fn kill(pid: i32, signal: i32) {
    if pid > 0 {
        // SAFETY: plain kill(2).
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// SIGKILLs every shim and container whose `shim`/`pid` file lies under `dir` (a runtime root,
/// a pod directory): the last-resort cleanup when no agent will stop them. Returns how many.
pub fn kill_all_under(dir: &Path) -> usize {
    let mut killed = 0;
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            killed += kill_all_under(&path);
        } else if matches!(
            path.file_name().and_then(|n| n.to_str()),
            Some("pid" | "shim")
        ) && let Some(pid) = read_pid(&path)
        {
            kill(pid, libc::SIGKILL);
            killed += 1;
        }
    }
    killed
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_exit(dir: &Path) -> Option<ExitRecord> {
    serde_json::from_slice(&fs::read(dir.join("exit")).ok()?).ok()
}

/// The outcome of [`start`].
#[derive(Debug)]
pub enum Started {
    /// The container runs.
    Running(Running),
    /// It could not start, or ended before we looked.
    Exited(ExitRecord),
}

/// Starts a shim for `args` (its `state` is the instance directory) with environment `env`,
/// and waits until the container runs or failed to start.
pub async fn start(
    shim_exe: &Path,
    args: &ShimArgs,
    env: &[(String, String)],
) -> io::Result<Started> {
    fs::create_dir_all(&args.state)?;
    let mut command = Command::new(shim_exe);
    command
        .arg("shim")
        .args(args.to_args())
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(args.state.join("shim.log"))?,
        ));
    // SAFETY: setsid only: the shim gets its own session so it outlives the agent.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = command.spawn()?;
    let shim_pid = i32::try_from(child.id()).map_err(|_| io::Error::other("pid out of range"))?;
    drop(child);
    fs::write(args.state.join("shim"), shim_pid.to_string())?;
    let pidfd = watch_pid(shim_pid)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ended = matches!(
            tokio::time::timeout(Duration::from_millis(2), pidfd.readable()).await,
            Ok(Ok(_))
        );
        if ended {
            reap(&pidfd);
        }
        // A pid file means the container ran (perhaps briefly: its exit is then read by wait).
        if let Some(pid) = read_pid(&args.state.join("pid")) {
            return Ok(Started::Running(Running {
                shim_pid,
                pid,
                dir: args.state.clone(),
                started_at: now_rfc3339(),
                pidfd,
            }));
        }
        if ended {
            // The shim ended before the container ran: the exit record says why.
            return Ok(Started::Exited(read_exit(&args.state).unwrap_or_else(
                || {
                    let log = fs::read_to_string(args.state.join("shim.log")).unwrap_or_default();
                    ExitRecord {
                        exit_code: 128,
                        reason: "StartError".into(),
                        message: format!("the container shim failed: {}", log.trim()),
                        finished_at: now_rfc3339(),
                        ..ExitRecord::default()
                    }
                },
            )));
        }
        if Instant::now() > deadline {
            kill(shim_pid, libc::SIGKILL);
            return Err(io::Error::other("the container did not start within 30 s"));
        }
    }
}

fn reap(pidfd: &AsyncFd<OwnedFd>) {
    // Reap the shim if it is our child (it is not when an earlier agent started it).
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on a pidfd we own, with a valid siginfo buffer.
    unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.get_ref().as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        );
    }
}

/// Adopts the container instance in `dir` that an earlier agent started: running if its shim
/// still lives, else how it ended.
pub fn adopt(dir: &Path) -> Option<Started> {
    if let Some(record) = read_exit(dir) {
        return Some(Started::Exited(record));
    }
    let shim_pid = read_pid(&dir.join("shim"))?;
    let pid = read_pid(&dir.join("pid"));
    let started_at = fs::metadata(dir.join("pid"))
        .and_then(|m| m.modified())
        .ok()
        .map(|t| format!("{:.0}", jiff::Timestamp::try_from(t).unwrap_or_default()))
        .unwrap_or_else(now_rfc3339);
    match (watch_pid(shim_pid), pid) {
        (Ok(pidfd), Some(pid)) => Some(Started::Running(Running {
            shim_pid,
            pid,
            dir: dir.to_owned(),
            started_at,
            pidfd,
        })),
        _ => Some(Started::Exited(ExitRecord {
            exit_code: 137,
            reason: "ContainerStatusUnknown".into(),
            message: "the container's shim is gone and left no exit record".into(),
            finished_at: now_rfc3339(),
            ..ExitRecord::default()
        })),
    }
}

impl Running {
    /// Waits until the container ended and returns the shim's record of it.
    pub async fn wait(&self) -> ExitRecord {
        loop {
            match self.pidfd.readable().await {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        reap(&self.pidfd);
        read_exit(&self.dir).unwrap_or_else(|| ExitRecord {
            exit_code: 137,
            signal: Some(libc::SIGKILL),
            reason: "Error".into(),
            message: "the container's shim was killed".into(),
            started_at: self.started_at.clone(),
            finished_at: now_rfc3339(),
        })
    }

    /// Sends `signal` to the container's main process.
    pub fn signal(&self, signal: i32) {
        kill(self.pid, signal);
    }

    /// Kills the container (and with it its PID namespace) and the shim.
    pub fn kill(&self) {
        kill(self.pid, libc::SIGKILL);
    }
}
