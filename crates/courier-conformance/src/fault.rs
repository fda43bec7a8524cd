//! A loopback TCP proxy that a test can break on command.
//!
//! [`FaultProxy`] listens on `127.0.0.1` and forwards every connection it accepts to one
//! upstream service, opening a new upstream connection for each client connection. A test
//! points the client under test at [`FaultProxy::addr`] instead of the service, then injects
//! faults:
//!
//! | fault | method | what the client sees |
//! | --- | --- | --- |
//! | dropped connections | [`cut`](FaultProxy::cut) | EOF or a reset on every open connection |
//! | a hung network | [`stall`](FaultProxy::stall) / [`resume`](FaultProxy::resume) | open connections on which no byte moves |
//! | a service that is down | [`refuse`](FaultProxy::refuse) / [`accept_again`](FaultProxy::accept_again) | `ECONNREFUSED` on connect |
//! | a full outage | [`outage`](FaultProxy::outage) / [`restore`](FaultProxy::restore) | both of the above |
//!
//! Only loopback is used and nothing is shared between proxies, so tests that each start their
//! own proxy can run in parallel.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use courier_conformance::fault::FaultProxy;
//! use tokio::net::{TcpListener, TcpStream};
//!
//! // Any TCP service; a test would start its broker or database here.
//! let service = TcpListener::bind("127.0.0.1:0").await?;
//! let proxy = FaultProxy::start(service.local_addr()?).await?;
//!
//! // The client under test is given the proxy's address, not the service's.
//! let client = TcpStream::connect(proxy.addr()).await?;
//!
//! proxy.outage().await; // `client` is closed and new connects are refused
//! assert!(TcpStream::connect(proxy.addr()).await.is_err());
//!
//! proxy.restore().await?; // the same port accepts again
//! let reconnected = TcpStream::connect(proxy.addr()).await?;
//! # drop((client, reconnected));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

/// Size of the buffer each forwarding direction reads into.
const CHUNK: usize = 16 * 1024;
/// Backlog of the listening socket.
const BACKLOG: u32 = 1024;
/// Pause after a failed `accept` (such as `EMFILE`), so that a lasting error is not retried in
/// a busy loop.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// A TCP proxy on `127.0.0.1` in front of one upstream service, that a test can break on
/// command.
///
/// Each accepted client connection gets its own upstream connection, and bytes are forwarded
/// in both directions chunk by chunk, a half-close (EOF) included, until both sides have
/// closed, either side fails, the connection is [cut](Self::cut), or the proxy is dropped.
/// If the upstream cannot be reached, the client connection is closed.
///
/// Faults apply to the proxy as a whole. They can be combined and undone at any time, from
/// any task; the methods take `&self`, so the proxy can be shared in an [`Arc`].
///
/// Dropping the proxy stops its accept loop and closes every connection it forwards; all of
/// its tasks end.
///
/// The proxy runs its tasks on the tokio runtime that [`start`](Self::start) was called on.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    counters: Arc<Counters>,
    /// Generation of cuts; each connection task ends when it changes or the sender is dropped.
    cut_tx: watch::Sender<u64>,
    /// Whether forwarding is stalled.
    stall_tx: watch::Sender<bool>,
    /// The accept loop, which owns the listening socket; `None` while refusing.
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

/// Counters shared by the proxy, its accept loop and its connection tasks.
#[derive(Debug, Default)]
struct Counters {
    open: AtomicUsize,
    accepted: AtomicU64,
}

/// Counts one connection as open for as long as it lives.
struct OpenGuard(Arc<Counters>);

