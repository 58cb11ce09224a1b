//! rudder's own `agnhost`: the subcommands of Kubernetes' e2e test image that pods actually use.
//!
//! Pods in rudder cannot pull images. A container whose image repository ends in `/agnhost`
//! (`registry.k8s.io/e2e-test-images/agnhost:2.47`) or `/pause` (`registry.k8s.io/pause:3.10`)
//! runs this code instead, inside the pod's network namespace and its own UTS namespace (whose
//! hostname is the pod name), so upstream e2e manifests work unmodified. [`is_agnhost_image`]
//! says which images are served, [`default_args`] what they run without `args`, and [`main`] runs
//! one command line. A leading `/agnhost` (the image's entrypoint, when a manifest names it in
//! `command`) is skipped.
//!
//! Flags are parsed like Go's: `--flag=value`, `--flag value`, `-flag=value`, and for booleans
//! `--flag` or `--flag=true|false`. An unknown flag or a stray argument exits with 2.
//!
//! - `netexec` (`--http-port` 8080, `--udp-port` 8081 with -1 disabling UDP,
//!   `--udp-listen-addresses`, `--http-override`, `--delay-shutdown`): the HTTP server answers
//!   `/` (`NOW: <RFC 3339 time>`, also for every unknown path, as Go's `ServeMux` does),
//!   `/clientip`, `/serverport`, `/header`, `/dial` (http and udp), `/echo`, `/exit` (with `code`,
//!   `wait` and `timeout`), `/healthz`, `/readyz` (503 once SIGTERM arrived),
//!   `/hostname`, `/hostName`, `/redirect`, `/shell` (or `cmd`), `/shutdown`. The UDP server
//!   answers `hostname`, `echo <msg>`, `clientip` and `serverport` (lowercased and trimmed, as
//!   upstream) and ignores anything else. On SIGTERM or SIGINT it keeps serving for
//!   `--delay-shutdown` seconds, then exits 0.
//! - `serve-hostname` (`--port` 9376, `--http` true, `--tcp`, `--udp`, `--close`): the hostname
//!   over HTTP, raw TCP or UDP. Exits 0 on SIGTERM or SIGINT (upstream lingers for 60 s instead).
//! - `pause` (`--delay-shutdown`): waits for SIGTERM or SIGINT and exits 0. The container shim is
//!   PID 1 already, so no zombie reaping is needed.
//!
//! Left out: SCTP (`--sctp-port`) and TLS (`--tls-cert-file`, `--tls-private-key-file`, also
//! spelt `--certFile`/`--privKeyFile`) exit 1 with a message, as we have no SCTP stack or TLS
//! crate here; `/upload` answers 501 because nothing in rudder mounts `/uploads`; `/dial` with
//! `protocol=http` does not follow redirects; form values come from the query only, never from a
//! POST body; `/header` without `key` lists lowercase header names; all other agnhost
//! subcommands exit 1.
//!
//! Deliberate differences: `/healthz` and `/readyz` also succeed when UDP is disabled (upstream
//! answers 412 forever then); `/exit` rejects a code outside 0..=255 with 400; `pause` exits 0
//! like the real pause image, where agnhost's exits 1 on SIGINT and 2 on SIGTERM.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

/// The shell `/shell` runs commands with, as upstream.
const SHELL: &str = "/bin/sh";
/// How long `/dial` waits for one HTTP or UDP answer, as upstream.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The top-level usage text.
const USAGE: &str = "Usage: agnhost <subcommand> [flags]\n\n\
rudder's agnhost implements these subcommands of the e2e agnhost image:\n  \
netexec         HTTP and UDP servers with test endpoints\n  \
serve-hostname  serves the hostname over HTTP, TCP or UDP\n  \
pause           waits for SIGTERM or SIGINT\n";

/// Prints `message` on stderr and returns exit code 1, like Go's `log.Fatal`.
fn fail(message: impl std::fmt::Display) -> i32 {
    eprintln!("{message}");
    1
}

/// An HTTP response with a fully buffered body.
type Resp = Response<Full<Bytes>>;

/// Whether `image` is served by this module: its repository (tag and digest stripped) is
/// `agnhost` or `pause`, or ends with `/agnhost` or `/pause`.
pub fn is_agnhost_image(image: &str) -> bool {
    let repo = image_repository(image);
    repo == "agnhost" || repo.ends_with("/agnhost") || is_pause_repository(repo)
}

/// The arguments `image` runs with when the pod gives none: `["pause"]` for pause images, none
/// for agnhost (whose entrypoint `/agnhost` alone prints the usage).
pub fn default_args(image: &str) -> Vec<String> {
    if is_pause_repository(image_repository(image)) {
        vec!["pause".to_owned()]
    } else {
        Vec::new()
    }
}

/// The repository part of an image reference: without `@digest` and without a `:tag` after the
/// last `/` (a `:` before it belongs to a registry port).
fn image_repository(image: &str) -> &str {
    let name = image.split_once('@').map_or(image, |(name, _)| name);
    let last = name.rfind('/').map_or(0, |slash| slash + 1);
    match name.get(last..).and_then(|tail| tail.find(':')) {
        Some(colon) => name.get(..last + colon).unwrap_or(name),
        None => name,
    }
}

/// Whether a repository is a pause image's.
fn is_pause_repository(repo: &str) -> bool {
    repo == "pause" || repo.ends_with("/pause")
}

