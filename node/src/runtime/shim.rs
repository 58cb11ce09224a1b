//! The container shim (`rudder shim ...`, conmon's job): one small process per running
//! container that puts the container in its namespaces, keeps its logs and records how it ended.
//!
//! The agent starts it in a session of its own, so the shim and its container outlive an agent
//! restart; the new agent adopts them through the files the shim writes in its state directory:
//!
//! - `pid`: the container's process id (host view), written once it runs;
//! - `exit`: JSON `{"exitCode", "signal", "reason", "message", "startedAt", "finishedAt"}`,
//!   written when it ended (or failed to start), just before the shim exits.
//!
//! Steps: join the pod's network namespace; unshare PID, mount, UTS and IPC namespaces; set the
//! hostname; make mounts private and bind the pod's files (`/etc/hosts`, `/etc/resolv.conf`,
//! volumes) over the host's; give the command a private `/tmp` (a fresh tmpfs each attempt, as
//! a container's writable layer would be, so nothing it writes there reaches the host's, with
//! the volumes mounted inside it); then start the command as PID 1 of the new PID namespace with a fresh
//! `/proc`, in the pod's cgroups, dying with the shim (`PR_SET_PDEATHSIG`). SIGTERM, SIGINT,
//! SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to the shim are forwarded to the container. Its
//! stdout and stderr become CRI-format log lines (`<RFC 3339 nano> stdout F <text>`, long lines
//! split into `P` parts), the format `kubectl logs --timestamps` is served from.

use std::{
    ffi::CString,
    fs,
    io::{self, BufRead, BufReader, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicI32, Ordering},
    },
    thread,
};

use serde::{Deserialize, Serialize};

/// A bind mount into the container's mount namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Host path.
    pub source: PathBuf,
    /// Where it appears.
    pub target: PathBuf,
    /// Read-only.
    pub read_only: bool,
}

/// How a container's log is rotated, as the kubelet's `containerLogMaxSize` and
/// `containerLogMaxFiles`: once the log would grow past `max_size` bytes it is renamed to
/// `<log>.<YYYYMMDD-HHMMSS.nnnnnnnnn>` and a new one started; at most `max_files` files (the
/// live one included) are kept, the oldest going first. Rotated files are not compressed.
/// `max_size` 0 never rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRotation {
    /// Bytes a log may hold before it is rotated.
    pub max_size: u64,
    /// Files kept, the live one included (at least 2 when rotating).
    pub max_files: u32,
}

impl Default for LogRotation {
    /// The kubelet's defaults: 10 MiB, 5 files.
    fn default() -> Self {
        Self {
            max_size: 10 << 20,
            max_files: 5,
        }
    }
}

/// A container's CRI log being written, rotated per its [`LogRotation`].
struct LogFile {
    path: PathBuf,
    file: fs::File,
    size: u64,
    rotation: LogRotation,
}

impl LogFile {
    fn open(path: &Path, rotation: LogRotation) -> io::Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            rotation,
        })
    }

    /// Appends one record, rotating first if it would not fit. Write errors are dropped: a
    /// full disk must not stop the container.
    fn write(&mut self, record: &[u8]) {
        let len = record.len() as u64;
        if self.rotation.max_size > 0
            && self.size > 0
            && self.size + len > self.rotation.max_size
            && let Err(e) = self.rotate()
        {
            eprintln!("rudder shim: rotating {}: {e}", self.path.display());
        }
        if self.file.write_all(record).is_ok() {
            self.size += len;
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        let now = jiff::Timestamp::now();
        let stamp = format!(
            "{}.{:09}",
            now.strftime("%Y%m%d-%H%M%S"),
            now.subsec_nanosecond()
        );
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("log")
            .to_owned();
        fs::rename(
            &self.path,
            self.path.with_file_name(format!("{name}.{stamp}")),
        )?;
        *self = Self::open(&self.path, self.rotation)?;
        // Keep `max_files - 1` rotated files: their names sort by time.
        let dir = self.path.parent().unwrap_or_else(|| Path::new("."));
        let prefix = format!("{name}.");
        let mut rotated: Vec<PathBuf> = fs::read_dir(dir)?
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(&prefix))
            })
            .map(|e| e.path())
            .collect();
        rotated.sort();
        let keep = self.rotation.max_files.max(2) as usize - 1;
        let excess = rotated.len().saturating_sub(keep);
        for old in rotated.into_iter().take(excess) {
            let _ = fs::remove_file(old);
        }
        Ok(())
    }
}

