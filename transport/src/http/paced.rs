//! The HTTPS port's TCP socket, and how a stream connection (WebSocket, SSE) keeps what the
//! kernel holds for a slow reader small, so that back-pressure reaches the subscriber's
//! outbox, where price updates conflate.
//!
//! A socket that carries a price stream is *paced* ([`Pacing::enable`]): the kernel may hold
//! at most `stream_unsent_bytes_max` bytes that it has not sent yet (`TCP_NOTSENT_LOWAT`;
//! what a slow reader's receive window has taken is the reader's own buffer), and a flush of
//! the socket completes only once everything written was handed to the kernel *and* the
//! kernel is below that bound again. The kernel says so with `poll(2)`: a TCP socket polls
//! writable only while it holds less than *half* its `TCP_NOTSENT_LOWAT` unsent
//! (`tcp_poll`), so after such an answer the socket may be written another half of the
//! bound and still hold less than the bound — a flush asks the kernel only once the bytes
//! written since its last "writable" exceed half the bound (one system call per flush
//! saved for a reader that keeps up, who is sent a few hundred bytes per flush). The
//! stream writers take their next batch from the outbox only after such a flush, so
//! everything newer waits — conflated — in the outbox instead of queueing in the kernel,
//! and the next batch is the latest state when the reader can take it.
//!
//! Sockets that carry no stream (the admin API, bidders) are not paced: their writes and
//! flushes are the socket's own.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, ready};

use rustix::event::{PollFd, PollFlags, Timespec};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The pacing of one TCP connection, shared by its socket and the stream tasks it serves.
#[derive(Debug, Default)]
pub(super) struct Pacing {
    /// The bound on bytes the kernel holds unsent, once the connection carries a stream
    /// (0: not paced).
    bound: AtomicU32,
    /// Set when a flush completed with the kernel below the bound, cleared by every write.
    drained: AtomicBool,
    /// Woken when `drained` is set.
    drained_notify: Notify,
}

impl Pacing {
    /// Paces the connection from now on: at most `bound` bytes unsent in the kernel.
    pub(super) fn enable(&self, bound: usize) {
        let bound = u32::try_from(bound.max(1)).unwrap_or(u32::MAX);
        // Ordering: Relaxed; the socket applies the value at its next write or flush, and
        // nothing else depends on when it sees it.
        self.bound.store(bound, Ordering::Relaxed);
    }