/// Runs `agnhost ARGS...` (args exclude the program name, e.g. `["netexec", "--http-port=8080"]`).
/// Returns the process exit code. Builds its own tokio runtime.
pub fn main(args: &[String]) -> i32 {
    let args = match args.first().map(String::as_str) {
        Some("/agnhost" | "agnhost") => args.get(1..).unwrap_or_default(),
        _ => args,
    };
    let Some((sub, rest)) = args.split_first() else {
        // Cobra prints the help of a command without `Run` and exits 0.
        print!("{USAGE}");
        return 0;
    };
    let specs = match sub.as_str() {
        "netexec" => NETEXEC_FLAGS,
        "serve-hostname" => SERVE_HOSTNAME_FLAGS,
        "pause" | "/pause" => PAUSE_FLAGS,
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            return 0;
        }
        other => {
            return fail(format!(
                "Error: agnhost subcommand {other:?} is not implemented by rudder\n{USAGE}"
            ));
        }
    };
    let parsed = parse_flags(rest, specs).and_then(|flags| match sub.as_str() {
        "netexec" => NetexecOptions::from_flags(&flags).map(Subcommand::Netexec),
        "serve-hostname" => ServeHostnameOptions::from_flags(&flags).map(Subcommand::ServeHostname),
        _ => Ok(Subcommand::Pause {
            delay_shutdown: non_negative(flags.int("delay-shutdown", 0)),
        }),
    });
    let command = match parsed {
        Ok(command) => command,
        Err(FlagError::Help) => {
            print!(
                "Usage: agnhost {sub} [flags]\n\nFlags:\n{}",
                flag_help(specs)
            );
            return 0;
        }
        Err(FlagError::Invalid(message)) => {
            eprintln!(
                "Error: {message}\nUsage: agnhost {sub} [flags]\n\nFlags:\n{}",
                flag_help(specs)
            );
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(format!("agnhost: cannot start the tokio runtime: {error}")),
    };
    let code = runtime.block_on(async move {
        match command {
            Subcommand::Netexec(opts) => netexec(opts, termination_signal()).await,
            Subcommand::ServeHostname(opts) => serve_hostname(opts, termination_signal()).await,
            Subcommand::Pause { delay_shutdown } => {
                pause(delay_shutdown, termination_signal()).await
            }
        }
    });
    runtime.shutdown_background();
    code
}

/// A parsed subcommand with its options.
enum Subcommand {
    /// `agnhost netexec`.
    Netexec(NetexecOptions),
    /// `agnhost serve-hostname`.
    ServeHostname(ServeHostnameOptions),
    /// `agnhost pause`, waiting `delay_shutdown` seconds after the signal.
    Pause {
        /// Seconds to wait between the signal and the exit.
        delay_shutdown: u64,
    },
}

/// The type of a flag's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlagKind {
    /// A decimal integer.
    Int,
    /// Any string.
    Str,
    /// A Go boolean; the bare flag means `true`.
    Bool,
}

/// A flag's name (without dashes) and type.
type FlagSpec = (&'static str, FlagKind);

/// The flags of `netexec`; `certFile` and `privKeyFile` are aliases of the TLS flags.
const NETEXEC_FLAGS: &[FlagSpec] = &[
    ("http-port", FlagKind::Int),
    ("udp-port", FlagKind::Int),
    ("sctp-port", FlagKind::Int),
    ("http-override", FlagKind::Str),
    ("delay-shutdown", FlagKind::Int),
    ("udp-listen-addresses", FlagKind::Str),
    ("tls-cert-file", FlagKind::Str),
    ("tls-private-key-file", FlagKind::Str),
    ("certFile", FlagKind::Str),
    ("privKeyFile", FlagKind::Str),
];
/// The flags of `serve-hostname`.
const SERVE_HOSTNAME_FLAGS: &[FlagSpec] = &[
    ("port", FlagKind::Int),
    ("tcp", FlagKind::Bool),
    ("udp", FlagKind::Bool),
    ("http", FlagKind::Bool),
    ("close", FlagKind::Bool),
];
/// The flags of `pause`.
const PAUSE_FLAGS: &[FlagSpec] = &[("delay-shutdown", FlagKind::Int)];

/// Why a command line was not accepted.
#[derive(Debug, PartialEq, Eq)]
enum FlagError {
    /// `-h` or `--help` was given.
    Help,
    /// The command line is wrong; the message says how.
    Invalid(String),
}

/// Parsed flag values by name, normalised (integers in decimal, booleans `true`/`false`).
#[derive(Debug, Default)]
struct Flags(BTreeMap<String, String>);

impl Flags {
    /// The integer flag `name`, or `default` when not given.
    fn int(&self, name: &str, default: i64) -> i64 {
        self.0
            .get(name)
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    }

    /// The boolean flag `name`, or `default` when not given.
    fn bool(&self, name: &str, default: bool) -> bool {
        self.0.get(name).map_or(default, |value| value == "true")
    }

    /// The string flag `name`, if given.
    fn string(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// Parses `args` against `specs`; no positional arguments are accepted.
fn parse_flags(args: &[String], specs: &[FlagSpec]) -> Result<Flags, FlagError> {
    let mut flags = Flags::default();
    let mut iter = args.iter();
    let stray = |arg: &str| {
        FlagError::Invalid(format!(
            "unexpected argument {arg:?}: no arguments are accepted"
        ))
    };
    while let Some(arg) = iter.next() {
        if arg == "--" {
            return match iter.next() {
                Some(extra) => Err(stray(extra)),
                None => Ok(flags),
            };
        }
        let body = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            Some(body) if !body.is_empty() && !body.starts_with('-') => body,
            _ => return Err(stray(arg)),
        };
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        if name == "help" || name == "h" {
            return Err(FlagError::Help);
        }
        let Some(&(_, kind)) = specs.iter().find(|(spec, _)| *spec == name) else {
            return Err(FlagError::Invalid(format!("unknown flag: --{name}")));
        };
        let raw = match (inline, kind) {
            (Some(value), _) => value.to_owned(),
            (None, FlagKind::Bool) => "true".to_owned(),
            (None, _) => iter
                .next()
                .cloned()
                .ok_or_else(|| FlagError::Invalid(format!("flag needs an argument: --{name}")))?,
        };
        let invalid =
            || FlagError::Invalid(format!("invalid argument {raw:?} for \"--{name}\" flag"));
        let value = match kind {
            FlagKind::Str => raw.clone(),
            FlagKind::Int => raw.parse::<i64>().map_err(|_| invalid())?.to_string(),
            FlagKind::Bool => parse_go_bool(&raw).ok_or_else(invalid)?.to_string(),
        };
        flags.0.insert(name.to_owned(), value);
    }
    Ok(flags)
}

/// Parses a boolean as Go's `strconv.ParseBool` does.
fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// One line per flag, for usage messages.
fn flag_help(specs: &[FlagSpec]) -> String {
    specs
        .iter()
        .map(|(name, kind)| format!("  --{name} ({kind:?})\n"))
        .collect()
}

/// A non-negative integer, negatives becoming 0.
fn non_negative(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A port number from the integer flag `name`.
fn to_port(name: &str, value: i64) -> Result<u16, FlagError> {
    u16::try_from(value)
        .map_err(|_| FlagError::Invalid(format!("--{name}={value} is not a valid port")))
}

/// `None` for an empty string.
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|value| !value.is_empty())
}

/// The options of `netexec`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NetexecOptions {
    /// The HTTP port.
    http_port: u16,
    /// The UDP port, `None` when disabled (`--udp-port=-1`).
    udp_port: Option<u16>,
    /// The SCTP port; anything but -1 is refused.
    sctp_port: i64,
    /// Serve every request as a GET of this path and query.
    http_override: Option<String>,
    /// Seconds to keep serving after SIGTERM.
    delay_shutdown: u64,
    /// Addresses the UDP servers bind; empty means any.
    udp_listen_addresses: Vec<IpAddr>,
    /// A TLS certificate; refused.
    tls_cert_file: Option<String>,
    /// A TLS private key; refused.
    tls_private_key_file: Option<String>,
}

