//! The waker: while a virtual cluster sleeps, its API Service has one more endpoint, a port of
//! the manager's pod (an EndpointSlice the manager keeps, see [`super::objects::waker_slice`]).
//! A client connecting there (kubectl with its existing kubeconfig, a CI job, an in-cluster
//! client) is accepted and *held*, without reading or answering a byte: TLS is not terminated
//! here, so no tenant key ever leaves the tenant. The hold asks the reconciler to wake the
//! cluster; once its control plane answers `/readyz`, every held connection is spliced through
//! to the control plane pod, byte for byte, and the client's TLS handshake happens there as if
//! nothing had been in between. Only a connection whose first byte opens a TLS handshake wakes
//! a cluster (the byte is peeked, not read): a port scan, a load balancer's TCP health check or
//! a client that says nothing must not undo a sleep.
//!
//! One listening port per sleeping cluster (the Service's port maps to it by name, so a port is
//! the only thing that tells clusters apart without terminating TLS), chosen from a range the
//! chart opens in the manager's NetworkPolicy. Ports and addresses live in the EndpointSlices
//! themselves: a restarted manager reads the port back and re-listens on it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// How long a connection is held at most: clients give up sooner (kubectl's TLS handshake
/// timeout is 10 s); a cluster that takes longer to start gets the connections that come later.
pub const HOLD_AT_MOST: Duration = Duration::from_secs(60);
/// Connections held per cluster at most; more are closed at once (a flood must not pin the
/// manager's memory or file descriptors).
pub const MAX_HELD: usize = 256;
/// How long a new connection may take to send its first byte (a TLS client sends its
/// ClientHello at once) before it is closed without waking anything.
pub const FIRST_BYTE_WITHIN: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake message (the ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;
/// How long the listener keeps splicing after the cluster woke: kube-proxy takes a moment to
/// drop the waker's endpoint, and connections that still arrive must reach the control plane.
pub const LINGER: Duration = Duration::from_secs(15);
/// How often the readiness watch asks the control plane while a wake is on.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// How long a readiness watch lasts at most (the reconciler goes on after it).
const WATCH_AT_MOST: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum WakerError {
    #[error(
        "no free waker port in {first}-{last}: as many clusters sleep as the range has ports (chart value manager.waker.ports)"
    )]
    NoFreePort { first: u16, last: u16 },
}

/// A cluster's listener: its port, who waits, and where to splice once it is awake.
struct Listener {
    port: u16,
    /// `Some` once the control plane answers: held and new connections go there.
    target: watch::Sender<Option<SocketAddr>>,
    /// Connections that asked for the cluster (a TLS handshake) and wait for it.
    waiting: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    /// Bumped on every (re-)arm, so a delayed close of an earlier wake leaves a new sleep alone.
    generation: u64,
}

pub struct Waker {
    advertise: IpAddr,
    ports: RangeInclusive<u16>,
    listeners: Mutex<HashMap<String, Listener>>,
    watches: Mutex<HashMap<String, Instant>>,
    trigger: mpsc::UnboundedSender<String>,
    next_generation: AtomicUsize,
}

impl Waker {
    /// A waker reachable at `advertise` (the manager pod's IP) on ports of `ports`. The stream
    /// yields the name of a cluster whenever a request for it is waiting or it became ready:
    /// the reconciler should look at it now.
    pub fn new(
        advertise: IpAddr,
        ports: RangeInclusive<u16>,
    ) -> (Arc<Waker>, mpsc::UnboundedReceiver<String>) {
        let (trigger, wakes) = mpsc::unbounded_channel();
        (
            Arc::new(Waker {
                advertise,
                ports,
                listeners: Mutex::default(),
                watches: Mutex::default(),
                trigger,
                next_generation: AtomicUsize::new(1),
            }),
            wakes,
        )
    }

    pub fn address(&self) -> IpAddr {
        self.advertise
    }