impl OpenGuard {
    fn new(counters: &Arc<Counters>) -> Self {
        counters.open.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(counters))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FaultProxy {
    /// Binds `127.0.0.1` on a free port and forwards each accepted connection to `upstream`,
    /// opening a new upstream connection per client connection.
    ///
    /// The accept loop is spawned on the current tokio runtime. Nothing is checked about
    /// `upstream` here: a client that connects while it is unreachable is simply closed.
    ///
    /// # Errors
    ///
    /// Returns the error of creating, binding or listening on the socket.
    ///
    /// # Panics
    ///
    /// Panics if called outside a tokio runtime.
    ///
    /// # Cancel safety
    ///
    /// This method does not wait on anything; dropping its future before it completes starts
    /// no proxy.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = listen(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let addr = listener.local_addr()?;
        let mut proxy = FaultProxy {
            addr,
            upstream,
            counters: Arc::default(),
            cut_tx: watch::Sender::new(0),
            stall_tx: watch::Sender::new(false),
            accept_task: Mutex::new(None),
        };
        let task = proxy.spawn_accept_loop(listener);
        *proxy.accept_task.get_mut() = Some(task);
        Ok(proxy)
    }

    /// The address clients connect to: `127.0.0.1` and [`port`](Self::port).
    ///
    /// It stays the same for the life of the proxy, across [`refuse`](Self::refuse) and
    /// [`accept_again`](Self::accept_again).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Closes every connection open now, on both the client and the upstream side.
    ///
    /// Clients see EOF or a connection reset. Bytes read but not yet forwarded are lost. New
    /// connections are still accepted (unless the proxy is [refusing](Self::refuse)) and are
    /// not affected by this cut. A client whose connect completed in the kernel but that the
    /// proxy had not accepted yet counts as a new connection.
    ///
    /// The sockets are closed by the connection tasks, so shortly after this returns rather
    /// than before; [`open_connections`](Self::open_connections) drops to match.
    pub fn cut(&self) {
        self.cut_tx
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Stops forwarding bytes in both directions on every connection, present and future,
    /// until [`resume`](Self::resume).
    ///
    /// Connections stay open and keep being accepted; bytes wait in the proxy and in the
    /// kernel's buffers, and a half-close waits too. Stalling a stalled proxy does nothing.
    pub fn stall(&self) {
        self.stall_tx.send_replace(true);
    }

    /// Forwards bytes again after [`stall`](Self::stall), including those that waited.
    ///
    /// Resuming a proxy that is not stalled does nothing.
    pub fn resume(&self) {
        self.stall_tx.send_replace(false);
    }

    /// Refuses new connections: the listening socket is closed, so connects fail with
    /// `ECONNREFUSED` ([`io::ErrorKind::ConnectionRefused`]).
    ///
    /// Connections that are already open are untouched; combine with [`cut`](Self::cut) (or
    /// use [`outage`](Self::outage)) for a full outage. Connects that the kernel had completed
    /// but the proxy had not accepted yet are reset. Refusing a refusing proxy does nothing.
    ///
    /// # Cancel safety
    ///
    /// When this returns, the listening socket is closed. If the future is dropped before
    /// that, the accept loop has still been stopped and its socket is closed shortly after.
    pub async fn refuse(&self) {
        let mut slot = self.accept_task.lock().await;
        if let Some(task) = slot.take() {
            task.abort();
            // A cancelled task's future, and so the listener, is dropped before its
            // `JoinHandle` completes.
            let _ = task.await;
        }
    }

    /// Accepts connections again, on the same port, after [`refuse`](Self::refuse).
    ///
    /// The listening socket is bound again with `SO_REUSEADDR`, so connections that are still
    /// open or in `TIME_WAIT` on the port do not stand in the way. Does nothing if the proxy
    /// is already accepting.
    ///
    /// # Errors
    ///
    /// Returns the error of creating, binding or listening on the socket: typically
    /// [`io::ErrorKind::AddrInUse`] if another socket took the port while the proxy was
    /// refusing. The proxy then keeps refusing, and the call can be retried.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before it completes, the proxy is either accepting or still
    /// refusing; it is never left half bound.
    pub async fn accept_again(&self) -> io::Result<()> {
        let mut slot = self.accept_task.lock().await;
        if slot.as_ref().is_some_and(|task| !task.is_finished()) {
            return Ok(());
        }
        let listener = listen(self.addr)?;
        *slot = Some(self.spawn_accept_loop(listener));
        Ok(())
    }

    /// An outage of the upstream: [`refuse`](Self::refuse), then [`cut`](Self::cut).
    ///
    /// When this returns, connects are refused and every connection open before is being
    /// closed. Undo it with [`restore`](Self::restore).
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped before it completes, the proxy stops accepting (see
    /// [`refuse`](Self::refuse)) but open connections may not have been cut.
    pub async fn outage(&self) {
        self.refuse().await;
        self.cut();
    }

    /// Ends an outage or any other fault: [`resume`](Self::resume), then
    /// [`accept_again`](Self::accept_again).
    ///
    /// # Errors
    ///
    /// Returns the error of [`accept_again`](Self::accept_again); forwarding is resumed in
    /// any case.
    ///
    /// # Cancel safety
    ///
    /// Forwarding is resumed as soon as the future is first polled; as for
    /// [`accept_again`](Self::accept_again), the proxy is then either accepting or refusing.
    pub async fn restore(&self) -> io::Result<()> {
        self.resume();
        self.accept_again().await
    }

    /// How many client connections the proxy is forwarding now.
    ///
    /// A connection counts from when it is accepted until both its sockets are closed, which
    /// happens shortly after a [`cut`](Self::cut) or after both sides have closed.
    pub fn open_connections(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// How many client connections the proxy has accepted since it started.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    fn spawn_accept_loop(&self, listener: TcpListener) -> JoinHandle<()> {
        tokio::spawn(accept_loop(
            listener,
            self.upstream,
            self.cut_tx.subscribe(),
            self.stall_tx.subscribe(),
            Arc::clone(&self.counters),
        ))
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .field("stalled", &*self.stall_tx.borrow())
            .field("open_connections", &self.open_connections())
            .field("accepted", &self.accepted())
            .finish_non_exhaustive()
    }
}

impl Drop for FaultProxy {
    /// Stops the accept loop and closes every connection: the connection tasks end when they
    /// see the cut and stall senders dropped.
    fn drop(&mut self) {
        if let Some(task) = self.accept_task.get_mut().take() {
            task.abort();
        }
    }
}

/// A listening socket on `addr` with `SO_REUSEADDR` (which accepted sockets inherit, so that
/// they do not block a later rebind of the port either).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    cut: watch::Receiver<u64>,
    stall: watch::Receiver<bool>,
    counters: Arc<Counters>,
) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                counters.accepted.fetch_add(1, Ordering::SeqCst);
                let open = OpenGuard::new(&counters);
                // Only cuts from now on concern this connection.
                let mut cut = cut.clone();
                cut.mark_unchanged();
                tokio::spawn(serve(client, upstream, cut, stall.clone(), open));
            }
            Err(_) => tokio::time::sleep(ACCEPT_RETRY).await,
        }
    }
}