impl NetexecOptions {
    /// Reads the options from parsed flags.
    fn from_flags(flags: &Flags) -> Result<Self, FlagError> {
        let udp_port = match flags.int("udp-port", 8081) {
            -1 => None,
            port => Some(to_port("udp-port", port)?),
        };
        let mut addresses = BTreeSet::new();
        let listen = flags.string("udp-listen-addresses").unwrap_or_default();
        for address in listen.split(',').filter(|address| !address.is_empty()) {
            let ip = address.parse::<IpAddr>().map_err(|_| {
                FlagError::Invalid(format!("parseAddress: invalid address {address}"))
            })?;
            addresses.insert(ip);
        }
        Ok(Self {
            http_port: to_port("http-port", flags.int("http-port", 8080))?,
            udp_port,
            sctp_port: flags.int("sctp-port", -1),
            http_override: non_empty(flags.string("http-override")),
            delay_shutdown: non_negative(flags.int("delay-shutdown", 0)),
            udp_listen_addresses: addresses.into_iter().collect(),
            tls_cert_file: non_empty(
                flags
                    .string("tls-cert-file")
                    .or_else(|| flags.string("certFile")),
            ),
            tls_private_key_file: non_empty(
                flags
                    .string("tls-private-key-file")
                    .or_else(|| flags.string("privKeyFile")),
            ),
        })
    }
}

/// The options of `serve-hostname`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ServeHostnameOptions {
    /// The port of every protocol served.
    port: u16,
    /// Serve raw TCP: write the hostname and close.
    tcp: bool,
    /// Serve UDP: answer every datagram with the hostname.
    udp: bool,
    /// Serve HTTP.
    http: bool,
    /// Close HTTP connections after each response.
    close: bool,
}

impl ServeHostnameOptions {
    /// Reads the options from parsed flags.
    fn from_flags(flags: &Flags) -> Result<Self, FlagError> {
        Ok(Self {
            port: to_port("port", flags.int("port", 9376))?,
            tcp: flags.bool("tcp", false),
            udp: flags.bool("udp", false),
            http: flags.bool("http", true),
            close: flags.bool("close", false),
        })
    }
}

/// Resolves on SIGTERM or SIGINT (never, if they cannot be watched).
async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => eprintln!("Received SIGTERM"),
            _ = int.recv() => eprintln!("Received SIGINT"),
        },
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("agnhost: cannot watch termination signals: {error}");
            std::future::pending::<()>().await;
        }
    }
}

/// `agnhost pause`: waits for `shutdown`, then `delay_shutdown` seconds, and returns 0.
async fn pause(delay_shutdown: u64, shutdown: impl Future<Output = ()>) -> i32 {
    println!("Paused");
    shutdown.await;
    if delay_shutdown > 0 {
        println!("Sleeping {delay_shutdown} seconds before exit ...");
        tokio::time::sleep(Duration::from_secs(delay_shutdown)).await;
    }
    println!("exiting 0");
    0
}

/// Binds TCP `port` on `[::]` (dual stack), or on `0.0.0.0` where IPv6 is unavailable.
async fn bind_tcp_any(port: u16) -> std::io::Result<TcpListener> {
    match TcpListener::bind((Ipv6Addr::UNSPECIFIED, port)).await {
        Ok(listener) => Ok(listener),
        Err(_) => TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await,
    }
}

/// Binds UDP `port` on `[::]` (dual stack), or on `0.0.0.0` where IPv6 is unavailable.
async fn bind_udp_any(port: u16) -> std::io::Result<UdpSocket> {
    match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).await {
        Ok(socket) => Ok(socket),
        Err(_) => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).await,
    }
}