    /// Listens for cluster `name` (if it does not yet), holding what arrives: on `preferred`
    /// when that port is free (the one its EndpointSlice already names, e.g. after a restart),
    /// else on the first free port of the range. A listener that was splicing (an earlier
    /// wake) holds again. Returns the port.
    pub async fn listen(&self, name: &str, preferred: Option<u16>) -> Result<u16, WakerError> {
        let generation = self.next_generation.fetch_add(1, Ordering::SeqCst) as u64;
        let taken: Vec<u16> = {
            let mut listeners = self.lock();
            if let Some(l) = listeners.get_mut(name) {
                let _ = l.target.send(None);
                l.generation = generation;
                return Ok(l.port);
            }
            listeners.values().map(|l| l.port).collect()
        };
        let candidates = preferred
            .filter(|p| self.ports.contains(p))
            .into_iter()
            .chain(self.ports.clone())
            .filter(|p| !taken.contains(p));
        for port in candidates {
            let addr = match self.advertise {
                IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], port)),
                IpAddr::V6(_) => SocketAddr::from(([0u16; 8], port)),
            };
            let Ok(socket) = TcpListener::bind(addr).await else {
                continue;
            };
            let mut listeners = self.lock();
            // Another call for the same cluster won meanwhile: keep its listener.
            if let Some(l) = listeners.get(name) {
                return Ok(l.port);
            }
            let (target, target_rx) = watch::channel(None);
            let (stop, stop_rx) = watch::channel(false);
            let waiting = Arc::new(AtomicUsize::new(0));
            tokio::spawn(accept_loop(
                name.to_string(),
                socket,
                target_rx,
                stop_rx,
                waiting.clone(),
                self.trigger.clone(),
            ));
            tracing::info!(vcluster = name, port, "waker listening");
            listeners.insert(
                name.to_string(),
                Listener {
                    port,
                    target,
                    waiting,
                    stop,
                    generation,
                },
            );
            return Ok(port);
        }
        Err(WakerError::NoFreePort {
            first: *self.ports.start(),
            last: *self.ports.end(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Listener>> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn port(&self, name: &str) -> Option<u16> {
        self.lock().get(name).map(|l| l.port)
    }

    /// Connections held for `name`, waiting for its control plane.
    pub fn waiting(&self, name: &str) -> usize {
        self.lock()
            .get(name)
            .map(|l| l.waiting.load(Ordering::SeqCst))
            .unwrap_or(0)
    }

    /// The control plane answers at `target`: every held connection is spliced there, and so
    /// is every later one until the listener closes ([`Waker::close_after`]).
    pub fn release(&self, name: &str, target: SocketAddr) {
        if let Some(l) = self.lock().get(name)
            && *l.target.borrow() != Some(target)
        {
            tracing::info!(
                vcluster = name,
                %target,
                waiting = l.waiting.load(Ordering::SeqCst),
                "control plane ready: splicing held connections"
            );
            let _ = l.target.send(Some(target));
        }
    }

    /// Stops listening for `name` now: held connections are closed.
    pub fn close(&self, name: &str) {
        if let Some(l) = self.lock().remove(name) {
            let _ = l.stop.send(true);
            tracing::info!(vcluster = name, port = l.port, "waker closed");
        }
        self.watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Stops listening after [`LINGER`], unless the cluster went back to sleep meanwhile.
    pub fn close_after(self: &Arc<Self>, name: &str, linger: Duration) {
        let Some(generation) = self.lock().get(name).map(|l| l.generation) else {
            return;
        };
        let waker = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(linger).await;
            let still = waker
                .lock()
                .get(&name)
                .is_some_and(|l| l.generation == generation && l.target.borrow().is_some());
            if still {
                waker.close(&name);
            }
        });
    }

    /// Watches the control plane of `name` come up (every 100 ms, `ready` says where it
    /// answers) and releases the held connections the moment it does, then asks the reconciler
    /// to finish the wake. One watch per cluster at a time.
    pub fn watch_ready<F, Fut>(self: &Arc<Self>, name: &str, ready: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<SocketAddr, String>> + Send,
    {
        {
            let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
            if watches
                .get(name)
                .is_some_and(|started| started.elapsed() < WATCH_AT_MOST)
            {
                return;
            }
            watches.insert(name.to_string(), Instant::now());
        }
        let waker = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let started = Instant::now();
            while started.elapsed() < WATCH_AT_MOST {
                if !waker.lock().contains_key(&name) {
                    break;
                }
                if let Ok(target) = ready().await {
                    waker.release(&name, target);
                    let _ = waker.trigger.send(name.clone());
                    break;
                }
                tokio::time::sleep(PROBE_EVERY).await;
            }
            waker
                .watches
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name);
        });
    }
}

