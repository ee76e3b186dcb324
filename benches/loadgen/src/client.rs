//! A minimal MQTT client over tokio TCP, built on `roost::codec`: just what
//! the load generator needs, with every write under the caller's control.

use bytes::BytesMut;
use roost::codec::{
    encode, ByteStr, ConnAck, Connect, ConnectProperties, Decoder, Packet, ProtocolVersion, QoS,
    ReasonCode, Subscribe, SubscriptionOptions,
};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU16;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

/// Largest packet the client accepts.
const MAX_PACKET: u32 = 16 * 1024 * 1024;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Client identifier.
    pub client_id: String,
    /// Protocol version.
    pub version: ProtocolVersion,
    /// Clean Session (3.1.1) / Clean Start (5.0). For 5.0, `false` also asks
    /// for a Session Expiry Interval of one hour, so the session persists.
    pub clean_start: bool,
    /// Keep alive, seconds.
    pub keep_alive: u16,
}

/// Converts a codec error into an I/O error.
fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Opens a TCP connection to `addr`, from `source` if given (any port).
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = match ip {
                IpAddr::V4(_) => TcpSocket::new_v4()?,
                IpAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reading half: a buffer and a decoder.
#[derive(Debug)]
pub struct Reader<R> {
    rd: R,
    buf: BytesMut,
    decoder: Decoder,
}

impl<R> Reader<R> {
    /// The reading half, dropping anything buffered.
    pub fn into_inner(self) -> R {
        self.rd
    }
}

impl<W> Writer<W> {
    /// The writing half, dropping anything queued.
    pub fn into_inner(self) -> W {
        self.wr
    }
}

impl<R: AsyncReadExt + Unpin> Reader<R> {
    /// Decodes the next buffered packet, if a whole one is buffered.
    pub fn try_next(&mut self) -> io::Result<Option<Packet>> {
        self.decoder.decode(&mut self.buf).map_err(invalid)
    }

    /// Reads more bytes; `Ok(0)` is the end of the stream. Cancel-safe.
    pub async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(64 * 1024);
        self.rd.read_buf(&mut self.buf).await
    }

    /// Reads until one packet is decoded; `None` at the end of the stream.
    pub async fn next(&mut self) -> io::Result<Option<Packet>> {
        loop {
            if let Some(p) = self.try_next()? {
                return Ok(Some(p));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// Writing half: packets are encoded into a buffer and written on
/// [`flush`](Self::flush), many per write.
#[derive(Debug)]
pub struct Writer<W> {
    wr: W,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl<W: AsyncWriteExt + Unpin> Writer<W> {
    /// Encodes `packet` into the write buffer.
    pub fn queue(&mut self, packet: &Packet) -> io::Result<()> {
        encode(packet, self.version, &mut self.buf).map_err(invalid)
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.wr.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes everything queued and closes the write side.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.wr.shutdown().await
    }
}

/// A connected MQTT client (after CONNACK).
#[derive(Debug)]
pub struct Conn {
    /// Reading half.
    pub reader: Reader<OwnedReadHalf>,
    /// Writing half.
    pub writer: Writer<OwnedWriteHalf>,
    /// The broker's CONNACK.
    pub connack: ConnAck,
}

/// Sends CONNECT on `stream` and waits for a successful CONNACK.
pub async fn handshake(stream: TcpStream, opts: &ConnectOptions) -> io::Result<Conn> {
    let (rd, wr) = stream.into_split();
    let (reader, writer, connack) = connect_halves(rd, wr, opts).await?;
    Ok(Conn {
        reader,
        writer,
        connack,
    })
}

/// An MQTT client over any byte stream (TLS, for one), after CONNACK.
pub type StreamConn<S> = (Reader<ReadHalf<S>>, Writer<WriteHalf<S>>, ConnAck);

/// Sends CONNECT on any byte stream and waits for a successful CONNACK.
pub async fn handshake_over<S>(stream: S, opts: &ConnectOptions) -> io::Result<StreamConn<S>>
where
    S: AsyncRead + AsyncWrite,
{
    let (rd, wr) = tokio::io::split(stream);
    connect_halves(rd, wr, opts).await
}

async fn connect_halves<R, W>(
    rd: R,
    wr: W,
    opts: &ConnectOptions,
) -> io::Result<(Reader<R>, Writer<W>, ConnAck)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = Reader {
        rd,
        buf: BytesMut::with_capacity(1024),
        decoder: Decoder::with_version(MAX_PACKET, opts.version),
    };
    let mut writer = Writer {
        wr,
        buf: BytesMut::with_capacity(256),
        version: opts.version,
    };
    let persistent_v5 = opts.version.is_v5() && !opts.clean_start;
    let mut properties = ConnectProperties::default();
    properties.session_expiry_interval = persistent_v5.then_some(3600);
    writer.queue(&Packet::Connect(Box::new(
        Connect::new(opts.version, opts.client_id.as_str())
            .with_clean_start(opts.clean_start)
            .with_keep_alive(opts.keep_alive)
            .with_properties(properties),
    )))?;
    writer.flush().await?;
    match reader.next().await? {
        Some(Packet::ConnAck(connack)) if connack.reason == ReasonCode::Success => {
            Ok((reader, writer, connack))
        }
        Some(Packet::ConnAck(c)) => Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("CONNACK refused: {:?}", c.reason),
        )),
        Some(other) => Err(invalid(format!("expected CONNACK, got {}", other.name()))),
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed before CONNACK",
        )),
    }
}

/// Connects (from `source` if given) and completes the MQTT handshake.
pub async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    opts: &ConnectOptions,
) -> io::Result<Conn> {
    handshake(tcp_connect(addr, source).await?, opts).await
}

impl Conn {
    /// The broker's Receive Maximum (65,535 when it states none).
    pub fn receive_maximum(&self) -> u16 {
        self.connack
            .properties
            .receive_maximum
            .map_or(u16::MAX, NonZeroU16::get)
    }

    /// Subscribes to `filters` at `qos` and waits for a SUBACK granting
    /// every one of them.
    pub async fn subscribe(&mut self, filters: &[String], qos: QoS) -> io::Result<()> {
        let packet_id = NonZeroU16::MIN;
        self.writer.queue(&Packet::Subscribe(Subscribe::new(
            packet_id,
            filters
                .iter()
                .map(|f| (ByteStr::from(f.as_str()), SubscriptionOptions::new(qos)))
                .collect(),
        )))?;
        self.writer.flush().await?;
        loop {
            match self.reader.next().await? {
                Some(Packet::SubAck(ack)) if ack.packet_id == packet_id => {
                    return if ack.reasons.iter().all(|r| r.code() < 0x80) {
                        Ok(())
                    } else {
                        Err(invalid(format!("SUBACK refused: {:?}", ack.reasons)))
                    };
                }
                Some(_) => continue,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed before SUBACK",
                    ))
                }
            }
        }
    }
}