/// Serves HTTP/1.1 on `listener` with `handler` until `stop` changes, then lets every connection
/// finish its current request and returns once all are closed.
async fn accept_loop<H, Fut>(
    listener: TcpListener,
    keep_alive: bool,
    handler: H,
    mut stop: watch::Receiver<bool>,
) where
    H: Fn(Parts, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        eprintln!("accept failed: {error}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                let mut conn_stop = stop.clone();
                conns.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (parts, _body) = req.into_parts();
                        let response = handler(parts, peer);
                        async move { Ok::<Resp, Infallible>(response.await) }
                    });
                    let conn = http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service);
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = conn_stop.changed() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.as_mut().await;
                        }
                    }
                });
            }
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// A plain-text response.
fn text(status: StatusCode, body: impl Into<String>) -> Resp {
    let mut response = Response::new(Full::new(Bytes::from(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// An error response as Go's `http.Error` writes it.
fn go_error(status: StatusCode, message: impl std::fmt::Display) -> Resp {
    let mut response = text(status, format!("{message}\n"));
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A JSON body with status 200, or 417 if it cannot be serialised (as upstream).
fn json_response(value: &Value) -> Resp {
    match serde_json::to_string(value) {
        Ok(body) => text(StatusCode::OK, body),
        Err(error) => go_error(
            StatusCode::EXPECTATION_FAILED,
            format!("response could not be serialized. {error}"),
        ),
    }
}

/// This UTS namespace's hostname.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for `buf.len()` bytes and outlives the call.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast::<libc::c_char>(), buf.len()) };
    if rc == 0 {
        let len = buf.iter().position(|&byte| byte == 0).unwrap_or(buf.len());
        return String::from_utf8_lossy(buf.get(..len).unwrap_or_default()).into_owned();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// `addr` with an IPv4-mapped IPv6 address turned back into IPv4, as Go reports peers.
fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Parses a Go duration (`300ms`, `1m30s`, `1.5h`); negative durations count as zero.
fn parse_go_duration(text: &str) -> Option<Duration> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    if rest.is_empty() {
        return None;
    }
    let mut seconds = 0f64;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(split);
        if number.is_empty() || number == "." {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let split = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(split);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        seconds += value * scale;
        rest = tail;
    }
    if negative {
        Some(Duration::ZERO)
    } else {
        Duration::try_from_secs_f64(seconds).ok()
    }
}

/// Splits `--http-override` (`/echo?msg=x`) into path and query.
fn split_target(target: &str) -> (String, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    (
        if path.is_empty() { "/" } else { path }.to_owned(),
        query.to_owned(),
    )
}

/// The decoded query parameters of a request, in order.
struct Query(Vec<(String, String)>);

impl Query {
    /// Decodes a query string (`+` is a space, as in forms).
    fn parse(query: &str) -> Self {
        Self(
            form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The first value of `name`, or `""`.
    fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map_or("", |(_, value)| value.as_str())
    }
}

/// What ends `netexec` besides a signal.
enum ExitRequest {
    /// Exit at once with this code.
    Now(i32),
    /// Stop accepting, give connections `timeout` to finish, then exit with `code`.
    Graceful {
        /// The exit code.
        code: i32,
        /// How long open connections may take to finish.
        timeout: Duration,
    },
}

/// State shared by `netexec`'s request handlers.
struct NetState {
    /// The HTTP port, for `/serverport`.
    http_port: u16,
    /// `--http-override`.
    http_override: Option<String>,
    /// Whether the UDP servers are up (or disabled).
    ready: AtomicBool,
    /// Whether SIGTERM arrived.
    terminating: AtomicBool,
    /// Asks the main loop to exit.
    exit_tx: mpsc::UnboundedSender<ExitRequest>,
}

/// `agnhost netexec`: serves until `shutdown` resolves (plus `--delay-shutdown`) or an `/exit`,
/// and returns the exit code.
async fn netexec(opts: NetexecOptions, shutdown: impl Future<Output = ()>) -> i32 {
    if opts.sctp_port != -1 {
        return fail(format!(
            "netexec: --sctp-port={}: SCTP is not supported by rudder's agnhost",
            opts.sctp_port
        ));
    }
    if opts.tls_cert_file.is_some() || opts.tls_private_key_file.is_some() {
        return fail(
            "netexec: TLS (--tls-cert-file, --tls-private-key-file) is not supported by rudder's agnhost",
        );
    }
    let (exit_tx, mut exit_rx) = mpsc::unbounded_channel();
    let state = Arc::new(NetState {
        http_port: opts.http_port,
        http_override: opts.http_override.clone(),
        ready: AtomicBool::new(false),
        terminating: AtomicBool::new(false),
        exit_tx,
    });
    let mut udp_servers = JoinSet::new();
    if let Some(port) = opts.udp_port {
        let addresses: Vec<Option<IpAddr>> = if opts.udp_listen_addresses.is_empty() {
            vec![None]
        } else {
            opts.udp_listen_addresses
                .iter()
                .copied()
                .map(Some)
                .collect()
        };
        for address in addresses {
            let bound = match address {
                Some(ip) => UdpSocket::bind((ip, port)).await,
                None => bind_udp_any(port).await,
            };
            let shown = address.map(|ip| ip.to_string()).unwrap_or_default();
            match bound {
                Ok(socket) => {
                    eprintln!("Started UDP server on port {shown} {port}");
                    udp_servers.spawn(udp_server(socket, port));
                }
                Err(error) => {
                    return fail(format!(
                        "failed to create listener for UDP address {shown}:{port}: {error}"
                    ));
                }
            }
        }
    }
    state.ready.store(true, Ordering::SeqCst);
    let listener = match bind_tcp_any(opts.http_port).await {
        Ok(listener) => listener,
        Err(error) => return fail(format!("listen tcp :{}: {error}", opts.http_port)),
    };
    eprintln!("Started HTTP server on port {}", opts.http_port);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut http = JoinSet::new();
    let handler_state = Arc::clone(&state);
    let handler =
        move |parts: Parts, peer: SocketAddr| route(Arc::clone(&handler_state), parts, peer);
    http.spawn(accept_loop(listener, true, handler, stop_rx));

    let term_state = Arc::clone(&state);
    let delay = opts.delay_shutdown;
    let term = std::pin::pin!(async move {
        shutdown.await;
        term_state.terminating.store(true, Ordering::SeqCst);
        if delay > 0 {
            eprintln!("Sleeping {delay} seconds before terminating...");
            tokio::time::sleep(Duration::from_secs(delay)).await;
        }
    });
    tokio::select! {
        () = term => 0,
        Some(request) = exit_rx.recv() => match request {
            ExitRequest::Now(code) => code,
            ExitRequest::Graceful { code, timeout } => {
                let _ = stop_tx.send(true);
                let closed = tokio::time::timeout(timeout, http.join_next()).await.is_ok();
                eprintln!("Graceful shutdown completed (connections closed in time: {closed})");
                code
            }
        },
    }
}

/// Serves `netexec`'s UDP commands on `socket` forever.
async fn udp_server(socket: UdpSocket, port: u16) {
    let mut buf = vec![0u8; 2048];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                eprintln!("failed accepting UDP connections: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let text = String::from_utf8_lossy(buf.get(..len).unwrap_or_default())
            .trim()
            .to_lowercase();
        if let Some(reply) = udp_reply(&text, peer, port)
            && let Err(error) = socket.send_to(reply.as_bytes(), peer).await
        {
            eprintln!("failed to write to UDP client {peer}: {error}");
        }
    }
}

/// The answer to one UDP command (already trimmed and lowercased); `None` for unknown commands.
fn udp_reply(command: &str, peer: SocketAddr, port: u16) -> Option<String> {
    match command {
        "hostname" => Some(hostname()),
        "clientip" => Some(unmap(peer).to_string()),
        "serverport" => Some(port.to_string()),
        _ => {
            let echoed = command.strip_prefix("echo ").map(str::to_owned);
            if echoed.is_none() && !command.is_empty() {
                eprintln!("Unknown UDP command received from {peer}: {command}");
            }
            echoed
        }
    }
}

/// Answers one `netexec` HTTP request.
async fn route(state: Arc<NetState>, parts: Parts, peer: SocketAddr) -> Resp {
    let (path, query) = match state.http_override.as_deref() {
        Some(target) => split_target(target),
        None => (
            parts.uri.path().to_owned(),
            parts.uri.query().unwrap_or_default().to_owned(),
        ),
    };
    eprintln!(
        "{} {path}{}{query}",
        parts.method,
        if query.is_empty() { "" } else { "?" }
    );
    let q = Query::parse(&query);
    let ready = state.ready.load(Ordering::SeqCst);
    match path.as_str() {
        "/clientip" => text(StatusCode::OK, unmap(peer).to_string()),
        "/serverport" => text(StatusCode::OK, state.http_port.to_string()),
        "/header" => header_response(&parts.headers, q.get("key")),
        "/dial" => dial(&q).await,
        "/echo" => echo(&q),
        "/exit" => exit(&state, &q).await,
        "/healthz" if ready => text(StatusCode::OK, ""),
        "/healthz" => text(StatusCode::PRECONDITION_FAILED, ""),
        "/readyz" if state.terminating.load(Ordering::SeqCst) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
        }
        "/readyz" if ready => text(StatusCode::OK, "ok"),
        "/readyz" => text(StatusCode::PRECONDITION_FAILED, ""),
        "/hostname" | "/hostName" => text(StatusCode::OK, hostname()),
        "/redirect" => redirect(&q),
        "/shell" => shell(&q).await,
        "/shutdown" => {
            let _ = state.exit_tx.send(ExitRequest::Now(0));
            std::future::pending::<Resp>().await
        }
        "/upload" => go_error(
            StatusCode::NOT_IMPLEMENTED,
            "/upload is not supported by rudder's agnhost",
        ),
        _ => text(
            StatusCode::OK,
            format!("NOW: {}", crate::runtime::shim::now_rfc3339()),
        ),
    }
}

/// `/header`: the first value of header `key`, or all headers as JSON (lowercase names).
fn header_response(headers: &HeaderMap, key: &str) -> Resp {
    if !key.is_empty() {
        let value = headers
            .get(key)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
        return text(StatusCode::OK, value.unwrap_or_default());
    }
    let mut all = Map::new();
    for (name, value) in headers.iter().filter(|(name, _)| name.as_str() != "host") {
        let value = Value::from(String::from_utf8_lossy(value.as_bytes()).into_owned());
        if let Value::Array(values) = all
            .entry(name.as_str())
            .or_insert_with(|| Value::from(Vec::<Value>::new()))
        {
            values.push(value);
        }
    }
    json_response(&Value::Object(all))
}

/// `/echo`: `msg`, with status `code` if given.
fn echo(q: &Query) -> Resp {
    let (msg, code) = (q.get("msg"), q.get("code"));
    if code.is_empty() {
        return text(StatusCode::OK, msg);
    }
    let Ok(number) = code.parse::<i64>() else {
        return text(
            StatusCode::OK,
            format!("argument 'code' must be an integer or empty, got {code:?}\n"),
        );
    };
    match u16::try_from(number)
        .ok()
        .and_then(|n| StatusCode::from_u16(n).ok())
        .filter(|s| s.as_u16() >= 200)
    {
        Some(status) => text(status, msg),
        None => go_error(
            StatusCode::BAD_REQUEST,
            format!("invalid status code {number}"),
        ),
    }
}

/// `/exit`: waits `wait`, then exits with `code` at once, or after `timeout` for connections.
#[allow(
    clippy::result_large_err,
    reason = "the error is the response itself, built once"
)]
async fn exit(state: &NetState, q: &Query) -> Resp {
    let duration = |name: &str| -> Result<Duration, Resp> {
        let value = q.get(name);
        if value.is_empty() {
            return Ok(Duration::ZERO);
        }
        parse_go_duration(value).ok_or_else(|| {
            go_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "argument '{name}' must be a valid golang duration or empty, got {value:?}"
                ),
            )
        })
    };
    let timeout = match duration("timeout") {
        Ok(timeout) => timeout,
        Err(response) => return response,
    };
    let wait = match duration("wait") {
        Ok(wait) => wait,
        Err(response) => return response,
    };
    let code = match q.get("code") {
        "" => 0,
        code => match code.parse::<i32>() {
            Ok(code) if (0..=255).contains(&code) => code,
            _ => {
                return go_error(
                    StatusCode::BAD_REQUEST,
                    format!("argument 'code' must be an integer [0-255] or empty, got {code:?}"),
                );
            }
        },
    };
    eprintln!(
        "Will begin shutdown in {wait:?}, allowing {timeout:?} for connections to close, then will exit with {code}"
    );
    tokio::time::sleep(wait).await;
    if timeout.is_zero() {
        let _ = state.exit_tx.send(ExitRequest::Now(code));
        return std::future::pending::<Resp>().await;
    }
    let _ = state.exit_tx.send(ExitRequest::Graceful { code, timeout });
    text(StatusCode::OK, "")
}

/// `/redirect`: redirects to `location` with `code` (default 302), as Go's `http.Redirect`.
fn redirect(q: &Query) -> Resp {
    let (location, code) = (q.get("location"), q.get("code"));
    let status = if code.is_empty() {
        StatusCode::FOUND
    } else {
        match code
            .parse::<u16>()
            .ok()
            .and_then(|n| StatusCode::from_u16(n).ok())
            .filter(|s| s.as_u16() >= 200)
        {
            Some(status) => status,
            None => {
                return text(
                    StatusCode::OK,
                    format!("argument 'code' must be an integer or empty, got {code:?}\n"),
                );
            }
        }
    };
    // A relative location is relative to the directory of `/redirect`, which is `/`.
    let target = if location.starts_with('/') || location.contains("://") {
        location.to_owned()
    } else {
        format!("/{location}")
    };
    let Ok(value) = HeaderValue::from_str(&target) else {
        return go_error(
            StatusCode::BAD_REQUEST,
            format!("invalid location {location:?}"),
        );
    };
    let mut response = text(status, "");
    response.headers_mut().insert(header::LOCATION, value);
    response
}

/// `/shell`: runs `shellCommand` (or `cmd`); `output` is stdout and stderr combined, `error` the
/// failure, and the status 200 either way, as upstream's code (not its docs) does.
async fn shell(q: &Query) -> Resp {
    let command = match q.get("shellCommand") {
        "" => q.get("cmd"),
        command => command,
    };
    let (output, error) = run_shell(command).await;
    let mut out = Map::new();
    if let Some(error) = error {
        out.insert("error".to_owned(), Value::from(error));
    }
    if !output.is_empty() {
        out.insert(
            "output".to_owned(),
            Value::from(String::from_utf8_lossy(&output).into_owned()),
        );
    }
    json_response(&Value::Object(out))
}

/// Runs `/bin/sh -c command`; returns its combined output and, if it failed, Go's error text.
async fn run_shell(command: &str) -> (Vec<u8>, Option<String>) {
    let pipe =
        std::io::pipe().and_then(|(reader, writer)| Ok((reader, writer.try_clone()?, writer)));
    let (reader, stdout, stderr) = match pipe {
        Ok(pipe) => pipe,
        Err(error) => return (Vec::new(), Some(format!("pipe: {error}"))),
    };
    let spawned = {
        let mut cmd = tokio::process::Command::new(SHELL);
        cmd.arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        cmd.spawn()
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => return (Vec::new(), Some(format!("fork/exec {SHELL}: {error}"))),
    };
    let reading = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        let mut output = Vec::new();
        let _ = reader.read_to_end(&mut output);
        output
    });
    let status = child.wait().await;
    let output = reading.await.unwrap_or_default();
    let error = match status {
        Ok(status) if status.success() => None,
        Ok(status) => Some(match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, signal) => format!("signal: {}", signal.unwrap_or_default()),
        }),
        Err(error) => Some(error.to_string()),
    };
    (output, error)
}