    /// Resolves once a flush completed after the last write with the kernel below the
    /// bound (at once if that is so now): what was written has reached the kernel and the
    /// kernel can take more without the reader falling further behind.
    pub(super) async fn drained(&self) {
        loop {
            let notified = self.drained_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Ordering: Acquire pairs with the Release in `set_drained`; the flag guards no
            // data, but a flush after the check must either be seen or notify.
            if self.drained.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Marks the connection as having bytes on their way (a chunk handed to the HTTP
    /// layer): [`Pacing::drained`] waits for the flush that follows.
    pub(super) fn undrain(&self) {
        // Ordering: Release; see `drained`.
        self.drained.store(false, Ordering::Release);
    }

    fn set_drained(&self) {
        // Ordering: Release; see `drained`.
        self.drained.store(true, Ordering::Release);
        self.drained_notify.notify_waiters();
    }
}

/// An accepted TCP connection of the HTTPS port, paced once its [`Pacing`] is enabled.
#[derive(Debug)]
pub(super) struct PacedTcp {
    tcp: TcpStream,
    pacing: Arc<Pacing>,
    /// The bound set on the socket (`TCP_NOTSENT_LOWAT`); 0: none yet.
    applied: u32,
    /// Bytes written since the kernel last reported the socket writable under the bound
    /// in force (`None`: not asked since the bound was set).
    unchecked: Option<usize>,
    /// How often the kernel answered "writable" to a flush (tests count them).
    #[cfg(test)]
    kernel_checks: u64,
}

impl PacedTcp {
    /// `tcp`, paced as `pacing` says.
    pub(super) fn new(tcp: TcpStream, pacing: Arc<Pacing>) -> PacedTcp {
        PacedTcp {
            tcp,
            pacing,
            applied: 0,
            unchecked: None,
            #[cfg(test)]
            kernel_checks: 0,
        }
    }

    /// The bound in force, set on the socket on first sight; 0: not paced.
    fn bound(&mut self) -> u32 {
        // Ordering: Relaxed; see `Pacing::enable`.
        let bound = self.pacing.bound.load(Ordering::Relaxed);
        if bound != self.applied {
            self.applied = bound;
            self.unchecked = None;
            // Failing to set it (not Linux, say) leaves the kernel's own buffer size: the
            // flush below still waits for the socket to be writable.
            if let Err(e) = socket2::SockRef::from(&self.tcp).set_tcp_notsent_lowat(bound) {
                tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT not set");
            }
        }
        bound
    }

    /// Ready once the kernel holds less than `bound` unsent: at once while at most half
    /// the bound was written since the kernel last reported the socket writable (it held
    /// less than half then), else once it reports it writable now.
    fn poll_below_bound(&mut self, bound: u32, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let half = usize::try_from(bound / 2).unwrap_or(usize::MAX);
        if self.unchecked.is_some_and(|written| written <= half) {
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_kernel_writable(cx))?;
        self.unchecked = Some(0);
        #[cfg(test)]
        {
            self.kernel_checks += 1;
        }
        Poll::Ready(Ok(()))
    }

    /// Ready once the kernel reports the socket writable: below half its unsent bound,
    /// for a paced socket.
    fn poll_kernel_writable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            // tokio's readiness says writable until a write fails: ask the kernel. A "no"
            // clears the readiness, so the next poll waits for the kernel's wake-up, which
            // `poll(2)` asked for (it marks the socket as wanting space).
            match self
                .tcp
                .try_io(Interest::WRITABLE, || kernel_writable(&self.tcp))
            {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// `Ok` if the kernel reports `tcp` writable (or failed: the next write says how),
/// `WouldBlock` if not.
fn kernel_writable(tcp: &TcpStream) -> io::Result<()> {
    let mut fds = [PollFd::new(tcp, PollFlags::OUT)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&now)).map_err(io::Error::from)?;
    if fds[0]
        .revents()
        .intersects(PollFlags::OUT | PollFlags::ERR | PollFlags::HUP)
    {
        Ok(())
    } else {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl AsyncRead for PacedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for PacedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.bound() != 0 {
            this.pacing.undrain();
        }
        let written = ready!(Pin::new(&mut this.tcp).poll_write(cx, data))?;
        if let Some(unchecked) = &mut this.unchecked {
            *unchecked = unchecked.saturating_add(written);
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.tcp).poll_flush(cx))?;
        let bound = this.bound();
        if bound == 0 {
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_below_bound(bound, cx))?;
        this.pacing.set_drained();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};

    use super::*;

    const BOUND: usize = 4096;
    /// Generous: a flush that completes at all does so long before this.
    const FLUSH_WAIT: Duration = Duration::from_secs(10);

    /// A paced accepted socket (bound [`BOUND`]) and its peer, whose receive buffer is
    /// `peer_rcvbuf` bytes when given.
    async fn paced_pair(peer_rcvbuf: Option<u32>) -> (PacedTcp, tokio::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = peer_rcvbuf {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let (peer, accepted) = tokio::join!(
            socket.connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let pacing = Arc::new(Pacing::default());
        pacing.enable(BOUND);
        let tcp = accepted.unwrap().0;
        // As the HTTPS port sets it.
        tcp.set_nodelay(true).unwrap();
        (PacedTcp::new(tcp, pacing), peer.unwrap())
    }

    #[tokio::test]
    async fn a_reader_that_keeps_up_costs_one_kernel_check_per_half_bound_written() {
        let (mut paced, mut peer) = paced_pair(None).await;
        let (chunks, chunk) = (100_usize, [7_u8; 200]);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got.len()
        });
        for _ in 0..chunks {
            paced.write_all(&chunk).await.unwrap();
            tokio::time::timeout(FLUSH_WAIT, paced.flush())
                .await
                .expect("a reader that keeps up never holds the flush")
                .unwrap();
        }
        let checks = paced.kernel_checks;
        let most = (chunks * chunk.len()).div_ceil(BOUND / 2) as u64 + 1;
        assert!(
            (1..=most).contains(&checks),
            "the kernel asked {checks} times for {chunks} flushes (at most {most})"
        );
        paced.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), chunks * chunk.len());
    }

    #[tokio::test]
    async fn a_flush_waits_while_the_kernel_holds_the_bound_unsent() {
        let (mut paced, mut peer) = paced_pair(Some(4096)).await;
        let chunk = [7_u8; 1000];
        let mut blocked = false;
        // The peer reads nothing: once its window is full, the unsent bytes pile up in the
        // node's kernel and a flush must wait (at most 10 MB written before that).
        for _ in 0..10_000 {
            let wrote = tokio::time::timeout(Duration::from_millis(200), async {
                paced.write_all(&chunk).await?;
                paced.flush().await
            })
            .await;
            if wrote.is_err() {
                blocked = true;
                break;
            }
            wrote.unwrap().unwrap();
        }
        assert!(blocked, "a flush waits while the reader takes nothing");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
        });
        tokio::time::timeout(FLUSH_WAIT, paced.flush())
            .await
            .expect("the flush completes once the reader takes the bytes")
            .unwrap();
        tokio::time::timeout(FLUSH_WAIT, paced.pacing.drained())
            .await
            .expect("drained after the flush");
        paced.shutdown().await.unwrap();
        reader.await.unwrap();
    }
}