/// Everything the shim needs, passed as flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShimArgs {
    /// Network namespace file to join.
    pub netns: PathBuf,
    /// Hostname (the pod name).
    pub hostname: String,
    /// CRI log file.
    pub log: PathBuf,
    /// How the log is rotated.
    pub rotation: LogRotation,
    /// Directory for `pid` and `exit`.
    pub state: PathBuf,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
    /// `cgroup.procs` files to join.
    pub cgroups: Vec<PathBuf>,
    /// Working directory.
    pub workdir: Option<PathBuf>,
    /// Program and arguments.
    pub argv: Vec<String>,
}

impl ShimArgs {
    /// The flags that [`ShimArgs::parse`] reads back (after the `shim` subcommand).
    pub fn to_args(&self) -> Vec<String> {
        let mut out = vec![
            "--netns".into(),
            self.netns.display().to_string(),
            "--hostname".into(),
            self.hostname.clone(),
            "--log".into(),
            self.log.display().to_string(),
            "--state".into(),
            self.state.display().to_string(),
            "--log-max-size".into(),
            self.rotation.max_size.to_string(),
            "--log-max-files".into(),
            self.rotation.max_files.to_string(),
        ];
        for m in &self.mounts {
            out.push(if m.read_only { "--mount-ro" } else { "--mount" }.into());
            out.push(format!("{}:{}", m.source.display(), m.target.display()));
        }
        for c in &self.cgroups {
            out.push("--cgroup".into());
            out.push(c.display().to_string());
        }
        if let Some(w) = &self.workdir {
            out.push("--workdir".into());
            out.push(w.display().to_string());
        }
        out.push("--".into());
        out.extend(self.argv.iter().cloned());
        out
    }

    /// Parses the shim's flags.
    pub fn parse(args: &[String]) -> Result<Self, String> {
        let mut out = Self::default();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--" {
                out.argv = it.cloned().collect();
                break;
            }
            let value = it
                .next()
                .ok_or_else(|| format!("flag {flag} needs a value"))?;
            match flag.as_str() {
                "--netns" => out.netns = value.into(),
                "--hostname" => out.hostname = value.clone(),
                "--log" => out.log = value.into(),
                "--state" => out.state = value.into(),
                "--log-max-size" => {
                    out.rotation.max_size = value
                        .parse()
                        .map_err(|_| format!("--log-max-size wants bytes, got {value:?}"))?;
                }
                "--log-max-files" => {
                    out.rotation.max_files = value
                        .parse()
                        .map_err(|_| format!("--log-max-files wants a count, got {value:?}"))?;
                }
                "--mount" | "--mount-ro" => {
                    let (source, target) = value
                        .split_once(':')
                        .ok_or_else(|| format!("{flag} wants SOURCE:TARGET, got {value:?}"))?;
                    out.mounts.push(Mount {
                        source: source.into(),
                        target: target.into(),
                        read_only: flag == "--mount-ro",
                    });
                }
                "--cgroup" => out.cgroups.push(value.into()),
                "--workdir" => out.workdir = Some(value.into()),
                other => return Err(format!("unknown flag {other}")),
            }
        }
        if out.argv.is_empty() {
            return Err("no command after --".into());
        }
        if out.state.as_os_str().is_empty() || out.log.as_os_str().is_empty() {
            return Err("--state and --log are required".into());
        }
        Ok(out)
    }
}