async fn accept_loop(
    name: String,
    socket: TcpListener,
    target: watch::Receiver<Option<SocketAddr>>,
    mut stop: watch::Receiver<bool>,
    waiting: Arc<AtomicUsize>,
    trigger: mpsc::UnboundedSender<String>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            a = socket.accept() => a,
            _ = stop.changed() => return,
        };
        let (conn, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(vcluster = %name, error = %e, "waker accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = conn.set_nodelay(true);
        if let Some(to) = *target.borrow() {
            tokio::spawn(splice(conn, to));
            continue;
        }
        // Held ones and those not yet past their first byte: both pin a descriptor.
        if open.load(Ordering::SeqCst) >= MAX_HELD {
            tracing::warn!(vcluster = %name, %peer, "waker: too many held connections, closing one");
            continue;
        }
        open.fetch_add(1, Ordering::SeqCst);
        let held = Held {
            name: name.clone(),
            target: target.clone(),
            stop: stop.clone(),
            waiting: waiting.clone(),
            open: open.clone(),
            trigger: trigger.clone(),
        };
        tokio::spawn(async move {
            // Spliced connections no longer count against the limit: the next sleep's do.
            if let Some((conn, to)) = held.run(conn, peer).await {
                splice(conn, to).await;
            }
        });
    }
}

