//! The PROXY protocol (HAProxy's spec, v1 text and v2 binary): the header ringlb
//! sends to nodes so they see the real client address, and the header it accepts
//! from trusted L4 proxies in front of it (parsed with the `ppp` crate).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{HeaderResult, PartialResult};
use tokio::net::TcpStream;

use crate::config::ProxyProtocol;

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Longest header accepted from a client: a v1 line is at most 107 bytes; a v2
/// header with its TLVs is bounded here (addresses take at most 216 bytes).
pub const MAX_HEADER: usize = 16 + 512;

/// The header for a connection from `src` to `dst` (IPv4-mapped addresses are
/// written as IPv4; a mix of families is written as IPv6).
pub fn encode(version: ProxyProtocol, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (sip, dip) = (src.ip().to_canonical(), dst.ip().to_canonical());
    let v4 = match (sip, dip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some((s, d)),
        _ => None,
    };
    let v6 = || {
        let as6 = |ip: IpAddr| match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        };
        (as6(sip), as6(dip))
    };
    match version {
        ProxyProtocol::Off => Vec::new(),
        ProxyProtocol::V1 => match v4 {
            Some((s, d)) => format!("PROXY TCP4 {s} {d} {} {}\r\n", src.port(), dst.port()),
            None => {
                let (s, d) = v6();
                format!("PROXY TCP6 {s} {d} {} {}\r\n", src.port(), dst.port())
            }
        }
        .into_bytes(),
        ProxyProtocol::V2 => {
            let mut h = Vec::with_capacity(52);
            h.extend_from_slice(&V2_SIGNATURE);
            h.push(0x21); // version 2, PROXY
            match v4 {
                Some((s, d)) => {
                    h.push(0x11); // TCP over IPv4
                    h.extend_from_slice(&12u16.to_be_bytes());
                    h.extend_from_slice(&s.octets());
                    h.extend_from_slice(&d.octets());
                }
                None => {
                    let (s, d) = v6();
                    h.push(0x21); // TCP over IPv6
                    h.extend_from_slice(&36u16.to_be_bytes());
                    h.extend_from_slice(&s.octets());
                    h.extend_from_slice(&d.octets());
                }
            }
            h.extend_from_slice(&src.port().to_be_bytes());
            h.extend_from_slice(&dst.port().to_be_bytes());
            h
        }
    }
}

/// Why a header from a trusted proxy was refused.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no complete PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("connection closed before a complete PROXY header")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

/// What a header said: the client and the address it connected to, or nothing
/// (`LOCAL` / `UNKNOWN`: the proxy's own connection, e.g. a health check).
pub type Carried = Option<(SocketAddr, SocketAddr)>;

/// Read one PROXY header (v1 or v2) from the start of `stream`, never reading
/// past it: bytes are peeked, and only the header's own bytes are consumed.
pub async fn read_header(stream: &TcpStream, within: Duration) -> Result<Carried, HeaderError> {
    tokio::time::timeout(within, read_header_inner(stream))
        .await
        .map_err(|_| HeaderError::Timeout(within))?
}

async fn read_header_inner(stream: &TcpStream) -> Result<Carried, HeaderError> {
    let mut got: Vec<u8> = Vec::with_capacity(108);
    let mut peek = [0u8; MAX_HEADER];
    loop {
        let n = stream.peek(&mut peek[..MAX_HEADER - got.len()]).await?;
        if n == 0 {
            return Err(HeaderError::Closed);
        }
        let mut all = got.clone();
        all.extend_from_slice(&peek[..n]);
        match parse(&all)? {
            Some((len, carried)) => {
                // Consume exactly the header's remaining bytes.
                let mut rest = vec![0u8; len - got.len()];
                read_exact(stream, &mut rest).await?;
                return Ok(carried);
            }
            None => {
                // Incomplete: everything peeked belongs to the header; take it
                // so the next peek waits for new bytes instead of spinning.
                let mut part = vec![0u8; n];
                read_exact(stream, &mut part).await?;
                got.extend_from_slice(&part);
                if got.len() >= MAX_HEADER {
                    return Err(HeaderError::TooLong);
                }
            }
        }
    }
}