/// How a container ended, as the shim records it in `exit`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    /// Exit code (128 + signal when killed by one, as container runtimes report it).
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`.
    pub reason: String,
    /// Why it could not start, when it could not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// RFC 3339 start time.
    #[serde(default)]
    pub started_at: String,
    /// RFC 3339 end time.
    pub finished_at: String,
}

/// RFC 3339 UTC time with nanoseconds, as CRI logs and Kubernetes timestamps are written.
pub fn now_rfc3339_nanos() -> String {
    let now = jiff::Timestamp::now();
    format!("{now:.9}")
}

/// RFC 3339 UTC time to the second (Kubernetes `Time`).
pub fn now_rfc3339() -> String {
    let now = jiff::Timestamp::now();
    format!("{now:.0}")
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(signal: libc::c_int) {
    let child = CHILD.load(Ordering::Relaxed);
    if child > 0 {
        // SAFETY: kill is async-signal-safe; the pid is our own child's.
        unsafe {
            libc::kill(child, signal);
        }
    }
}

fn check(ret: libc::c_int, what: &str) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::other(format!("{} contains a NUL byte", path.display())))
}

fn write_atomic(dir: &Path, name: &str, content: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, content)?;
    fs::rename(tmp, dir.join(name))
}

/// Enters the namespaces and sets up mounts (the shim is still single-threaded here).
fn enter(args: &ShimArgs) -> io::Result<()> {
    let netns = fs::File::open(&args.netns)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", args.netns.display())))?;
    // SAFETY: plain syscalls on a valid fd and constant flags; the process is single-threaded.
    unsafe {
        check(
            libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET),
            "joining the pod network namespace",
        )?;
        // The PID namespace comes later: after it no thread can be created (the log copiers).
        check(
            libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC),
            "creating the container namespaces",
        )?;
        check(
            libc::sethostname(args.hostname.as_ptr().cast(), args.hostname.len()),
            "setting the hostname",
        )?;
        check(
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "making mounts private",
        )?;
    }
    for m in args.mounts.iter().filter(|m| !under_tmp(&m.target)) {
        let source = cstring(&m.source)?;
        let target = cstring(&m.target)?;
        if !m.target.exists() {
            if m.source.is_dir() {
                fs::create_dir_all(&m.target)?;
            } else {
                return Err(io::Error::other(format!(
                    "mount target {} does not exist on the host file system",
                    m.target.display()
                )));
            }
        }
        // SAFETY: valid C strings; bind mounts in our private mount namespace.
        unsafe {
            check(
                libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ),
                &format!("mounting {} on {}", m.source.display(), m.target.display()),
            )?;
            if m.read_only {
                check(
                    libc::mount(
                        std::ptr::null(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ),
                    &format!("making {} read-only", m.target.display()),
                )?;
            }
        }
    }
    Ok(())
}

/// Whether a container path is the private `/tmp` or inside it.
fn under_tmp(target: &Path) -> bool {
    target.starts_with("/tmp")
}

/// The container's private `/tmp`: a fresh tmpfs in a mount namespace of the command's own (the
/// shim keeps the host's `/tmp`, where its state and logs may live), with the mounts whose
/// targets are inside it. Everything is prepared here so that [`PrivateTmp::mount`] runs
/// between fork and exec with syscalls only.
struct PrivateTmp {
    /// Per mount inside `/tmp`, shallowest first (so a volume at `/tmp/a` is in place before
    /// one at `/tmp/a/b`): the directories to create before attaching it (parents first), the
    /// empty file to create for a file bind, the detached copy of its source and its target.
    binds: Vec<TmpBind>,
    /// The working directory, entered after the mounts (it may be inside `/tmp`).
    workdir: Option<CString>,
}

struct TmpBind {
    dirs: Vec<CString>,
    file: Option<CString>,
    /// `open_tree(OPEN_TREE_CLONE)` of the source, made while the host's `/tmp` is still
    /// visible (a detached mount can be attached in any mount namespace), read-only already
    /// when the volume is.
    tree: OwnedFd,
    target: CString,
}

/// `MOUNT_ATTR_RDONLY` of `mount_setattr(2)` (not in the libc crate).
const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

impl PrivateTmp {
    fn prepare(mounts: &[Mount], workdir: Option<&Path>) -> io::Result<Self> {
        let mut inside: Vec<&Mount> = mounts.iter().filter(|m| under_tmp(&m.target)).collect();
        inside.sort_by_key(|m| m.target.components().count());
        let mut binds = Vec::new();
        for m in inside {
            let source = cstring(&m.source)?;
            let named =
                |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", m.source.display()));
            // SAFETY: a valid C string; the returned descriptor is owned below.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_open_tree,
                    libc::AT_FDCWD,
                    source.as_ptr(),
                    libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_RECURSIVE as u32,
                )
            };
            let fd = i32::try_from(fd)
                .ok()
                .filter(|fd| *fd >= 0)
                .ok_or_else(|| named(io::Error::last_os_error()))?;
            // SAFETY: open_tree returned a new descriptor that nothing else owns.
            let tree = unsafe { OwnedFd::from_raw_fd(fd) };
            if m.read_only {
                let attr = MountAttr {
                    attr_set: MOUNT_ATTR_RDONLY,
                    attr_clr: 0,
                    propagation: 0,
                    userns_fd: 0,
                };
                // SAFETY: a live descriptor, an empty path and a struct of the kernel's layout.
                let set = unsafe {
                    libc::syscall(
                        libc::SYS_mount_setattr,
                        tree.as_raw_fd(),
                        c"".as_ptr(),
                        libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
                        &attr as *const MountAttr,
                        std::mem::size_of::<MountAttr>(),
                    )
                };
                if set != 0 {
                    return Err(named(io::Error::last_os_error()));
                }
            }
            let mut dirs = Vec::new();
            for dir in m
                .target
                .ancestors()
                .skip(1)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                if dir.starts_with("/tmp") && dir != Path::new("/tmp") {
                    dirs.push(cstring(dir)?);
                }
            }
            let target = cstring(&m.target)?;
            let mut file = None;
            if m.target != Path::new("/tmp") {
                if m.source.is_dir() {
                    dirs.push(target.clone());
                } else {
                    file = Some(target.clone());
                }
            }
            binds.push(TmpBind {
                dirs,
                file,
                tree,
                target,
            });
        }
        Ok(PrivateTmp {
            binds,
            workdir: workdir.map(cstring).transpose()?,
        })
    }

    /// In the child, in its own mount namespace: the tmpfs, the mounts inside it, then the
    /// working directory. Syscalls only.
    ///
    /// # Safety
    /// Only between fork and exec.
    unsafe fn mount(&self) -> io::Result<()> {
        // SAFETY: the caller's contract; every pointer is a live C string of `self` and every
        // descriptor one it owns.
        unsafe {
            if libc::mount(
                c"tmpfs".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                c"mode=1777".as_ptr().cast(),
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            for bind in &self.binds {
                for dir in &bind.dirs {
                    if libc::mkdir(dir.as_ptr(), 0o755) != 0
                        && *libc::__errno_location() != libc::EEXIST
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                if let Some(file) = &bind.file {
                    let fd = libc::open(
                        file.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                        0o644,
                    );
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                let moved = libc::syscall(
                    libc::SYS_move_mount,
                    bind.tree.as_raw_fd(),
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    bind.target.as_ptr(),
                    libc::MOVE_MOUNT_F_EMPTY_PATH,
                );
                if moved != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(dir) = &self.workdir
                && libc::chdir(dir.as_ptr()) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Copies one stream into the CRI log, a line at a time.
fn copy_log(stream: impl Read, name: &'static str, log: Arc<Mutex<LogFile>>) {
    const MAX_LINE: usize = 16 * 1024;
    let mut reader = BufReader::with_capacity(MAX_LINE, stream);
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LINE as u64);
        match limited.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let full = line.last() == Some(&b'\n');
        if full {
            line.pop();
        }
        let mut record = format!(
            "{} {name} {} ",
            now_rfc3339_nanos(),
            if full { 'F' } else { 'P' }
        )
        .into_bytes();
        record.extend_from_slice(&line);
        record.push(b'\n');
        if let Ok(mut file) = log.lock() {
            file.write(&record);
        }
    }
}

/// Runs the shim; returns its own exit code (0 once the exit record is written).
pub fn main(raw: &[String]) -> i32 {
    let args = match ShimArgs::parse(raw) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rudder shim: {e}");
            return 2;
        }
    };
    let record = run(&args);
    let record = match record {
        Ok(r) => r,
        Err(e) => ExitRecord {
            exit_code: 128,
            signal: None,
            reason: "StartError".into(),
            message: e.to_string(),
            started_at: String::new(),
            finished_at: now_rfc3339(),
        },
    };
    match serde_json::to_vec(&record)
        .map_err(io::Error::other)
        .and_then(|json| write_atomic(&args.state, "exit", &json))
    {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rudder shim: writing the exit record: {e}");
            1
        }
    }
}

fn run(args: &ShimArgs) -> io::Result<ExitRecord> {
    fs::create_dir_all(&args.state)?;
    let log = LogFile::open(&args.log, args.rotation)?;
    enter(args)?;
    let private_tmp = PrivateTmp::prepare(&args.mounts, args.workdir.as_deref())?;
    let cgroups = args
        .cgroups
        .iter()
        .map(|c| cstring(c))
        .collect::<io::Result<Vec<_>>>()?;
    // Log copiers start before the PID namespace exists: a process whose children go to another
    // PID namespace cannot create threads.
    let log = Arc::new(Mutex::new(log));
    let (out_r, out_w) = io::pipe()?;
    let (err_r, err_w) = io::pipe()?;
    let copiers = [
        {
            let log = Arc::clone(&log);
            thread::spawn(move || copy_log(out_r, "stdout", log))
        },
        {
            let log = Arc::clone(&log);
            thread::spawn(move || copy_log(err_r, "stderr", log))
        },
    ];
    // SAFETY: a plain syscall with a constant flag.
    check(
        unsafe { libc::unshare(libc::CLONE_NEWPID) },
        "creating the PID namespace",
    )?;
    let mut command = Command::new(&args.argv[0]);
    command
        .args(&args.argv[1..])
        .stdin(Stdio::null())
        .stdout(out_w)
        .stderr(err_w);
    // The working directory is entered in the hook, after the private /tmp is mounted.
    // SAFETY: the closure only makes syscalls (prctl, mount, open/write/close) and builds
    // errors from errno without allocating, so the log threads' locks do not matter.
    unsafe {
        command.pre_exec(move || {
            // Only syscalls here: no allocation (the log threads exist, a lock may be held).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // A mount namespace of the command's own: its /proc and /tmp are not the shim's.
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            private_tmp.mount()?;
            for procs in &cgroups {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, c"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            Ok(())
        });
    }
    let started_at = now_rfc3339();
    // The cgroup outlives an attempt: an OOM kill counts if it happened during this one.
    let ooms_before = super::cgroups::oom_kills(&args.cgroups);
    let spawned = command.spawn();
    // The command holds the pipes' write ends: close ours so the copiers see the end.
    drop(command);
    let mut child = spawned.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "starting {:?}: {e}",
                args.argv.first().map(String::as_str).unwrap_or("")
            ),
        )
    })?;
    let pid = i32::try_from(child.id()).unwrap_or(0);
    CHILD.store(pid, Ordering::Relaxed);
    for signal in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        // SAFETY: installs an async-signal-safe handler.
        unsafe {
            libc::signal(signal, forward as *const () as libc::sighandler_t);
        }
    }
    write_atomic(&args.state, "pid", pid.to_string().as_bytes())?;
    let status = child.wait()?;
    for c in copiers {
        let _ = c.join();
    }
    use std::os::unix::process::ExitStatusExt;
    let (exit_code, signal) = match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(sig)) => (128 + sig, Some(sig)),
        (None, None) => (255, None),
    };
    // The kernel killed something in the container for its memory limit: the container (PID 1
    // or a process whose end made it fail) reports `OOMKilled`, as container runtimes do.
    let oom = exit_code != 0 && super::cgroups::oom_kills(&args.cgroups) > ooms_before;
    Ok(ExitRecord {
        exit_code,
        signal,
        reason: match (exit_code, oom) {
            (0, _) => "Completed",
            (_, true) => "OOMKilled",
            _ => "Error",
        }
        .into(),
        message: String::new(),
        started_at,
        finished_at: now_rfc3339(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_past_their_size_keeping_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let rotation = LogRotation {
            max_size: 100,
            max_files: 3,
        };
        let mut log = LogFile::open(&path, rotation).unwrap();
        let records: Vec<String> = (0..12)
            .map(|i| format!("record {i:02} {}\n", "x".repeat(30)))
            .collect();
        for r in &records {
            log.write(r.as_bytes());
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names.len(),
            3,
            "the live log and two rotated ones: {names:?}"
        );
        assert!(names.iter().all(|n| n.starts_with("0.log")));
        // Each file stays within the size, and together they end with the newest records in
        // order.
        let mut rotated: Vec<&String> = names.iter().filter(|n| *n != "0.log").collect();
        rotated.sort();
        let mut text = String::new();
        for n in rotated.into_iter().chain([&"0.log".to_owned()]) {
            let content = fs::read_to_string(dir.path().join(n)).unwrap();
            assert!(content.len() <= 100, "{n}: {}", content.len());
            text.push_str(&content);
        }
        assert!(records.concat().ends_with(&text), "{text}");
        assert!(text.ends_with(&records[11]));
        // A record bigger than the limit still gets written, alone.
        log.write("y".repeat(150).as_bytes());
        assert_eq!(fs::read_to_string(&path).unwrap().len(), 150);
        let args = ShimArgs {
            rotation,
            ..ShimArgs::default()
        };
        assert!(args.to_args().contains(&"--log-max-files".to_owned()));
    }

    #[test]
    fn flags_round_trip() {
        let args = ShimArgs {
            netns: "/run/netns/x".into(),
            hostname: "web-0".into(),
            log: "/tmp/l".into(),
            rotation: LogRotation {
                max_size: 1 << 20,
                max_files: 3,
            },
            state: "/tmp/s".into(),
            mounts: vec![Mount {
                source: "/a".into(),
                target: "/etc/hosts".into(),
                read_only: true,
            }],
            cgroups: vec!["/sys/fs/cgroup/x/cgroup.procs".into()],
            workdir: Some("/w".into()),
            argv: vec!["sh".into(), "-c".into(), "echo --netns".into()],
        };
        assert_eq!(ShimArgs::parse(&args.to_args()).unwrap(), args);
    }

    #[test]
    fn bad_flags_are_named() {
        let parse = |a: &[&str]| {
            ShimArgs::parse(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err()
        };
        assert!(parse(&["--bogus", "1", "--", "x"]).contains("--bogus"));
        assert!(parse(&["--log", "l", "--state", "s"]).contains("no command"));
        assert!(parse(&["--mount", "nocolon", "--", "x"]).contains("SOURCE:TARGET"));
        assert!(parse(&["--log"]).contains("needs a value"));
        assert!(parse(&["--log-max-size", "10Mi", "--", "x"]).contains("wants bytes"));
    }

    #[test]
    fn logs_are_cri_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let file = LogFile::open(&path, LogRotation::default()).unwrap();
        let long = "y".repeat(20 * 1024);
        let input = format!("hello\n{long}\nlast");
        copy_log(input.as_bytes(), "stdout", Arc::new(Mutex::new(file)));
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text:.200}");
        assert!(lines[0].ends_with(" stdout F hello"));
        assert!(lines[1].contains(" stdout P yyyy"));
        assert!(lines[2].contains(" stdout F yyyy"));
        assert!(lines[3].ends_with(" stdout P last"));
        assert!(lines[0].starts_with("20") && lines[0].contains('T'));
    }
}