/// Forwards one client connection until it ends, is cut, or the proxy is dropped (which
/// closes `cut`). Either way both sockets are dropped, then `open`.
async fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    mut cut: watch::Receiver<u64>,
    stall: watch::Receiver<bool>,
    open: OpenGuard,
) {
    tokio::select! {
        _ = cut.changed() => {}
        _ = forward(client, upstream, stall) => {}
    }
    drop(open);
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    stall: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut server = TcpStream::connect(upstream).await?;
    // Small messages should not wait for Nagle; failing to set it is harmless.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    tokio::try_join!(
        pump(client_read, server_write, stall.clone()),
        pump(server_read, client_write, stall),
    )?;
    Ok(())
}

/// Copies one direction chunk by chunk, waiting while stalled before each write and before
/// passing on EOF as a half-close.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut stall: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut buf = vec![0; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        let running = stall.wait_for(|stalled| !*stalled).await.is_ok();
        if !running {
            return Err(io::Error::other("fault proxy dropped"));
        }
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// A loopback port on which nothing listens, held for as long as this value lives.
///
/// Picking a free port by binding a listener and dropping it races with every other test in
/// the process: a proxy or server started meanwhile may get the same port, and the "closed"
/// port answers. `ClosedPort` keeps a socket bound to the port without listening on it, so no
/// one else can take it and every connect to it is refused (`ECONNREFUSED`).
#[derive(Debug)]
pub struct ClosedPort {
    /// Bound, never listening: holds the port.
    _socket: TcpSocket,
    port: u16,
}