/// `/dial`: sends `request` `tries` times to `host:port` over `protocol` and reports the answers.
async fn dial(q: &Query) -> Resp {
    let (host, port, request, tries) = (
        q.get("host"),
        q.get("port"),
        q.get("request"),
        q.get("tries"),
    );
    let tries = match tries {
        "" => 1,
        tries => match tries.parse::<i64>() {
            Ok(tries) => tries,
            Err(error) => {
                return go_error(
                    StatusCode::BAD_REQUEST,
                    format!("tries parameter is invalid. {error}"),
                );
            }
        },
    };
    if request.is_empty() {
        return go_error(
            StatusCode::BAD_REQUEST,
            "request parameter not specified. <nil>",
        );
    }
    let udp = match q.get("protocol").to_ascii_lowercase().as_str() {
        "" | "http" => false,
        "udp" => true,
        "sctp" => {
            return go_error(
                StatusCode::BAD_REQUEST,
                "protocol sctp is not supported by rudder's agnhost",
            );
        }
        other => {
            return go_error(
                StatusCode::BAD_REQUEST,
                format!("unsupported protocol. {other}"),
            );
        }
    };
    let addr = match resolve(host, port).await {
        Ok(addr) => addr,
        Err(error) => {
            return go_error(
                StatusCode::BAD_REQUEST,
                format!("host and/or port param are invalid. {error}"),
            );
        }
    };
    let (mut responses, mut errors, mut last) = (Vec::new(), Vec::new(), String::new());
    for _ in 0..tries {
        let result = if udp {
            dial_udp(addr, request).await
        } else {
            dial_http(addr, request).await
        };
        match result {
            Ok(response) => {
                last.clone_from(&response);
                responses.push(response);
            }
            Err(error) => {
                last.clear();
                errors.push(error);
            }
        }
    }
    // As upstream, `responses` is only reported when the last try answered something.
    let mut output = Map::new();
    if !errors.is_empty() {
        output.insert("errors".to_owned(), Value::from(errors));
    }
    if !last.is_empty() {
        output.insert("responses".to_owned(), Value::from(responses));
    }
    json_response(&Value::Object(output))
}