/// Fill `buf` from a shared stream (`&TcpStream` has no `AsyncRead`).
async fn read_exact(stream: &TcpStream, buf: &mut [u8]) -> Result<(), HeaderError> {
    let mut filled = 0;
    while filled < buf.len() {
        stream.readable().await?;
        match stream.try_read(&mut buf[filled..]) {
            Ok(0) => return Err(HeaderError::Closed),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `Some((header length, carried))` for a complete header, `None` if more bytes
/// are needed.
pub fn parse(input: &[u8]) -> Result<Option<(usize, Carried)>, HeaderError> {
    // Neither signature can start otherwise: refuse at the first byte, without
    // waiting for more (a client that is not a proxy speaks its own protocol).
    let v1 = b"PROXY ";
    let plausible = input.iter().zip(V2_SIGNATURE.iter()).all(|(a, b)| a == b)
        || input.iter().zip(v1.iter()).all(|(a, b)| a == b);
    if !plausible {
        return Err(HeaderError::Malformed(format!(
            "does not start with a v1 or v2 signature (first bytes {:02x?})",
            &input[..input.len().min(8)]
        )));
    }
    let result = HeaderResult::parse(input);
    if result.is_incomplete() {
        if input.starts_with(v1) && input.len() >= 107 {
            return Err(HeaderError::Malformed(
                "v1 line longer than 107 bytes".into(),
            ));
        }
        return Ok(None);
    }
    match result {
        HeaderResult::V1(Ok(h)) => {
            let carried = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                ppp::v1::Addresses::Tcp6(a) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                ppp::v1::Addresses::Unknown => None,
            };
            Ok(Some((h.header.len(), carried)))
        }
        HeaderResult::V2(Ok(h)) => {
            let carried = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                (_, ppp::v2::Addresses::IPv6(a)) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                (_, ppp::v2::Addresses::Unspecified) => None,
                (_, ppp::v2::Addresses::Unix(_)) => {
                    return Err(HeaderError::Malformed(
                        "v2 header carries UNIX socket addresses".into(),
                    ))
                }
            };
            if h.len() > MAX_HEADER {
                return Err(HeaderError::TooLong);
            }
            Ok(Some((h.len(), carried)))
        }
        HeaderResult::V1(Err(e)) => Err(HeaderError::Malformed(format!("v1: {e}"))),
        HeaderResult::V2(Err(e)) => Err(HeaderError::Malformed(format!("v2: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_and_v2_round_trip_through_the_ppp_parser() {
        for (src, dst) in [
            ("192.0.2.7:51000", "198.51.100.1:443"),
            ("[2001:db8::7]:51000", "[2001:db8::1]:443"),
        ] {
            for v in [ProxyProtocol::V1, ProxyProtocol::V2] {
                let mut h = encode(v, sa(src), sa(dst));
                let len = h.len();
                h.extend_from_slice(b"client bytes");
                let (n, carried) = parse(&h).unwrap().unwrap();
                assert_eq!(n, len, "{v:?}");
                assert_eq!(carried, Some((sa(src), sa(dst))), "{v:?}");
            }
        }
        assert_eq!(
            encode(
                ProxyProtocol::V1,
                sa("[::ffff:10.1.2.3]:5"),
                sa("10.0.0.1:80")
            ),
            b"PROXY TCP4 10.1.2.3 10.0.0.1 5 80\r\n"
        );
        assert!(encode(ProxyProtocol::Off, sa("1.2.3.4:1"), sa("1.2.3.4:2")).is_empty());
        // Mixed families are written as IPv6.
        let h = encode(ProxyProtocol::V1, sa("10.1.2.3:5"), sa("[2001:db8::1]:80"));
        assert_eq!(h, b"PROXY TCP6 ::ffff:10.1.2.3 2001:db8::1 5 80\r\n");
    }

    #[test]
    fn partial_local_unknown_and_garbage() {
        let h = encode(ProxyProtocol::V2, sa("192.0.2.7:1"), sa("192.0.2.8:2"));
        for cut in [1, 5, 12, 15, 20, h.len() - 1] {
            assert!(parse(&h[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        assert!(parse(b"PROXY TCP4 1.2.3.4").unwrap().is_none());
        assert_eq!(parse(b"PROXY UNKNOWN\r\nhello").unwrap(), Some((15, None)));
        // The shortest header (15 bytes, less than a v2 header) is complete alone.
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap(), Some((15, None)));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(parse(&local).unwrap(), Some((16, None)));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"PROXY TCP9 x\r\n"),
            Err(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"\x16\x03\x01"),
            Err(HeaderError::Malformed(_))
        ));
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(parse(&long).is_err());
    }
}