impl ClosedPort {
    /// Binds a socket to a free port on `127.0.0.1` and never listens on it.
    ///
    /// # Errors
    ///
    /// The operating system's error if no socket can be bound.
    pub fn new() -> io::Result<ClosedPort> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        let port = socket.local_addr()?.port();
        Ok(ClosedPort {
            _socket: socket,
            port,
        })
    }

    /// The port; connecting to `127.0.0.1` on it is refused.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1` and [`port`](Self::port).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{sleep, timeout};

    /// How long anything that should happen may take.
    const WAIT: Duration = Duration::from_secs(1);

    /// An echo server on `127.0.0.1:0`, running until the test's runtime ends.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    /// Awaits `fut`, failing the test if that takes longer than `WAIT`.
    async fn within<T: Send>(fut: impl Future<Output = T> + Send) -> T {
        timeout(WAIT, fut).await.expect("timed out")
    }

    async fn connect(addr: SocketAddr) -> TcpStream {
        timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect failed")
    }

    /// Writes `msg` and returns what comes back.
    async fn echo(stream: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        let (mut read, mut write) = stream.split();
        let mut back = vec![0; msg.len()];
        let (written, read) = timeout(WAIT, async {
            tokio::join!(write.write_all(msg), read.read_exact(&mut back))
        })
        .await
        .expect("echo timed out");
        written.unwrap();
        read.unwrap();
        back
    }

    /// Asserts that the peer closes `stream` within `WAIT`.
    async fn assert_closed(stream: &mut TcpStream) {
        let mut buf = [0; 64];
        match timeout(WAIT, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {}
            Ok(Ok(n)) => panic!("read {n} bytes from a connection that should be closed"),
            Err(_) => panic!("connection still open after {WAIT:?}"),
        }
    }

    async fn wait_until(what: &str, condition: impl Fn() -> bool + Send + Sync) {
        let waited = timeout(WAIT, async {
            while !condition() {
                sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "not {what} after {WAIT:?}");
    }

    #[tokio::test]
    async fn forwards_bytes_both_ways() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        assert!(proxy.addr().ip().is_loopback());
        assert_eq!(proxy.port(), proxy.addr().port());

        let mut client = connect(proxy.addr()).await;
        assert_eq!(echo(&mut client, b"hello").await, b"hello");
        // Many chunks, in both directions at once.
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(echo(&mut client, &big).await, big);
        assert_eq!(proxy.accepted(), 1);
        assert_eq!(proxy.open_connections(), 1);

        drop(client);
        wait_until("closed", || proxy.open_connections() == 0).await;
        assert_eq!(proxy.accepted(), 1);
    }

    #[tokio::test]
    async fn cut_closes_open_connections_only() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut client = connect(proxy.addr()).await;
        assert_eq!(echo(&mut client, b"before").await, b"before");

        proxy.cut();
        assert_closed(&mut client).await;
        wait_until("closed", || proxy.open_connections() == 0).await;

        let mut again = connect(proxy.addr()).await;
        assert_eq!(echo(&mut again, b"after").await, b"after");
        assert_eq!(proxy.accepted(), 2);
        assert_eq!(proxy.open_connections(), 1);
    }

    #[tokio::test]
    async fn stall_holds_bytes_until_resume() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut present = connect(proxy.addr()).await;
        assert_eq!(echo(&mut present, b"warm").await, b"warm");

        proxy.stall();
        let mut newcomer = connect(proxy.addr()).await;
        present.write_all(b"held").await.unwrap();
        newcomer.write_all(b"late").await.unwrap();
        let (mut a, mut b) = ([0; 4], [0; 4]);
        let quiet = Duration::from_millis(300);
        let (from_present, from_newcomer) = tokio::join!(
            timeout(quiet, present.read(&mut a)),
            timeout(quiet, newcomer.read(&mut b))
        );
        assert!(
            from_present.is_err(),
            "bytes passed a stalled proxy: {from_present:?}"
        );
        assert!(
            from_newcomer.is_err(),
            "bytes passed a stalled proxy: {from_newcomer:?}"
        );
        assert_eq!(proxy.open_connections(), 2);

        proxy.resume();
        timeout(WAIT, present.read_exact(&mut a))
            .await
            .unwrap()
            .unwrap();
        timeout(WAIT, newcomer.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&a, &b), (b"held", b"late"));
    }

    #[tokio::test]
    async fn refuse_then_accept_again_on_the_same_port() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let addr = proxy.addr();
        let mut existing = connect(addr).await;
        assert_eq!(echo(&mut existing, b"one").await, b"one");

        within(proxy.refuse()).await;
        let refused = timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out");
        assert_eq!(
            refused
                .expect_err("connect succeeded while refusing")
                .kind(),
            io::ErrorKind::ConnectionRefused
        );
        // Existing connections are untouched.
        assert_eq!(echo(&mut existing, b"two").await, b"two");

        within(proxy.accept_again()).await.unwrap();
        within(proxy.accept_again()).await.unwrap(); // already accepting: a no-op
        assert_eq!(proxy.addr(), addr);
        let mut fresh = connect(addr).await;
        assert_eq!(echo(&mut fresh, b"three").await, b"three");
        assert_eq!(proxy.accepted(), 2);
    }

    #[tokio::test]
    async fn outage_then_restore() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut client = connect(proxy.addr()).await;
        assert_eq!(echo(&mut client, b"up").await, b"up");
        proxy.stall();

        within(proxy.outage()).await;
        assert_closed(&mut client).await;
        assert!(TcpStream::connect(proxy.addr()).await.is_err());

        within(proxy.restore()).await.unwrap();
        let mut again = connect(proxy.addr()).await;
        assert_eq!(echo(&mut again, b"up again").await, b"up again");
    }

    #[tokio::test]
    async fn a_closed_port_refuses_and_stays_taken() {
        let closed = ClosedPort::new().unwrap();
        let err = TcpStream::connect(closed.addr()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        assert!(std::net::TcpListener::bind(closed.addr()).is_err());
        assert!(TcpListener::bind(closed.addr()).await.is_err());
    }

    #[tokio::test]
    async fn unreachable_upstream_closes_the_client() {
        let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = gone.local_addr().unwrap();
        drop(gone);
        let proxy = FaultProxy::start(upstream).await.unwrap();

        let mut client = connect(proxy.addr()).await;
        assert_closed(&mut client).await;
        wait_until("closed", || proxy.open_connections() == 0).await;
        assert_eq!(proxy.accepted(), 1);
    }

    #[tokio::test]
    async fn drop_closes_everything() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let addr = proxy.addr();
        let mut first = connect(addr).await;
        let mut second = connect(addr).await;
        assert_eq!(echo(&mut first, b"1").await, b"1");
        assert_eq!(echo(&mut second, b"2").await, b"2");
        assert!(format!("{proxy:?}").contains("open_connections: 2"));

        drop(proxy);
        assert_closed(&mut first).await;
        assert_closed(&mut second).await;
        // The accept loop is gone with its listener.
        let refused = timeout(WAIT, async {
            while TcpStream::connect(addr).await.is_ok() {
                sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(refused.is_ok(), "still accepting after drop");
    }
}
