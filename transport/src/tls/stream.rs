//! A TLS server stream that holds no buffer while its connection is idle, over rustls's
//! unbuffered API.
//!
//! rustls's buffered connection keeps a 4 KiB receive buffer for the connection's whole life
//! (it shrinks back to 4 KiB, never below); with a hundred thousand idle watchers that buffer
//! alone is 400 MiB. Here the caller's side owns the buffers:
//!
//! - received TLS bytes are read into a stack chunk and kept only while a record (or a
//!   handshake flight) is incomplete — an idle connection holds none;
//! - decrypted bytes the reader has not taken yet, and encrypted bytes the socket has not
//!   taken yet, are kept only until taken.
//!
//! Errors are those of rustls: a handshake or record failure is `InvalidData` (after the
//! alert rustls queued for the peer was offered to the socket), an end of input before the
//! peer's `close_notify` is `UnexpectedEof`. At most [`INCOMING_MAX`] received bytes wait
//! for one record or handshake message; more is `InvalidData`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError, ReadTraffic,
    UnbufferedStatus, WriteTraffic,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from the socket per read call.
const READ_CHUNK: usize = 4096;
/// Most received bytes held while rustls waits for the rest of a record or handshake
/// message: a handshake message of up to 64 KiB (rustls's own bound) across records, or one
/// record of 16 KiB plus expansion.
pub const INCOMING_MAX: usize = 0xffff + 18_437;
/// Most plaintext bytes encrypted per write call (one full record).
const WRITE_CHUNK: usize = 16 * 1024;
/// Bytes a TLS 1.3 record adds to its plaintext (header, content type, AEAD tag), with room
/// to spare.
const RECORD_OVERHEAD: usize = 64;

/// A server-side TLS stream over `IO` (see the module documentation).
pub struct ServerStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// Received TLS bytes rustls has not consumed yet.
    incoming: Vec<u8>,
    /// Decrypted bytes not yet read, from `plain_taken` on.
    plain: Vec<u8>,
    plain_taken: usize,
    /// Encrypted bytes not yet written to `io`, from `out_sent` on.
    out: Vec<u8>,
    out_sent: usize,
    /// The socket reported the end of its input.
    eof: bool,
    /// The peer's `close_notify` arrived.
    peer_closed: bool,
    /// Our `close_notify` is queued.
    closing: bool,
    /// A fatal TLS error; every later call returns it.
    failed: Option<rustls::Error>,
}

/// What rustls is asked to do once it reaches a state where traffic may be written.
#[derive(Clone, Copy)]
enum Action<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

/// Where [`ServerStream::process`] stopped.
enum Step {
    /// Nothing more to do with the bytes received so far: more input is needed (to finish
    /// the handshake, or for the next record).
    NeedInput,
    /// This many bytes of the `Encrypt` action were encrypted into `out`.
    Encrypted(usize),
    /// Both sides sent `close_notify`.
    Closed,
}

/// Handshakes `io` as a TLS server with `config`; resolves once the handshake is complete
/// and the server's last flight was written.
pub async fn accept<IO>(config: Arc<ServerConfig>, io: IO) -> io::Result<ServerStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(invalid_data)?;
    let mut stream = ServerStream {
        io,
        conn,
        incoming: Vec::new(),
        plain: Vec::new(),
        plain_taken: 0,
        out: Vec::new(),
        out_sent: 0,
        eof: false,
        peer_closed: false,
        closing: false,
        failed: None,
    };
    std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl<IO> ServerStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// The client's certificate chain, if it presented one.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// The ALPN protocol agreed in the handshake.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Bytes of buffer capacity the stream holds now (received, decrypted and encrypted
    /// bytes not yet passed on): zero while the connection is idle.
    pub fn buffered_capacity(&self) -> usize {
        self.incoming.capacity() + self.plain.capacity() + self.out.capacity()
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let step = match self.process(Action::Nothing) {
                Ok(step) => step,
                Err(e) => {
                    // The alert rustls queued goes out if the socket takes it now.
                    let _ = self.poll_send(cx);
                    return Poll::Ready(Err(e));
                }
            };
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if matches!(step, Step::Closed) || self.peer_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed during the TLS handshake",
                )));
            }
            if ready!(self.poll_receive(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "TLS handshake eof",
                )));
            }
        }
    }

    /// Runs rustls over the received bytes until it needs more input or `action` is done:
    /// decrypted application data is appended to `plain`, TLS bytes to send to `out`.
    fn process(&mut self, action: Action<'_>) -> io::Result<Step> {
        if let Some(e) = &self.failed {
            return Err(invalid_data(e.clone()));
        }
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming[..]);
            let step = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    read_records(&mut traffic, &mut self.plain).map(|()| None)
                }
                Ok(ConnectionState::ReadEarlyData(mut early)) => {
                    // The configuration accepts no early data; none is passed on.
                    while early.next_record().is_some() {}
                    Ok(None)
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut self.out, &mut encode);
                    Ok(None)
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // Everything encoded so far is in `out`, written before anything later.
                    transmit.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Step::NeedInput)),
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => Ok(Some(Step::Closed)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    write_traffic(&mut traffic, action, &mut self.out).map(Some)
                }
                Ok(_) => Err(rustls::Error::General(
                    "a TLS connection state this stream does not know".into(),
                )),
            };
            self.discard(discard);
            match step {
                Ok(Some(step)) => return Ok(step),
                Ok(None) => {}
                Err(e) => {
                    self.failed = Some(e.clone());
                    self.queue_alert();
                    return Err(invalid_data(e));
                }
            }
        }
    }

    /// After a fatal error: moves what rustls queued for the peer (the alert) into `out`.
    /// rustls is called only while it has something queued, so it never deframes the bad
    /// bytes again.
    fn queue_alert(&mut self) {
        while self.conn.wants_write() {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming[..]);
            let encoded = match state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut self.out, &mut encode);
                    true
                }
                _ => false,
            };
            self.discard(discard);
            if !encoded {
                return;
            }
        }
    }

    /// Drops the first `count` received bytes (consumed by rustls); the buffer is freed
    /// once empty.
    fn discard(&mut self, count: usize) {
        if count >= self.incoming.len() {
            self.incoming = Vec::new();
        } else if count > 0 {
            self.incoming.drain(..count);
        }
    }

    /// Reads more TLS bytes from the socket; `Ok(0)` is the end of its input.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let room = INCOMING_MAX.saturating_sub(self.incoming.len());
        if room == 0 {
            let e = rustls::Error::General("TLS message too large".into());
            self.failed = Some(e.clone());
            return Poll::Ready(Err(invalid_data(e)));
        }
        let mut chunk = [0_u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut chunk[..room.min(READ_CHUNK)]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let read = buf.filled().len();
        if read == 0 {
            self.eof = true;
        }
        self.incoming.extend_from_slice(buf.filled());
        Poll::Ready(Ok(read))
    }

    /// Writes `out` to the socket until it is empty (then freed).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_sent < self.out.len() {
            let written =
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_sent..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_sent += written;
        }
        self.out = Vec::new();
        self.out_sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Moves decrypted bytes into `buf`; `false` if there are none.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let pending = &self.plain[self.plain_taken..];
        if pending.is_empty() {
            return false;
        }
        let count = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..count]);
        self.plain_taken += count;
        if self.plain_taken == self.plain.len() {
            self.plain = Vec::new();
            self.plain_taken = 0;
        }
        true
    }
}

