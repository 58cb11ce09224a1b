//! Load generation for the forwarding benchmark: servers in the backend pods and clients in the
//! client pod, built so that the dataplane under test, not the load generator, is what limits
//! the numbers.
//!
//! - Servers are event-driven: one tokio thread per backend pod accepts and serves every TCP
//!   connection (echo for request/response and short connections, discard for the stream), and
//!   one thread per pod drains UDP with `recvmmsg`, 64 datagrams per call. No thread is started
//!   per connection (the first harness did that, and spawning a thread cost more than the
//!   dataplane's work on a new connection).
//! - Short connections ([`crr`]) keep many connects in flight on one event loop: connect, a
//!   1-byte request and response, close (the client closes first, as HTTP/1.0 clients do).
//! - UDP ([`udp_blast`]) sends with `sendmmsg`, 64 datagrams per system call, from a connected
//!   socket; what counts is what arrives at the backends.
//!
//! A server's sockets are bound inside the pod's network namespace by the calling thread; a
//! socket stays in the namespace it was made in, so the serving threads need not enter it.
//! Client sockets are made inside the client's namespace by [`in_ns`].

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use rudder_node::lab::in_ns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Datagrams per `sendmmsg`/`recvmmsg` call.
const BATCH: usize = 64;

/// The servers of one backend pod: TCP echo, TCP discard and a UDP counter.
pub struct Servers {
    stop: Arc<AtomicBool>,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
    /// Datagrams received so far.
    pub udp_received: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    /// Binds the three ports inside namespace `ns` and starts serving.
    pub fn start(ns: &str, echo_port: u16, sink_port: u16, udp_port: u16) -> io::Result<Self> {
        let (echo, sink, udp) = in_ns(ns, || -> io::Result<_> {
            Ok((
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, echo_port))?,
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, sink_port))?,
                UdpSocket::bind((Ipv4Addr::UNSPECIFIED, udp_port))?,
            ))
        })??;
        echo.set_nonblocking(true)?;
        sink.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let udp_received = Arc::new(AtomicU64::new(0));
        let (shutdown, mut stopped) = tokio::sync::watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let tcp = thread::spawn(move || {
            runtime.block_on(async move {
                let (Ok(echo), Ok(sink)) = (
                    tokio::net::TcpListener::from_std(echo),
                    tokio::net::TcpListener::from_std(sink),
                ) else {
                    return;
                };
                let accept = |listener: tokio::net::TcpListener, reply: bool| async move {
                    loop {
                        let Ok((conn, _)) = listener.accept().await else {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            continue;
                        };
                        tokio::spawn(serve(conn, reply));
                    }
                };
                tokio::select! {
                    () = accept(echo, true) => {}
                    () = accept(sink, false) => {}
                    _ = stopped.changed() => {}
                }
            });
        });
        udp.set_read_timeout(Some(Duration::from_millis(100)))?;
        let (stop2, count) = (stop.clone(), udp_received.clone());
        let udp = thread::spawn(move || {
            let mut buffers = vec![[0u8; 2048]; BATCH];
            let mut batch = into(&mut buffers);
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(n) = recv_batch(&udp, &mut batch) {
                    count.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
        Ok(Self {
            stop,
            shutdown: Some(shutdown),
            udp_received,
            threads: vec![tcp, udp],
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(true);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

async fn serve(mut conn: tokio::net::TcpStream, reply: bool) {
    let _ = conn.set_nodelay(true);
    let mut buf = vec![0u8; if reply { 4096 } else { 256 * 1024 }];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if reply && conn.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// [`BATCH`] message headers, each over one buffer, built once and reused for every
/// `recvmmsg`/`sendmmsg` call of a loop (the kernel only updates their lengths and flags).
struct Batch {
    /// Pointed at by `headers`; kept alive and never resized.
    _iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

impl Batch {
    /// Headers over `buffers` (pointer and length of each); the buffers must outlive the batch
    /// and stay where they are.
    fn new(buffers: impl Iterator<Item = (*mut libc::c_void, usize)>) -> Self {
        let mut iovecs: Vec<libc::iovec> = buffers
            .map(|(iov_base, iov_len)| libc::iovec { iov_base, iov_len })
            .collect();
        // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
        let mut headers: Vec<libc::mmsghdr> = (0..iovecs.len())
            .map(|_| unsafe { std::mem::zeroed() })
            .collect();
        for (h, iov) in headers.iter_mut().zip(iovecs.iter_mut()) {
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
        }
        Self {
            _iovecs: iovecs,
            headers,
        }
    }

    fn len(&self) -> u32 {
        u32::try_from(self.headers.len()).unwrap_or(u32::MAX)
    }
}

/// Receives up to [`BATCH`] datagrams with one `recvmmsg` into the batch's buffers; blocks until
/// the first one or the socket's read timeout.
fn recv_batch(socket: &UdpSocket, batch: &mut Batch) -> io::Result<usize> {
    // SAFETY: every header points at a live iovec over a live buffer of the stated length;
    // MSG_WAITFORONE returns after the first datagram once more would block.
    let n = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            batch.headers.as_mut_ptr(),
            batch.len(),
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Sends the batch's datagrams with one `sendmmsg` on a connected socket; returns how many the
/// kernel took.
fn send_batch(socket: &UdpSocket, batch: &mut Batch) -> io::Result<usize> {
    // SAFETY: the headers point at live iovecs over live buffers, which the kernel only reads.
    let n = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            batch.headers.as_mut_ptr(),
            batch.len(),
            0,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// A batch sending [`BATCH`] copies of `payload`.
fn copies(payload: &[u8]) -> Batch {
    Batch::new((0..BATCH).map(|_| (payload.as_ptr().cast_mut().cast(), payload.len())))
}

/// A batch receiving into `buffers`.
fn into(buffers: &mut [[u8; 2048]]) -> Batch {
    Batch::new(buffers.iter_mut().map(|b| (b.as_mut_ptr().cast(), b.len())))
}

/// Sends 18-byte datagrams to `to` from namespace `ns` for `duration`, [`BATCH`] per system
/// call; returns how many the kernel accepted.
pub fn udp_blast(ns: &str, to: SocketAddr, duration: Duration) -> io::Result<u64> {
    in_ns(ns, || -> io::Result<u64> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        socket.connect(to)?;
        let payload = [0u8; 18];
        let mut batch = copies(&payload);
        let deadline = Instant::now() + duration;
        let mut sent = 0u64;
        while Instant::now() < deadline {
            // ENOBUFS or ECONNREFUSED (an ICMP error for an earlier datagram) are part of
            // the measurement, not a reason to stop.
            if let Ok(n) = send_batch(&socket, &mut batch) {
                sent += n as u64;
            }
        }
        Ok(sent)
    })?
}

/// What a short-connection run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct CrrOutcome {
    /// Connections that completed connect, request, response and close.
    pub completed: u64,
    /// Connections that failed (refused, reset, timed out).
    pub failed: u64,
}

/// Short connections from namespace `ns` to `to` for `duration`, `in_flight` at a time on one
/// event loop: connect, send one byte, read it back, close.
pub fn crr(
    ns: &str,
    to: SocketAddr,
    duration: Duration,
    in_flight: usize,
) -> io::Result<CrrOutcome> {
    in_ns(ns, || -> io::Result<CrrOutcome> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let completed = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        runtime.block_on(async {
            let deadline = tokio::time::Instant::now() + duration;
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..in_flight.max(1) {
                let (completed, failed) = (completed.clone(), failed.clone());
                tasks.spawn(async move {
                    while tokio::time::Instant::now() < deadline {
                        let one = tokio::time::timeout(Duration::from_secs(3), one_exchange(to));
                        if matches!(one.await, Ok(Ok(()))) {
                            completed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        });
        Ok(CrrOutcome {
            completed: completed.load(Ordering::Relaxed),
            failed: failed.load(Ordering::Relaxed),
        })
    })?
}

async fn one_exchange(to: SocketAddr) -> io::Result<()> {
    let mut conn = tokio::net::TcpStream::connect(to).await?;
    conn.set_nodelay(true)?;
    conn.write_all(b"x").await?;
    let mut byte = [0u8; 1];
    conn.read_exact(&mut byte).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch helpers move datagrams over loopback (no namespace needed).
    #[test]
    fn batches_cross_loopback() -> io::Result<()> {
        let receiver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        receiver.set_read_timeout(Some(Duration::from_secs(2)))?;
        let sender = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        sender.connect(receiver.local_addr()?)?;
        let payload = *b"0123456789abcdefgh";
        assert_eq!(send_batch(&sender, &mut copies(&payload))?, BATCH);
        let mut buffers = vec![[0u8; 2048]; BATCH];
        let mut batch = into(&mut buffers);
        let mut got = 0;
        while got < BATCH {
            got += recv_batch(&receiver, &mut batch)?;
        }
        drop(batch);
        assert_eq!(got, BATCH);
        assert_eq!(&buffers[0][..18], b"0123456789abcdefgh");
        Ok(())
    }
}