/// Resolves `host` (a name or an address) and a numeric `port`, preferring IPv4 as Go does.
async fn resolve(host: &str, port: &str) -> Result<SocketAddr, String> {
    let port: u16 = port.parse().map_err(|_| format!("invalid port {port:?}"))?;
    let host = if host.is_empty() {
        "localhost"
    } else {
        host.trim_start_matches('[').trim_end_matches(']')
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| error.to_string())?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("no addresses for {host}"))
}

/// GETs `http://addr/request` and returns the body whatever the status, or Go-like error text.
async fn dial_http(addr: SocketAddr, request: &str) -> Result<String, String> {
    let url = format!("http://{addr}/{request}");
    match tokio::time::timeout(DIAL_TIMEOUT, http_get(addr, &format!("/{request}"))).await {
        Ok(Ok((_, body))) => Ok(body),
        Ok(Err(error)) => Err(format!("Get \"{url}\": {error}")),
        Err(_) => Err(format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        )),
    }
}

/// One HTTP/1.1 GET of `target` (path and query) from `addr`: the status and body.
async fn http_get(addr: SocketAddr, target: &str) -> Result<(StatusCode, String), String> {
    let target = target.split('#').next().unwrap_or_default();
    let mut escaped = String::with_capacity(target.len());
    for byte in target.bytes() {
        if byte.is_ascii_graphic()
            && !matches!(
                byte,
                b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
            )
        {
            escaped.push(char::from(byte));
        } else {
            escaped.push_str(&format!("%{byte:02X}"));
        }
    }
    let uri = escaped
        .parse::<Uri>()
        .map_err(|error| format!("parse {target:?}: {error}"))?;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|error| format!("dial tcp {addr}: connect: {error}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|error| error.to_string())?;
    let driver = tokio::spawn(conn);
    let result = async {
        let req = Request::get(uri)
            .header(header::HOST, addr.to_string())
            .header(header::USER_AGENT, "Go-http-client/1.1")
            .body(Empty::<Bytes>::new())
            .map_err(|error| error.to_string())?;
        sender.ready().await.map_err(|error| error.to_string())?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|error| error.to_string())?
            .to_bytes();
        Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
    }
    .await;
    driver.abort();
    result
}