/// One connection to a sleeping cluster's port, from its accept to its splice or close.
struct Held {
    name: String,
    target: watch::Receiver<Option<SocketAddr>>,
    stop: watch::Receiver<bool>,
    waiting: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    trigger: mpsc::UnboundedSender<String>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Held {
    /// Waits for the first byte (peeked: it stays for the control plane); a TLS handshake is
    /// held and wakes the cluster, anything else (nothing, EOF, plain text) is closed. Then
    /// holds it until the control plane answers (returns where to splice it), the listener
    /// closes, or [`HOLD_AT_MOST`] passes (then it is closed).
    async fn run(mut self, conn: TcpStream, peer: SocketAddr) -> Option<(TcpStream, SocketAddr)> {
        let mut first = [0u8; 1];
        let opens_tls = tokio::select! {
            r = tokio::time::timeout(FIRST_BYTE_WITHIN, conn.peek(&mut first)) => {
                matches!(r, Ok(Ok(1))) && first[0] == TLS_HANDSHAKE
            }
            _ = self.stop.wait_for(|s| *s) => return None,
        };
        if !opens_tls {
            tracing::info!(vcluster = %self.name, %peer, "waker: a connection without a TLS handshake wakes nothing; closed");
            return None;
        }
        if let Some(to) = *self.target.borrow() {
            return Some((conn, to));
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        tracing::info!(vcluster = %self.name, %peer, "request for a sleeping cluster: holding it and waking the cluster");
        let _ = self.trigger.send(self.name.clone());
        let ready = tokio::select! {
            r = tokio::time::timeout(HOLD_AT_MOST, self.target.wait_for(Option::is_some)) => {
                r.ok().and_then(|r| r.ok()).and_then(|t| *t)
            }
            _ = self.stop.wait_for(|s| *s) => None,
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        ready.map(|to| (conn, to))
    }
}

/// Copies both ways between the client and the control plane until both are done.
async fn splice(mut client: TcpStream, to: SocketAddr) {
    let mut upstream = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(to))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(%to, error = %e, "waker: the control plane refused the spliced connection");
            return;
        }
        Err(_) => {
            tracing::warn!(%to, "waker: connecting to the control plane timed out");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%to, error = %e, "spliced connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A control plane stand-in that is a real TCP server: it echoes what it reads, prefixed,
    /// so the test sees the bytes went through unchanged and in order.
    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let n = match c.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let mut out = b"cp:".to_vec();
                        out.extend_from_slice(&buf[..n]);
                        if c.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// A range of ports around one the OS just handed out (so very likely free), and that one.
    fn free_ports() -> (RangeInclusive<u16>, u16) {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let first = p.saturating_sub(10).max(1025);
        (first..=first.saturating_add(40), p)
    }

    fn free_range() -> RangeInclusive<u16> {
        free_ports().0
    }

    async fn exchange(conn: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        conn.write_all(msg).await.unwrap();
        let mut buf = vec![0u8; msg.len() + 3];
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        buf
    }

    /// Two clients connect at once while the cluster sleeps: both are held (their first bytes,
    /// a TLS ClientHello in real life, wait unread), one wake is asked for each, and once the
    /// control plane is there both go through byte for byte, the bytes sent before included.
    #[tokio::test]
    async fn held_connections_are_spliced_once_the_control_plane_answers() {
        let cp = echo_server().await;
        let (waker, mut wakes) = Waker::new("127.0.0.1".parse().unwrap(), free_range());
        let port = waker.listen("alice", None).await.unwrap();
        let at = SocketAddr::from(([127, 0, 0, 1], port));
        let mut a = TcpStream::connect(at).await.unwrap();
        let mut b = TcpStream::connect(at).await.unwrap();
        a.write_all(b"\x16hello-a").await.unwrap();
        b.write_all(b"\x16hello-b").await.unwrap();
        for _ in 0..2 {
            let woken = tokio::time::timeout(Duration::from_secs(5), wakes.recv())
                .await
                .unwrap();
            assert_eq!(woken.as_deref(), Some("alice"));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while waker.waiting("alice") < 2 {
            assert!(Instant::now() < deadline, "both connections held");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Nothing is answered while asleep.
        let mut probe = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(200), a.read(&mut probe)).await;
        assert!(
            early.is_err(),
            "a held connection gets no byte before the wake"
        );
        waker.release("alice", cp);
        let mut buf = vec![0u8; 11];
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, b"cp:\x16hello-a");
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, b"cp:\x16hello-b");
        assert_eq!(exchange(&mut a, b"more").await, b"cp:more");
        assert_eq!(waker.waiting("alice"), 0);
        // Awake: a new connection goes straight through, without a wake.
        let mut c = TcpStream::connect(at).await.unwrap();
        assert_eq!(exchange(&mut c, b"\x16late").await, b"cp:\x16late");
        assert!(wakes.try_recv().is_err());
    }

    /// Listening again after a wake holds again; the port is kept; a delayed close of the
    /// earlier wake does not close the new sleep's listener; a paused cluster's listener is
    /// closed and its held connections with it.
    #[tokio::test]
    async fn a_new_sleep_rearms_the_listener_and_close_drops_what_is_held() {
        let cp = echo_server().await;
        let (waker, mut wakes) = Waker::new("127.0.0.1".parse().unwrap(), free_range());
        let port = waker.listen("bob", None).await.unwrap();
        waker.release("bob", cp);
        waker.close_after("bob", Duration::from_millis(100));
        assert_eq!(waker.listen("bob", None).await.unwrap(), port);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            waker.port("bob"),
            Some(port),
            "the new sleep keeps its listener"
        );
        let at = SocketAddr::from(([127, 0, 0, 1], port));
        let mut held = TcpStream::connect(at).await.unwrap();
        held.write_all(&[TLS_HANDSHAKE]).await.unwrap();
        assert_eq!(wakes.recv().await.as_deref(), Some("bob"));
        waker.close("bob");
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), held.read(&mut buf))
            .await
            .expect("closed, not hanging");
        assert!(matches!(n, Ok(0) | Err(_)), "held connection closed: {n:?}");
        assert!(
            TcpStream::connect(at).await.is_err(),
            "nothing listens any more"
        );
    }

    /// A flood of connections to a sleeping cluster holds at most MAX_HELD; the rest are closed
    /// at once instead of pinning the manager's memory and descriptors.
    #[tokio::test]
    async fn a_flood_holds_at_most_max_held_connections() {
        let (waker, _wakes) = Waker::new("127.0.0.1".parse().unwrap(), free_range());
        let port = waker.listen("eve", None).await.unwrap();
        let at = SocketAddr::from(([127, 0, 0, 1], port));
        let mut conns = Vec::new();
        for _ in 0..MAX_HELD {
            let mut conn = TcpStream::connect(at).await.unwrap();
            conn.write_all(&[TLS_HANDSHAKE]).await.unwrap();
            conns.push(conn);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while waker.waiting("eve") < MAX_HELD {
            assert!(Instant::now() < deadline, "{} held", waker.waiting("eve"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut extra = TcpStream::connect(at).await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
            .await
            .expect("closed at once, not held");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        assert_eq!(waker.waiting("eve"), MAX_HELD);
        waker.close("eve");
    }

    /// What is no TLS client wakes nothing: a port scan (connect, close) and plain text are
    /// closed without a wake and without being held; a TLS handshake then still wakes it.
    #[tokio::test]
    async fn a_connection_without_a_tls_handshake_wakes_nothing() {
        let (waker, mut wakes) = Waker::new("127.0.0.1".parse().unwrap(), free_range());
        let port = waker.listen("frank", None).await.unwrap();
        let at = SocketAddr::from(([127, 0, 0, 1], port));
        drop(TcpStream::connect(at).await.unwrap());
        let mut plain = TcpStream::connect(at).await.unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), plain.read(&mut buf))
            .await
            .expect("closed at once, not held");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(wakes.try_recv().is_err(), "woken by no TLS client");
        assert_eq!(waker.waiting("frank"), 0);
        let mut tls = TcpStream::connect(at).await.unwrap();
        tls.write_all(&[TLS_HANDSHAKE, 3, 1]).await.unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(5), wakes.recv()).await;
        assert_eq!(woken.ok().flatten().as_deref(), Some("frank"));
        waker.close("frank");
    }

    /// A restarted manager gets the port its EndpointSlice names; two clusters never share one.
    #[tokio::test]
    async fn the_preferred_port_is_taken_when_free_and_ports_are_never_shared() {
        let (range, want) = free_ports();
        let (waker, _wakes) = Waker::new("127.0.0.1".parse().unwrap(), range.clone());
        let got = waker.listen("alice", Some(want)).await.unwrap();
        assert_eq!(got, want);
        let other = waker.listen("bob", Some(want)).await.unwrap();
        assert_ne!(other, want);
        assert!(range.contains(&other));
        // Outside the range: not used.
        let third = waker.listen("carol", Some(1)).await.unwrap();
        assert!(range.contains(&third));
    }

    #[tokio::test]
    async fn the_ready_watch_releases_and_asks_for_a_reconcile() {
        let cp = echo_server().await;
        let (waker, mut wakes) = Waker::new("127.0.0.1".parse().unwrap(), free_range());
        let port = waker.listen("dave", None).await.unwrap();
        let at = SocketAddr::from(([127, 0, 0, 1], port));
        let mut conn = TcpStream::connect(at).await.unwrap();
        conn.write_all(b"\x16x").await.unwrap();
        assert_eq!(wakes.recv().await.as_deref(), Some("dave"));
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        waker.watch_ready("dave", move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    Err("starting".to_string())
                } else {
                    Ok(cp)
                }
            }
        });
        let mut echoed = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut echoed))
            .await
            .expect("spliced")
            .unwrap();
        assert_eq!(&echoed, b"cp:\x16x");
        assert_eq!(wakes.recv().await.as_deref(), Some("dave"));
        assert!(calls.load(Ordering::SeqCst) >= 4);
    }
}
