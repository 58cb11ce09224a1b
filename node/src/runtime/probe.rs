//! Container probes, as the kubelet runs them: `httpGet` (status 200–399 passes; sent from the
//! node to the pod's address, `User-Agent: kube-probe/1.37`), `tcpSocket` (a connection
//! passes) and `exec` (exit status 0 passes; the command runs inside the container's namespaces
//! through `nsenter`). Each attempt is bounded by `timeoutSeconds`. gRPC and HTTPS probes are
//! not supported and fail with a message saying so.

use std::{net::IpAddr, time::Duration};

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Where a probe goes: the pod's address and the container's main process.
#[derive(Clone, Debug)]
pub struct Target {
    /// The pod's address (or the node's, for host-network pods).
    pub ip: IpAddr,
    /// The container's pid (host view), for exec probes.
    pub pid: i32,
}

/// Timing of a probe, with Kubernetes' defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Delay before the first attempt.
    pub initial_delay: Duration,
    /// Time between attempts.
    pub period: Duration,
    /// Bound of one attempt.
    pub timeout: Duration,
    /// Consecutive successes that make it pass (after a failure).
    pub success_threshold: u32,
    /// Consecutive failures that make it fail.
    pub failure_threshold: u32,
}

fn secs(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(v.unwrap_or(default).max(0)).unwrap_or(0))
}

fn count(v: Option<i32>, default: i32) -> u32 {
    u32::try_from(v.unwrap_or(default).max(1)).unwrap_or(1)
}

impl Timing {
    /// The probe's timing; `periodSeconds` 10, `timeoutSeconds` 1, thresholds 1 and 3 by default.
    pub fn of(probe: &Probe) -> Self {
        Self {
            initial_delay: secs(probe.initial_delay_seconds, 0),
            period: secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: count(probe.success_threshold, 1),
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// Resolves a probe port (a number or the name of one of the container's ports).
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid port {n}")),
        IntOrString::String(name) => {
            if let Ok(n) = name.parse::<u16>() {
                return Ok(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| u16::try_from(p.container_port).ok())
                .ok_or_else(|| format!("the container has no port named {name:?}"))
        }
    }
}

/// Runs one attempt of `probe`: `Ok(())` passes, `Err(why)` fails.
pub async fn run_once(probe: &Probe, container: &Container, target: &Target) -> Result<(), String> {
    let timeout = Timing::of(probe).timeout;
    let attempt = async {
        if let Some(http) = &probe.http_get {
            if http
                .scheme
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
            {
                return Err("HTTPS probes are not supported by rudder".to_owned());
            }
            let port = resolve_port(&http.port, container)?;
            let host = http.host.clone().unwrap_or_else(|| target.ip.to_string());
            let path = http.path.clone().unwrap_or_else(|| "/".into());
            let headers: Vec<(String, String)> = http
                .http_headers
                .iter()
                .flatten()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect();
            http_get(&host, port, &path, &headers).await
        } else if let Some(tcp) = &probe.tcp_socket {
            let port = resolve_port(&tcp.port, container)?;
            let host = tcp.host.clone().unwrap_or_else(|| target.ip.to_string());
            TcpStream::connect((host.as_str(), port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {host}:{port}: {e}"))
        } else if let Some(exec) = &probe.exec {
            exec_in(target.pid, exec.command.as_deref().unwrap_or_default()).await
        } else if probe.grpc.is_some() {
            Err("gRPC probes are not supported by rudder".to_owned())
        } else {
            Err("the probe has no handler".to_owned())
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("probe timed out after {}s", timeout.as_secs())),
    }
}

async fn http_get(
    host: &str,
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), String> {
    let url = format!("http://{host}:{port}{path}");
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("Get {url:?}: dial tcp {host}:{port}: {e}"))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("user-agent") {
        request.push_str("User-Agent: kube-probe/1.37\r\n");
    }
    if !has("accept") {
        request.push_str("Accept: */*\r\n");
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("Get {url:?}: {e}"))?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream
            .read(&mut head[len..])
            .await
            .map_err(|e| format!("Get {url:?}: {e}"))?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&head[..len]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("Get {url:?}: malformed HTTP response"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// Runs `command` inside the container whose main process is `pid`, as the kubelet's exec
/// probes do: in its namespaces, root and working directory, with its environment (so
/// `$HOSTNAME` and the pod's variables expand as in the container) and in its cgroups. Fails
/// with the output when it exits non-zero. If the probe is abandoned (its timeout), the
/// command's whole session is killed.
pub async fn exec_in(pid: i32, command: &[String]) -> Result<(), String> {
    if command.is_empty() {
        return Err("the exec probe has no command".into());
    }
    let spawn = crate::exec::nsenter_spawn(pid, command, false).map_err(|e| e.to_string())?;
    let mut cmd = spawn.command().map_err(|e| e.to_string())?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("running {}: {e}", spawn.program.display()))?;
    let mut session = SessionGuard(child.id().and_then(|p| i32::try_from(p).ok()));
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("running {}: {e}", spawn.program.display()))?;
    session.0 = None;
    if out.status.success() {
        Ok(())
    } else {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Err(format!(
            "command {:?} exited with {}: {}",
            command.join(" "),
            out.status.code().unwrap_or(-1),
            text.trim()
        ))
    }
}

/// Kills the session of an exec probe's command when dropped before the command ended (the
/// probe timed out): `nsenter` forks into the container's PID namespace, so killing `nsenter`
/// alone would leave the command running.
struct SessionGuard(Option<i32>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if let Some(sid) = self.0 {
            crate::exec::kill_session(sid);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests assert on known values")]
mod tests {
    use k8s_openapi::api::core::v1::{ContainerPort, HTTPGetAction, TCPSocketAction};

    use super::*;

    fn container() -> Container {
        Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_named_ports() {
        let t = Timing::of(&Probe::default());
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!(t.timeout, Duration::from_secs(1));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
        let c = container();
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(resolve_port(&IntOrString::Int(81), &c), Ok(81));
        assert!(
            resolve_port(&IntOrString::String("nope".into()), &c)
                .unwrap_err()
                .contains("nope")
        );
        assert!(resolve_port(&IntOrString::Int(70000), &c).is_err());
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let status = if n == 0 { "200 OK" } else { "500 Oops" };
                n += 1;
                let _ = conn
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let target = Target {
            ip: "127.0.0.1".parse().unwrap(),
            pid: 0,
        };
        let http = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(i32::from(port)),
                path: Some("/healthz".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(run_once(&http, &container(), &target).await, Ok(()));
        let second = run_once(&http, &container(), &target).await.unwrap_err();
        assert!(second.contains("500"), "{second}");
        let tcp = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(i32::from(port)),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(run_once(&tcp, &container(), &target).await, Ok(()));
        assert!(
            run_once(&Probe::default(), &container(), &target)
                .await
                .is_err()
        );
    }
}