/// Sends `request` as one datagram to `addr` and waits for one answer.
async fn dial_udp(addr: SocketAddr, request: &str) -> Result<String, String> {
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|error| format!("udp dial failed. err:{error}"))?;
    socket
        .connect(addr)
        .await
        .map_err(|error| format!("udp dial failed. err:{error}"))?;
    socket
        .send(request.as_bytes())
        .await
        .map_err(|error| format!("udp connection write failed. err:{error}"))?;
    let mut buf = vec![0u8; 2048];
    let local = socket
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |local| local.to_string());
    match tokio::time::timeout(DIAL_TIMEOUT, socket.recv(&mut buf)).await {
        Ok(Ok(len)) if len > 0 => {
            Ok(String::from_utf8_lossy(buf.get(..len).unwrap_or_default()).into_owned())
        }
        Ok(Ok(_)) => Err("reading from udp connection failed. err:'<nil>'".to_owned()),
        Ok(Err(error)) => Err(format!(
            "reading from udp connection failed. err:'read udp {local}->{addr}: {error}'"
        )),
        Err(_) => Err(format!(
            "reading from udp connection failed. err:'read udp {local}->{addr}: i/o timeout'"
        )),
    }
}

/// `agnhost serve-hostname`: serves the hostname until `shutdown` resolves, then returns 0.
async fn serve_hostname(opts: ServeHostnameOptions, shutdown: impl Future<Output = ()>) -> i32 {
    if opts.http && (opts.tcp || opts.udp) {
        return fail("Can't serve TCP/UDP mode and HTTP mode at the same time (pass --http=false)");
    }
    let host: Arc<str> = Arc::from(hostname());
    let mut tasks = JoinSet::new();
    let (_stop_tx, stop_rx) = watch::channel(false);
    if opts.tcp || opts.http {
        let listener = match bind_tcp_any(opts.port).await {
            Ok(listener) => listener,
            Err(error) => return fail(format!("Error from net.Listen(): {error}")),
        };
        if opts.tcp {
            tasks.spawn(serve_tcp_hostname(listener, Arc::clone(&host)));
        } else {
            let (host, close) = (Arc::clone(&host), opts.close);
            let handler = move |_parts: Parts, peer: SocketAddr| {
                eprintln!("HTTP request from {}", unmap(peer));
                let mut response = text(StatusCode::OK, host.to_string());
                if close {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                std::future::ready(response)
            };
            tasks.spawn(accept_loop(listener, !close, handler, stop_rx));
        }
    }
    if opts.udp {
        match bind_udp_any(opts.port).await {
            Ok(socket) => {
                tasks.spawn(serve_udp_hostname(socket, Arc::clone(&host)));
            }
            Err(error) => return fail(format!("Error from ListenUDP(): {error}")),
        }
    }
    eprintln!("Serving on port {}.", opts.port);
    shutdown.await;
    eprintln!("Shutting down after receiving a termination signal.");
    0
}

/// Writes `host` to every TCP connection on `listener` and closes it.
async fn serve_tcp_hostname(listener: TcpListener, host: Arc<str>) {
    loop {
        match listener.accept().await {
            Ok((mut stream, peer)) => {
                eprintln!("TCP request from {}", unmap(peer));
                let _ = stream.write_all(host.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
            Err(error) => {
                eprintln!("Error from Accept(): {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Answers every datagram on `socket` with `host`.
async fn serve_udp_hostname(socket: UdpSocket, host: Arc<str>) {
    let mut buf = [0u8; 16];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((_, peer)) => {
                eprintln!("UDP request from {}", unmap(peer));
                let _ = socket.send_to(host.as_bytes(), peer).await;
            }
            Err(error) => {
                eprintln!("Error from ReadFrom(): {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;

    /// Owned arguments from string literals.
    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| (*arg).to_owned()).collect()
    }

    /// A port that was free a moment ago.
    fn free_port() -> u16 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        drop(std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap());
        port
    }

    /// Waits until `addr` accepts TCP connections.
    async fn wait_for(addr: SocketAddr) {
        for _ in 0..200 {
            if TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nothing listens on {addr}");
    }

    #[test]
    fn flags_in_both_forms() {
        let flags = parse_flags(
            &args(&[
                "--http-port=9000",
                "--udp-port",
                "-1",
                "-http-override=/hostname",
            ]),
            NETEXEC_FLAGS,
        )
        .unwrap();
        let opts = NetexecOptions::from_flags(&flags).unwrap();
        assert_eq!(opts.http_port, 9000);
        assert_eq!(opts.udp_port, None);
        assert_eq!(opts.http_override.as_deref(), Some("/hostname"));
        let flags = parse_flags(
            &args(&[
                "--udp-listen-addresses",
                "127.0.0.1,::1,127.0.0.1",
                "--delay-shutdown=5",
            ]),
            NETEXEC_FLAGS,
        )
        .unwrap();
        let opts = NetexecOptions::from_flags(&flags).unwrap();
        assert_eq!(opts.udp_listen_addresses.len(), 2);
        assert_eq!(
            (opts.delay_shutdown, opts.http_port, opts.udp_port),
            (5, 8080, Some(8081))
        );
        assert_eq!(
            parse_flags(&args(&["--bogus=1"]), NETEXEC_FLAGS).unwrap_err(),
            FlagError::Invalid("unknown flag: --bogus".to_owned())
        );
        assert!(parse_flags(&args(&["--http-port"]), NETEXEC_FLAGS).is_err());
        assert!(parse_flags(&args(&["--http-port=x"]), NETEXEC_FLAGS).is_err());
        assert!(parse_flags(&args(&["stray"]), NETEXEC_FLAGS).is_err());
        assert_eq!(
            parse_flags(&args(&["-h"]), NETEXEC_FLAGS).unwrap_err(),
            FlagError::Help
        );
        assert!(
            NetexecOptions::from_flags(
                &parse_flags(&args(&["--http-port=70000"]), NETEXEC_FLAGS).unwrap()
            )
            .is_err()
        );
    }

    #[test]
    fn boolean_flags() {
        let parse = |list: &[&str]| {
            ServeHostnameOptions::from_flags(&parse_flags(&args(list), SERVE_HOSTNAME_FLAGS)?)
        };
        let opts = parse(&["--tcp", "--http=false", "-port", "80"]).unwrap();
        assert_eq!(
            opts,
            ServeHostnameOptions {
                port: 80,
                tcp: true,
                udp: false,
                http: false,
                close: false
            }
        );
        assert!(!parse(&["--tcp=false"]).unwrap().tcp);
        assert!(parse(&["--close=T"]).unwrap().close);
        assert!(parse(&["--tcp", "false"]).is_err());
        assert!(parse(&["--close=maybe"]).is_err());
    }

    #[test]
    fn main_rejects_bad_command_lines() {
        assert_eq!(main(&args(&["netexec", "--nope"])), 2);
        assert_eq!(main(&args(&["/agnhost", "pause", "extra"])), 2);
        assert_eq!(main(&args(&["liveness"])), 1);
        assert_eq!(main(&args(&["netexec", "--sctp-port=5"])), 1);
        assert_eq!(
            main(&args(&["netexec", "--tls-cert-file=/localhost.crt"])),
            1
        );
        assert_eq!(main(&args(&["serve-hostname", "--tcp"])), 1);
    }

    #[test]
    fn images() {
        assert!(is_agnhost_image(
            "registry.k8s.io/e2e-test-images/agnhost:2.47"
        ));
        assert!(is_agnhost_image("agnhost"));
        assert!(is_agnhost_image("localhost:5000/agnhost@sha256:abcd"));
        assert!(is_agnhost_image("registry.k8s.io/pause:3.10"));
        assert!(!is_agnhost_image(
            "registry.k8s.io/e2e-test-images/agnhost-other:1"
        ));
        assert!(!is_agnhost_image("agnhost:5000/nginx:1.25"));
        assert!(!is_agnhost_image("docker.io/library/nginx"));
        assert_eq!(
            default_args("registry.k8s.io/pause:3.10"),
            vec!["pause".to_owned()]
        );
        assert!(default_args("registry.k8s.io/e2e-test-images/agnhost:2.47").is_empty());
    }

    #[test]
    fn helpers() {
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("-5s"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration("abc"), None);
        let peer: SocketAddr = "[::ffff:10.0.0.1]:5000".parse().unwrap();
        assert_eq!(
            udp_reply("echo hi there", peer, 1).as_deref(),
            Some("hi there")
        );
        assert_eq!(
            udp_reply("clientip", peer, 1).as_deref(),
            Some("10.0.0.1:5000")
        );
        assert_eq!(udp_reply("serverport", peer, 8081).as_deref(), Some("8081"));
        assert_eq!(udp_reply("nonsense", peer, 1), None);
        assert_eq!(
            split_target("/echo?msg=a:b"),
            ("/echo".to_owned(), "msg=a:b".to_owned())
        );
        assert_eq!(
            split_target("/hostname"),
            ("/hostname".to_owned(), String::new())
        );
    }

    #[tokio::test]
    async fn netexec_serves_http_and_udp() {
        let (http_port, udp_port) = (free_port(), free_port());
        let flags = [
            format!("--http-port={http_port}"),
            format!("--udp-port={udp_port}"),
        ];
        let opts =
            NetexecOptions::from_flags(&parse_flags(&flags, NETEXEC_FLAGS).unwrap()).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = netexec(opts, async move {
            let _ = stop_rx.await;
        });
        let http: SocketAddr = (Ipv4Addr::LOCALHOST, http_port).into();
        let udp: SocketAddr = (Ipv4Addr::LOCALHOST, udp_port).into();
        let client = async move {
            wait_for(http).await;
            assert_eq!(
                http_get(http, "/hostname").await.unwrap(),
                (StatusCode::OK, hostname())
            );
            assert_eq!(
                http_get(http, "/echo?msg=hi").await.unwrap(),
                (StatusCode::OK, "hi".to_owned())
            );
            assert_eq!(
                http_get(http, "/echo?msg=gone&code=404").await.unwrap().0,
                StatusCode::NOT_FOUND
            );
            let (_, client_ip) = http_get(http, "/clientip").await.unwrap();
            assert!(client_ip.starts_with("127.0.0.1:"), "{client_ip}");
            let (status, body) = http_get(http, "/shell?shellCommand=echo%20x")
                .await
                .unwrap();
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap(),
                serde_json::json!({"output": "x\n"})
            );
            let (_, body) = http_get(http, "/shell?cmd=exit%203").await.unwrap();
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap(),
                serde_json::json!({"error": "exit status 3"})
            );
            assert_eq!(
                http_get(http, "/readyz").await.unwrap(),
                (StatusCode::OK, "ok".to_owned())
            );
            assert!(http_get(http, "/").await.unwrap().1.starts_with("NOW: "));
            assert_eq!(dial_udp(udp, "echo hi").await.unwrap(), "hi");
            let dial = format!(
                "/dial?request=hostname&host=127.0.0.1&port={udp_port}&protocol=udp&tries=2"
            );
            let (_, body) = http_get(http, &dial).await.unwrap();
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap(),
                serde_json::json!({"responses": [hostname(), hostname()]})
            );
            let dial = format!("/dial?request=echo?msg=via-dial&host=127.0.0.1&port={http_port}");
            let (_, body) = http_get(http, &dial).await.unwrap();
            assert_eq!(
                serde_json::from_str::<Value>(&body).unwrap(),
                serde_json::json!({"responses": ["via-dial"]})
            );
            assert_eq!(
                http_get(http, "/dial?host=127.0.0.1&port=1")
                    .await
                    .unwrap()
                    .0,
                StatusCode::BAD_REQUEST
            );
            stop_tx.send(()).unwrap();
        };
        let (code, ()) = tokio::join!(server, client);
        assert_eq!(code, 0);
    }
}
