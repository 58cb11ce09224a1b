//! The agent's HTTPS endpoint on the kubelet port (10250 by default): container logs, which the
//! apiserver proxies for `kubectl logs`, exec sessions for `kubectl exec`, and resource
//! metrics.
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}?podUID=…` with kubectl's options `follow`,
//!   `previous`, `tailLines`, `limitBytes`, `timestamps`, `sinceSeconds` and `sinceTime`.
//!   `podUID` is rudder's addition: logs live under the pod's UID on the node
//!   (`<root>/pods/<uid>/logs/<container>/<attempt>.log`), and the UID also keeps a pod that was
//!   deleted and re-created under the same name from showing its predecessor's logs.
//!   The files hold CRI log lines (`<RFC 3339 time> <stream> <F|P> <text>`); what is served is
//!   the text, as the kubelet serves it: partial (`P`) pieces joined, the time in front only
//!   with `timestamps`, lines older than `since…` left out.
//! - `GET|POST /exec/{namespace}/{pod}/{container}?podUID=…&command=…&stdin=…&stdout=…&stderr=…&tty=…`
//!   upgraded to a WebSocket (`v5.channel.k8s.io` or `v4.channel.k8s.io`): runs the command in
//!   the container's namespaces, see [`crate::exec`].
//! - `GET /metrics/resource`: CPU and memory use of the containers and the node in
//!   Prometheus text, see [`crate::metrics`]; the apiserver scrapes it to serve
//!   `metrics.k8s.io` (`kubectl top`, the HorizontalPodAutoscaler).
//! - `GET /healthz`.
//!
//! Who may ask: callers present the cluster's node token as a bearer token. The apiserver is the
//! only caller that has it besides the nodes.
//!
//! Who answers: the serving certificate is self-signed and made at every start. The agent
//! publishes its SHA-256 fingerprint in the Node's [`CERT_ANNOTATION`], writing as the node, and
//! the apiserver accepts exactly that certificate. So the token only ever goes to the agent
//! that registered the node, without a CA per node.

use std::{
    convert::Infallible,
    io::{self, SeekFrom},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncSeekExt},
    net::TcpListener,
    sync::mpsc,
};

/// The kubelet's default port.
pub const PORT: u16 = 10250;

/// Node annotation holding the hex SHA-256 of the agent's serving certificate (DER).
pub const CERT_ANNOTATION: &str = "rudder.dev/kubelet-serving-cert-sha256";

/// How often a followed log is checked for more output.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Response bodies.
pub type Body = BoxBody<Bytes, Infallible>;

/// The agent's serving identity: a fresh self-signed certificate and its fingerprint.
pub struct Identity {
    /// Hex SHA-256 of the certificate's DER bytes, for [`CERT_ANNOTATION`].
    pub fingerprint: String,
    config: Arc<rustls::ServerConfig>,
}

impl Identity {
    /// Makes a certificate for `node_name` and `node_ip`.
    pub fn new(node_name: &str, node_ip: std::net::Ipv4Addr) -> io::Result<Self> {
        let names = vec![node_name.to_owned(), node_ip.to_string()];
        let key = rcgen::KeyPair::generate().map_err(io::Error::other)?;
        let mut params = rcgen::CertificateParams::new(names).map_err(io::Error::other)?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("{node_name}@rudder-agent"),
        );
        let cert = params.self_signed(&key).map_err(io::Error::other)?;
        let der = cert.der().to_vec();
        let fingerprint = fingerprint(&der);
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(vec![der.into()], key_der)
            .map_err(io::Error::other)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            fingerprint,
            config: Arc::new(config),
        })
    }
}

/// Hex SHA-256 of `der`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serves the endpoint on `listener` until the task is dropped. `root` is the agent's state
/// directory; `token` the bearer token callers must present.
pub async fn serve(listener: TcpListener, identity: Identity, root: PathBuf, token: String) {
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.config);
    let shared = Arc::new((root, token));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "kubelet API: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared.0, &shared.1, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // Upgrades: exec sessions continue as WebSockets on the same connection.
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "kubelet API connection ended with an error");
            }
        });
    }
}

/// Binds the endpoint's listener on `ip:port` (`port` 0: any free port).
pub async fn bind(ip: std::net::Ipv4Addr, port: u16) -> io::Result<(TcpListener, u16)> {
    let listener = TcpListener::bind(SocketAddr::from((ip, port))).await?;
    let port = listener.local_addr()?.port();
    Ok((listener, port))
}

fn text(code: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(message.into())).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn handle(root: &Path, token: &str, req: Request<Incoming>) -> Response<Body> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented != Some(token) {
        return text(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    if req.uri().path().starts_with("/exec/") {
        return crate::exec::serve(root, req).await;
    }
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served");
    }
    let path = req.uri().path();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    if path == "/metrics/resource" {
        let root = root.to_owned();
        return match tokio::task::spawn_blocking(move || crate::metrics::scrape(&root)).await {
            Ok(body) => text(StatusCode::OK, body),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        };
    }
    let Some((_ns, _pod, container)) = parse_logs_path(path) else {
        return text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
    };
    let options = match LogOptions::parse(req.uri().query().unwrap_or("")) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    match container_logs(root, container, &options).await {
        Ok(body) => {
            let mut resp = Response::new(body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        }
        Err(LogError::NotFound(message)) => text(StatusCode::NOT_FOUND, message),
        Err(LogError::Io(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `/containerLogs/{ns}/{pod}/{container}` → its three parts.
pub fn parse_logs_path(path: &str) -> Option<(&str, &str, &str)> {
    let mut parts = path.strip_prefix("/containerLogs/")?.split('/');
    let (ns, pod, container) = (parts.next()?, parts.next()?, parts.next()?);
    let ok = |s: &str| !s.is_empty() && s != "." && s != "..";
    (parts.next().is_none() && ok(ns) && ok(pod) && ok(container)).then_some((ns, pod, container))
}

/// What `kubectl logs` asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// The pod's UID (a path component under the agent's root).
    pub pod_uid: String,
    /// Keep streaming until the container ends.
    pub follow: bool,
    /// The container's previous attempt instead of the current one.
    pub previous: bool,
    /// Only the last this many lines.
    pub tail_lines: Option<usize>,
    /// At most this many bytes.
    pub limit_bytes: Option<u64>,
    /// Each line prefixed with its time.
    pub timestamps: bool,
    /// Only lines from this time on.
    pub since: Option<jiff::Timestamp>,
}

impl LogOptions {
    /// Parses a query string; the error names the bad parameter.
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
                "follow" => o.follow = flag("follow", &v)?,
                "previous" => o.previous = flag("previous", &v)?,
                "tailLines" => {
                    let n: i64 = v
                        .parse()
                        .map_err(|_| format!("tailLines: {v:?} is not a number"))?;
                    // kubectl sends -1 for "all lines".
                    o.tail_lines = usize::try_from(n).ok();
                }
                "limitBytes" => {
                    let n: u64 =
                        v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                            format!("limitBytes: {v:?} must be a positive number")
                        })?;
                    o.limit_bytes = Some(n);
                }
                "timestamps" => o.timestamps = flag("timestamps", &v)?,
                "sinceSeconds" => {
                    let secs: i64 =
                        v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                            format!("sinceSeconds: {v:?} must be a positive number")
                        })?;
                    o.since = jiff::Timestamp::now()
                        .checked_sub(jiff::SignedDuration::from_secs(secs))
                        .ok();
                }
                "sinceTime" => {
                    o.since =
                        Some(v.parse().map_err(|e| {
                            format!("sinceTime: {v:?} is not an RFC 3339 time: {e}")
                        })?);
                }
                _ => {}
            }
        }
        let uid_ok = !o.pod_uid.is_empty()
            && o.pod_uid
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !uid_ok {
            return Err("podUID: a pod UID is required".into());
        }
        Ok(o)
    }
}

/// Why logs could not be served.
#[derive(Debug)]
pub enum LogError {
    /// No such container run (the message says which, as the kubelet does).
    NotFound(String),
    /// Reading failed.
    Io(io::Error),
}

/// The attempts of a container that have a log, in order.
fn attempts(dir: &Path) -> Vec<u32> {
    let mut found: Vec<u32> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse::<u32>()
                .ok()
        })
        .collect();
    found.sort_unstable();
    found
}

/// Turns CRI log lines into what `kubectl logs` prints, across reads that may end mid-line.
struct Decoder {
    timestamps: bool,
    since: Option<jiff::Timestamp>,
    /// The start of a line whose end has not been read yet.
    pending: Vec<u8>,
}

impl Decoder {
    fn new(o: &LogOptions) -> Self {
        Self {
            timestamps: o.timestamps,
            since: o.since,
            pending: Vec::new(),
        }
    }

    /// Decodes the complete lines in `pending` + `raw`, keeping an unfinished last line.
    fn feed(&mut self, raw: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(raw);
        let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = self.pending.split_off(end + 1);
        let complete = std::mem::replace(&mut self.pending, rest);
        let mut out = Vec::with_capacity(complete.len());
        for line in complete.split(|b| *b == b'\n') {
            if !line.is_empty() {
                self.line(line, &mut out);
            }
        }
        out
    }

    fn line(&self, line: &[u8], out: &mut Vec<u8>) {
        let mut fields = line.splitn(4, |b| *b == b' ');
        let (Some(time), Some(_stream), Some(tag), Some(text)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            out.extend_from_slice(line);
            out.push(b'\n');
            return;
        };
        let at = std::str::from_utf8(time)
            .ok()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        let Some(at) = at.filter(|_| tag == b"F" || tag == b"P") else {
            // Not a CRI line: shown as it is.
            out.extend_from_slice(line);
            out.push(b'\n');
            return;
        };
        if self.since.is_some_and(|since| at < since) {
            return;
        }
        if self.timestamps {
            out.extend_from_slice(time);
            out.push(b' ');
        }
        out.extend_from_slice(text);
        if tag != b"P" {
            out.push(b'\n');
        }
    }
}

/// The last `n` lines of `data` (a final line without a newline counts as a line).
pub fn tail_lines(data: &[u8], n: usize) -> &[u8] {
    if n == 0 {
        return &data[data.len()..];
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &data[i + 1..];
            }
        }
    }
    data
}

async fn container_logs(root: &Path, container: &str, o: &LogOptions) -> Result<Body, LogError> {
    let pod_dir = root.join("pods").join(&o.pod_uid);
    let dir = pod_dir.join("logs").join(container);
    let runs = attempts(&dir);
    let attempt = if o.previous {
        runs.iter().rev().nth(1).copied().ok_or_else(|| {
            LogError::NotFound(format!(
                "previous terminated container \"{container}\" in pod not found"
            ))
        })?
    } else {
        runs.last().copied().ok_or_else(|| {
            LogError::NotFound(format!(
                "container \"{container}\" has not started yet; no logs"
            ))
        })?
    };
    let path = dir.join(format!("{attempt}.log"));
    let ino = tokio::fs::metadata(&path)
        .await
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let raw = tokio::fs::read(&path).await.map_err(LogError::Io)?;
    let mut decoder = Decoder::new(o);
    let data = decoder.feed(&raw);
    let start = match o.tail_lines {
        Some(n) => data.len() - tail_lines(&data, n).len(),
        None => 0,
    };
    let limit = o.limit_bytes.unwrap_or(u64::MAX);
    let first_len = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .min(data.len() - start);
    let first = Bytes::copy_from_slice(&data[start..start + first_len]);
    if !o.follow || o.previous || first_len as u64 >= limit {
        return Ok(Full::new(first).boxed());
    }
    let exited = pod_dir
        .join("containers")
        .join(container)
        .join(attempt.to_string())
        .join("exit");
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let offset = raw.len() as u64;
    let sent = first_len as u64;
    tokio::spawn(async move {
        if !first.is_empty() && tx.send(first).await.is_err() {
            return;
        }
        let mut from = Follow {
            path,
            exited,
            pod_dir,
            offset,
            ino,
            decoder,
        };
        from.run(limit - sent, tx).await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    Ok(StreamBody::new(stream).boxed())
}

/// A log being followed: the file, where reading stopped, and the markers that end it.
struct Follow {
    path: PathBuf,
    /// Exists once the container's run has exited.
    exited: PathBuf,
    pod_dir: PathBuf,
    offset: u64,
    /// The inode of the file being read, to notice a rotation.
    ino: Option<u64>,
    decoder: Decoder,
}

impl Follow {
    /// Sends what is appended to the log, until the run has exited (and everything is sent),
    /// the pod is gone, `budget` bytes are sent, or the reader hung up.
    async fn run(&mut self, mut budget: u64, tx: mpsc::Sender<Bytes>) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let done = self.exited.exists() || !self.pod_dir.exists();
            // Another file under the log's name (or a shorter one) means the log was rotated:
            // the rest of the old one is the newest rotated file's, then the new one is read
            // from its start.
            let meta = tokio::fs::metadata(&self.path).await.ok();
            let ino = meta.as_ref().map(std::os::unix::fs::MetadataExt::ino);
            let rotated = meta.as_ref().is_some_and(|m| {
                m.len() < self.offset || self.ino.is_some_and(|old| Some(old) != ino)
            });
            if self.ino.is_none() {
                self.ino = ino;
            }
            if rotated {
                self.ino = ino;
                let old = newest_rotated(&self.path);
                let path = std::mem::replace(&mut self.path, old);
                let ended = self.drain(&mut buf, &mut budget, &tx).await;
                self.path = path;
                self.offset = 0;
                if ended {
                    return;
                }
            }
            let before = self.offset;
            if self.drain(&mut buf, &mut budget, &tx).await {
                return;
            }
            let grew = self.offset > before;
            if (done && !grew) || tx.is_closed() {
                return;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }

    /// Sends what `self.path` holds past `self.offset`; `true` once the reader is gone or the
    /// budget spent.
    async fn drain(&mut self, buf: &mut [u8], budget: &mut u64, tx: &mpsc::Sender<Bytes>) -> bool {
        let Ok(mut file) = tokio::fs::File::open(&self.path).await else {
            return false;
        };
        if file.seek(SeekFrom::Start(self.offset)).await.is_err() {
            return false;
        }
        loop {
            match file.read(buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    self.offset += n as u64;
                    let mut out = self.decoder.feed(&buf[..n]);
                    if out.is_empty() {
                        continue;
                    }
                    out.truncate(usize::try_from(*budget).unwrap_or(usize::MAX));
                    *budget -= out.len() as u64;
                    if tx.send(Bytes::from(out)).await.is_err() || *budget == 0 {
                        return true;
                    }
                }
            }
        }
    }
}

/// The most recently rotated file of the log at `path` (`<name>.<time>`; names sort by time),
/// or `path` itself if there is none.
fn newest_rotated(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let prefix = format!("{name}.");
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|e| e.path())
        .max()
        .unwrap_or_else(|| path.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use super::*;

    #[test]
    fn paths_and_options_parse() {
        assert_eq!(
            parse_logs_path("/containerLogs/default/web/app"),
            Some(("default", "web", "app"))
        );
        assert_eq!(parse_logs_path("/containerLogs/default/web"), None);
        assert_eq!(parse_logs_path("/containerLogs/default/../app"), None);
        assert_eq!(parse_logs_path("/containerLogs/a/b/c/d"), None);
        let o = LogOptions::parse("podUID=1f-2a&follow=true&tailLines=10&limitBytes=5").unwrap();
        assert_eq!(
            o,
            LogOptions {
                pod_uid: "1f-2a".into(),
                follow: true,
                previous: false,
                tail_lines: Some(10),
                limit_bytes: Some(5),
                timestamps: false,
                since: None,
            }
        );
        assert_eq!(
            LogOptions::parse("podUID=x&tailLines=-1")
                .unwrap()
                .tail_lines,
            None
        );
        assert!(
            LogOptions::parse("podUID=../etc")
                .unwrap_err()
                .contains("podUID")
        );
        assert!(
            LogOptions::parse("podUID=x&limitBytes=0")
                .unwrap_err()
                .contains("limitBytes")
        );
        assert!(
            LogOptions::parse("podUID=x&follow=maybe")
                .unwrap_err()
                .contains("follow")
        );
    }

    #[test]
    fn tails_count_lines_from_the_end() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail_lines(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail_lines(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail_lines(b"a\nb\n", 0), b"");
        assert_eq!(tail_lines(b"", 3), b"");
    }

    #[tokio::test]
    async fn following_goes_on_across_a_rotation() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pods/u1/logs/app");
        std::fs::create_dir_all(&dir).unwrap();
        let line = |n: u32| format!("2026-01-01T00:00:0{n}Z stdout F line {n}\n");
        std::fs::write(dir.join("0.log"), line(1)).unwrap();
        let o = LogOptions {
            pod_uid: "u1".into(),
            follow: true,
            ..LogOptions::default()
        };
        let body = container_logs(root.path(), "app", &o).await.unwrap();
        let reader = tokio::spawn(async move { body.collect().await.unwrap().to_bytes() });
        tokio::time::sleep(FOLLOW_POLL * 2).await;
        // More output, then the log is rotated (the rest went to the old file) and goes on.
        let append = |text: String| {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("0.log"))
                .unwrap();
            f.write_all(text.as_bytes()).unwrap();
        };
        append(line(2));
        std::fs::rename(
            dir.join("0.log"),
            dir.join("0.log.20260101-000002.000000000"),
        )
        .unwrap();
        std::fs::write(dir.join("0.log"), line(3) + &line(4)).unwrap();
        tokio::time::sleep(FOLLOW_POLL * 3).await;
        append(line(5));
        let state = root.path().join("pods/u1/containers/app/0");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("exit"), "{}").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, "line 1\nline 2\nline 3\nline 4\nline 5\n");
    }

    #[tokio::test]
    async fn logs_come_from_the_latest_or_previous_attempt() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pods/u1/logs/app");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("0.log"),
            "2026-01-01T00:00:00.000000001Z stdout F first run\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("1.log"),
            "2026-01-01T00:00:01Z stdout F one\nnot a CRI line\n\
             2026-01-01T00:00:02Z stderr P tw\n2026-01-01T00:00:02Z stderr F o\n\
             2026-01-01T00:00:03Z stdout F three\n2026-01-01T00:00:04Z stdout F unfinish",
        )
        .unwrap();
        let read = |o: LogOptions| {
            let root = root.path().to_owned();
            async move {
                match container_logs(&root, "app", &o).await {
                    Ok(body) => Ok(body.collect().await.unwrap().to_bytes()),
                    Err(LogError::NotFound(m)) => Err(m),
                    Err(LogError::Io(e)) => Err(e.to_string()),
                }
            }
        };
        let base = LogOptions {
            pod_uid: "u1".into(),
            ..LogOptions::default()
        };
        assert_eq!(
            read(base.clone()).await.unwrap(),
            "one\nnot a CRI line\ntwo\nthree\n"
        );
        let timed = LogOptions {
            timestamps: true,
            since: Some("2026-01-01T00:00:02Z".parse().unwrap()),
            ..base.clone()
        };
        assert_eq!(
            read(timed).await.unwrap(),
            "not a CRI line\n2026-01-01T00:00:02Z tw2026-01-01T00:00:02Z o\n\
             2026-01-01T00:00:03Z three\n"
        );
        let previous = LogOptions {
            previous: true,
            ..base.clone()
        };
        assert_eq!(read(previous).await.unwrap(), "first run\n");
        let tail = LogOptions {
            tail_lines: Some(1),
            limit_bytes: Some(3),
            ..base.clone()
        };
        assert_eq!(read(tail).await.unwrap(), "thr");
        // Following a run that has exited ends after its output.
        let state = root.path().join("pods/u1/containers/app/1");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(state.join("exit"), "{}").unwrap();
        let follow = LogOptions {
            follow: true,
            ..base.clone()
        };
        assert_eq!(
            read(follow).await.unwrap(),
            "one\nnot a CRI line\ntwo\nthree\n"
        );
        let missing = LogOptions {
            pod_uid: "nope".into(),
            ..base
        };
        assert!(read(missing).await.unwrap_err().contains("has not started"));
    }
}
