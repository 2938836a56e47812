//! Just enough HTTP/1.1 for the `http` backend and `rr --protocol http`: message
//! heads, `Content-Length` framing and keep-alive. No chunked bodies.

/// Longest message head (start line + headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;

/// What the headers of a message say about framing and the connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Framing {
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub conn_close: bool,
    pub conn_keep_alive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head, including the final CRLFCRLF.
    pub head_len: usize,
    pub method: String,
    pub path: String,
    pub http10: bool,
    pub framing: Framing,
}

impl RequestHead {
    /// Whether the connection stays open after the response.
    pub fn keep_alive(&self) -> bool {
        if self.http10 {
            self.framing.conn_keep_alive && !self.framing.conn_close
        } else {
            !self.framing.conn_close
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    pub http10: bool,
    pub framing: Framing,
}

impl ResponseHead {
    pub fn keep_alive(&self) -> bool {
        if self.http10 {
            self.framing.conn_keep_alive && !self.framing.conn_close
        } else {
            !self.framing.conn_close
        }
    }

    /// Body length, if the response can be framed without reading to EOF.
    pub fn body_len(&self, request_method_head: bool) -> Option<u64> {
        if request_method_head || self.status == 204 || self.status == 304 {
            return Some(0);
        }
        if self.framing.chunked {
            return None;
        }
        self.framing.content_length
    }
}

/// Where the head ends (index just after CRLFCRLF), if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn parse_framing<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Framing, String> {
    let mut f = Framing::default();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("bad header line {line:?}"));
        };
        if name.is_empty() || name.ends_with(' ') || name.ends_with('\t') {
            return Err(format!("bad header name in {line:?}"));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .parse()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
            if f.content_length.is_some_and(|m| m != n) {
                return Err("conflicting Content-Length headers".into());
            }
            f.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("chunked"))
            {
                f.chunked = true;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for t in value.split(',') {
                let t = t.trim();
                if t.eq_ignore_ascii_case("close") {
                    f.conn_close = true;
                } else if t.eq_ignore_ascii_case("keep-alive") {
                    f.conn_keep_alive = true;
                }
            }
        }
    }
    Ok(f)
}

fn head_lines(buf: &[u8], end: usize) -> Result<std::str::Split<'_, &'static str>, String> {
    let text = std::str::from_utf8(&buf[..end - 4]).map_err(|_| "head is not UTF-8".to_string())?;
    Ok(text.split("\r\n"))
}

fn parse_version(v: &str) -> Result<bool, String> {
    match v {
        "HTTP/1.1" => Ok(false),
        "HTTP/1.0" => Ok(true),
        _ => Err(format!("unsupported HTTP version {v:?}")),
    }
}

/// Parse a request head at the start of `buf`. `Ok(None)`: need more bytes.
pub fn parse_request(buf: &[u8]) -> Result<Option<RequestHead>, String> {
    let Some(end) = head_end(buf) else {
        if buf.len() > MAX_HEAD {
            return Err(format!("request head longer than {MAX_HEAD} bytes"));
        }
        return Ok(None);
    };
    if end > MAX_HEAD {
        return Err(format!("request head longer than {MAX_HEAD} bytes"));
    }
    let mut lines = head_lines(buf, end)?;
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!("bad request line {line:?}"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!("bad method {method:?}"));
    }
    if path.is_empty() {
        return Err("empty request target".into());
    }
    let http10 = parse_version(version)?;
    let framing = parse_framing(lines)?;
    Ok(Some(RequestHead {
        head_len: end,
        method: method.to_string(),
        path: path.to_string(),
        http10,
        framing,
    }))
}

/// Parse a response head at the start of `buf`. `Ok(None)`: need more bytes.
pub fn parse_response(buf: &[u8]) -> Result<Option<ResponseHead>, String> {
    let Some(end) = head_end(buf) else {
        if buf.len() > MAX_HEAD {
            return Err(format!("response head longer than {MAX_HEAD} bytes"));
        }
        return Ok(None);
    };
    if end > MAX_HEAD {
        return Err(format!("response head longer than {MAX_HEAD} bytes"));
    }
    let mut lines = head_lines(buf, end)?;
    let line = lines.next().unwrap_or_default();
    let mut parts = line.splitn(3, ' ');
    let (Some(version), Some(status)) = (parts.next(), parts.next()) else {
        return Err(format!("bad status line {line:?}"));
    };
    let http10 = parse_version(version)?;
    let status: u16 = match status.parse() {
        Ok(s) if (100..=599).contains(&s) => s,
        _ => return Err(format!("bad status code in {line:?}")),
    };
    let framing = parse_framing(lines)?;
    Ok(Some(ResponseHead {
        head_len: end,
        status,
        http10,
        framing,
    }))
}

/// Append a response to `out`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: &str,
    backend: &str,
    body: &str,
    with_body: bool,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: text/plain\r\nContent-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\nX-Backend: ");
    out.extend_from_slice(backend.as_bytes());
    if close {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_incomplete_then_complete() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        let r = parse_request(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\nGET")
            .expect("valid")
            .expect("complete");
        assert_eq!(r.head_len, 38);
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/healthcheck");
        assert!(r.keep_alive());
        assert_eq!(r.framing.content_length, None);
    }

    #[test]
    fn request_framing_and_connection() {
        let r = parse_request(
            b"POST /x HTTP/1.1\r\ncontent-length: 5\r\nConnection: Close\r\n\r\nhello",
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(r.framing.content_length, Some(5));
        assert!(!r.keep_alive());
        let r = parse_request(b"GET / HTTP/1.0\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(!r.keep_alive());
        let r = parse_request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(r.keep_alive());
        let r = parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(r.framing.chunked);
    }

    #[test]
    fn request_errors() {
        assert!(parse_request(b"GET /\r\n\r\n").is_err());
        assert!(parse_request(b"get / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_request(b"GET / HTTP/2\r\n\r\n").is_err());
        assert!(parse_request(b"GET / HTTP/1.1\r\nnocolon\r\n\r\n").is_err());
        assert!(parse_request(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(
            parse_request(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .is_err()
        );
        assert!(parse_request(&vec![b'a'; MAX_HEAD + 1]).is_err());
    }

    #[test]
    fn responses() {
        let mut out = Vec::new();
        write_response(&mut out, "200 OK", "node-a", "node-a\n", true, false);
        out.extend_from_slice(b"HTTP/1.1");
        let r = parse_response(&out).expect("valid").expect("complete");
        assert_eq!(r.status, 200);
        assert!(r.keep_alive());
        assert_eq!(r.body_len(false), Some(7));
        assert_eq!(r.body_len(true), Some(0));
        assert_eq!(&out[r.head_len..r.head_len + 7], b"node-a\n");

        let r = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(r.status, 503);
        assert!(!r.keep_alive());
        let r = parse_response(b"HTTP/1.1 204\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(r.body_len(false), Some(0));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(r.body_len(false), None);
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(!r.keep_alive());
        assert_eq!(r.body_len(false), None);
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), Ok(None));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 99 x\r\n\r\n").is_err());
    }
}