/// Encodes what `encode` holds at the end of `out`, growing it to the size rustls asks for.
/// Appends the application data of every received record to `plain`.
fn read_records(
    traffic: &mut ReadTraffic<'_, '_, ServerConnectionData>,
    plain: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    while let Some(record) = traffic.next_record() {
        plain.extend_from_slice(record?.payload);
    }
    Ok(())
}

/// Does `action` once rustls may write: encrypts (at most `WRITE_CHUNK` of) the data or
/// queues close_notify into `out`; nothing is left in `out` on failure.
fn write_traffic(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    action: Action<'_>,
    out: &mut Vec<u8>,
) -> Result<Step, rustls::Error> {
    let start = out.len();
    let encrypted = match action {
        Action::Nothing => Ok(Step::NeedInput),
        Action::Encrypt(data) => {
            let data = &data[..data.len().min(WRITE_CHUNK)];
            encrypt_into(out, data.len(), |buf| traffic.encrypt(data, buf))
                .map(|()| Step::Encrypted(data.len()))
        }
        Action::CloseNotify => {
            encrypt_into(out, 0, |buf| traffic.queue_close_notify(buf)).map(|()| Step::NeedInput)
        }
    };
    encrypted.map_err(|e| {
        out.truncate(start);
        rustls::Error::General(format!("encrypting: {e}"))
    })
}

fn encode_into(out: &mut Vec<u8>, encode: &mut EncodeTlsData<'_, ServerConnectionData>) {
    let start = out.len();
    if let Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) =
        encode.encode(&mut [])
    {
        out.resize(start + required_size, 0);
        let written = encode.encode(&mut out[start..]).unwrap_or(0);
        out.truncate(start + written);
    }
}

/// Runs `encrypt` into the spare end of `out`, sized for `plain` bytes in records of at most
/// 16 KiB (grown to the size rustls asks for if that is short).
fn encrypt_into(
    out: &mut Vec<u8>,
    plain: usize,
    mut encrypt: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), EncryptError> {
    let start = out.len();
    out.resize(
        start + plain + (plain / WRITE_CHUNK + 1) * RECORD_OVERHEAD,
        0,
    );
    let written = match encrypt(&mut out[start..]) {
        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
            out.resize(start + required_size, 0);
            encrypt(&mut out[start..])?
        }
        other => other?,
    };
    out.truncate(start + written);
    Ok(())
}

fn invalid_data(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<IO> AsyncRead for ServerStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if buf.remaining() == 0 || this.take_plain(buf) {
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let step = match this.process(Action::Nothing) {
                Ok(step) => step,
                Err(e) => {
                    // A last try to get the alert out; the connection is done either way.
                    let _ = this.poll_send(cx);
                    return Poll::Ready(Err(e));
                }
            };
            // Whatever else rustls queued on the way (a key update) goes out with the next
            // write or flush: sending it from here would register the reading task for the
            // socket's write readiness in place of a writing task waiting on it (a split
            // stream reads and writes from two tasks), which would then never be woken.
            if !this.plain.is_empty() || this.peer_closed {
                continue;
            }
            if matches!(step, Step::Closed) {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            ready!(this.poll_receive(cx))?;
        }
    }
}

impl<IO> AsyncWrite for ServerStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // What was encrypted before goes out first: one write's worth is held at most.
        ready!(this.poll_send(cx))?;
        match this.process(Action::Encrypt(data)) {
            Ok(Step::Encrypted(count)) => {
                if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(count))
            }
            Ok(Step::NeedInput | Step::Closed) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection does not take application data",
            ))),
            Err(e) => {
                let _ = this.poll_send(cx);
                Poll::Ready(Err(e))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing && this.failed.is_none() {
            this.closing = true;
            // A connection that cannot send close_notify any more just closes.
            let _ = this.process(Action::CloseNotify);
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
