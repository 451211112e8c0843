//! Parsing what a proxy client sends: the request head, and the target it
//! names.
//!
//! Two forms are proxied:
//! - `CONNECT host:port HTTP/1.1` opens a tunnel (HTTPS, or anything else
//!   that `curl -p` wraps in one). The proxy sees only the target.
//! - `GET http://host[:port]/path HTTP/1.1` (absolute form, any method) is
//!   forwarded: the head is rewritten to origin form (`GET /path`), `Host`
//!   is set from the URL, hop-by-hop headers (`Proxy-*`, `Connection` and
//!   what it names, `Keep-Alive`, `TE`, `Upgrade`) are dropped, and
//!   `Connection: close` is added.
//!
//! After the head, bytes are relayed unparsed in both directions (a body,
//! the response), so one client connection carries one request: with
//! `Connection: close` the origin closes after its answer, and the client
//! opens a new connection — and gets a new policy check — for the next one.
//! Anything a client sends beyond its first request can only reach the same
//! allowed `host:port`, exactly as through a tunnel.
//!
//! Everything is bounded: the head by the caller ([`MAX_HEAD_BYTES`]), the
//! number of headers by [`MAX_HEADERS`].

use sbx_api::normalize_host;

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers one request may carry.
pub const MAX_HEADERS: usize = 64;

/// Headers that concern only the hop between the client and the proxy.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "upgrade",
];

/// A complete, acceptable proxy request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRequest {
    /// `CONNECT`, `GET`, `POST`…
    pub method: String,
    /// Normalised (see [`sbx_api::normalize_host`]).
    pub host: String,
    pub port: u16,
    pub kind: RequestKind,
    /// Length of the head in the parsed buffer; what follows is payload.
    pub head_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// `CONNECT`: answer 200, then relay.
    Tunnel,
    /// Absolute-form request: send `head` (rewritten to origin form) to the
    /// origin, then relay.
    Forward { head: Vec<u8> },
}

/// Why a head cannot be proxied. Each maps to one HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The head is larger than [`MAX_HEAD_BYTES`] or has more than
    /// [`MAX_HEADERS`] headers (431).
    #[error("request head too large (at most {MAX_HEAD_BYTES} bytes and {MAX_HEADERS} headers)")]
    TooLarge,
    /// Not HTTP/1.x, or not a proxy request (400).
    #[error("{0}")]
    Malformed(String),
}

fn malformed(message: impl Into<String>) -> RequestError {
    RequestError::Malformed(message.into())
}

/// Parses the head at the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse(buf: &[u8]) -> Result<Option<ProxyRequest>, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(RequestError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooLarge),
        Err(err) => return Err(malformed(format!("malformed request: {err}"))),
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(RequestError::TooLarge);
    }
    let method = request.method.unwrap_or_default().to_owned();
    let target = request.path.unwrap_or_default();
    let version = request.version.unwrap_or(1);
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_authority(target, None)?;
        return Ok(Some(ProxyRequest {
            method: "CONNECT".into(),
            host,
            port,
            kind: RequestKind::Tunnel,
            head_len,
        }));
    }
    let rest = strip_prefix_ignore_case(target, "http://").ok_or_else(|| {
        if strip_prefix_ignore_case(target, "https://").is_some() {
            malformed("https urls go through CONNECT; this proxy forwards only http:// urls")
        } else {
            malformed(format!(
                "{target:?} is not a proxy request: send CONNECT host:port or an absolute http:// url"
            ))
        }
    })?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (host, port) = split_authority(authority, Some(80))?;
    let path = path.split('#').next().unwrap_or_default();
    let path = match path {
        "" => "/".to_owned(),
        query if query.starts_with('?') => format!("/{query}"),
        path => path.to_owned(),
    };
    let head = origin_head(&method, &path, version, authority, request.headers);
    Ok(Some(ProxyRequest {
        method,
        host,
        port,
        kind: RequestKind::Forward { head },
        head_len,
    }))
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// `host:port` (or `host` when a default port is given) → normalised host
/// and port. User info and IPv6 literals are refused.
fn split_authority(
    authority: &str,
    default_port: Option<u16>,
) -> Result<(String, u16), RequestError> {
    if authority.contains('@') {
        return Err(malformed(format!(
            "{authority:?}: user info in proxy urls is not supported"
        )));
    }
    if authority.starts_with('[') {
        return Err(malformed(format!(
            "{authority:?}: ipv6 literals are not supported"
        )));
    }
    let (host, port) = match (authority.rsplit_once(':'), default_port) {
        (Some((host, port)), _) => {
            let valid =
                !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
            match port.parse::<u16>() {
                Ok(port) if valid && port != 0 => (host, port),
                _ => return Err(malformed(format!("{authority:?} has an invalid port"))),
            }
        }
        (None, Some(port)) => (authority, port),
        (None, None) => {
            return Err(malformed(format!(
                "CONNECT target {authority:?} needs a port (host:port)"
            )))
        }
    };
    let host = normalize_host(host)
        .map_err(|why| malformed(format!("{authority:?} is not a valid host: {why}")))?;
    Ok((host, port))
}

/// The head sent to the origin (see the module docs).
fn origin_head(
    method: &str,
    path: &str,
    version: u8,
    authority: &str,
    headers: &[httparse::Header<'_>],
) -> Vec<u8> {
    // Headers that the client's `Connection` names are hop-by-hop too.
    let named: Vec<String> = headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("connection"))
        .filter_map(|header| std::str::from_utf8(header.value).ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect();
    let dropped = |name: &str| {
        let name = name.to_ascii_lowercase();
        name == "host" || HOP_BY_HOP.contains(&name.as_str()) || named.contains(&name)
    };
    let mut head =
        format!("{method} {path} HTTP/1.{version}\r\nHost: {authority}\r\n").into_bytes();
    for header in headers.iter().filter(|header| !dropped(header.name)) {
        head.extend_from_slice(header.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(header.value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(head: &str) -> ProxyRequest {
        parse(head.as_bytes())
            .unwrap_or_else(|err| panic!("{head:?}: {err}"))
            .unwrap_or_else(|| panic!("{head:?} is incomplete"))
    }

    fn forwarded(request: &ProxyRequest) -> String {
        match &request.kind {
            RequestKind::Forward { head } => String::from_utf8(head.clone()).expect("utf-8"),
            RequestKind::Tunnel => panic!("not a forward"),
        }
    }

    #[test]
    fn connect_names_host_and_port() {
        let head = "CONNECT GitHub.com.:443 HTTP/1.1\r\nHost: github.com:443\r\n\r\nTLS";
        let request = complete(head);
        assert_eq!(request.method, "CONNECT");
        assert_eq!(request.host, "github.com");
        assert_eq!(request.port, 443);
        assert_eq!(request.kind, RequestKind::Tunnel);
        assert_eq!(&head[request.head_len..], "TLS");
    }

    #[test]
    fn absolute_form_is_rewritten_to_origin_form() {
        let request = complete(
            "GET http://Pkg.Example.com:8080/simple/x?y=1#frag HTTP/1.1\r\n\
             Host: wrong.example\r\n\
             User-Agent: curl/7.88\r\n\
             Proxy-Connection: Keep-Alive\r\n\
             Proxy-Authorization: Basic eDp5\r\n\
             Connection: keep-alive, X-Hop\r\n\
             X-Hop: 1\r\n\
             Accept: */*\r\n\r\n",
        );
        assert_eq!(request.method, "GET");
        assert_eq!(request.host, "pkg.example.com");
        assert_eq!(request.port, 8080);
        assert_eq!(
            forwarded(&request),
            "GET /simple/x?y=1 HTTP/1.1\r\n\
             Host: Pkg.Example.com:8080\r\n\
             User-Agent: curl/7.88\r\n\
             Accept: */*\r\n\
             Connection: close\r\n\r\n"
        );
    }

    #[test]
    fn absolute_form_defaults_to_port_80_and_path_slash() {
        let request = complete("POST http://example.com HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc");
        assert_eq!((request.host.as_str(), request.port), ("example.com", 80));
        assert!(forwarded(&request).starts_with("POST / HTTP/1.0\r\nHost: example.com\r\n"));
        assert!(forwarded(&request).contains("Content-Length: 3\r\n"));
        let query = complete("GET http://example.com?q HTTP/1.1\r\n\r\n");
        assert!(forwarded(&query).starts_with("GET /?q HTTP/1.1\r\n"));
    }

    #[test]
    fn partial_heads_wait_for_more() {
        assert_eq!(
            parse(b"CONNECT example.com:443 HTTP/1.1\r\nHost: x"),
            Ok(None)
        );
        assert_eq!(parse(b""), Ok(None));
    }

    #[test]
    fn refuses_what_it_cannot_proxy() {
        for (head, why) in [
            ("GET / HTTP/1.1\r\n\r\n", "not a proxy request"),
            ("GET https://example.com/ HTTP/1.1\r\n\r\n", "CONNECT"),
            (
                "GET ftp://example.com/ HTTP/1.1\r\n\r\n",
                "not a proxy request",
            ),
            ("CONNECT example.com HTTP/1.1\r\n\r\n", "needs a port"),
            ("CONNECT example.com:0 HTTP/1.1\r\n\r\n", "invalid port"),
            ("CONNECT example.com:99999 HTTP/1.1\r\n\r\n", "invalid port"),
            ("CONNECT [::1]:443 HTTP/1.1\r\n\r\n", "ipv6"),
            ("CONNECT a..b:443 HTTP/1.1\r\n\r\n", "not a valid host"),
            ("GET http://user@example.com/ HTTP/1.1\r\n\r\n", "user info"),
            (
                "GET http://allowed.test@denied.test/ HTTP/1.1\r\n\r\n",
                "user info",
            ),
            ("GET http:///x HTTP/1.1\r\n\r\n", "not a valid host"),
            ("GET http://exa mple.com/ HTTP/1.1\r\n\r\n", "malformed"),
            ("BAD\x01 x HTTP/1.1\r\n\r\n", "malformed"),
        ] {
            match parse(head.as_bytes()) {
                Err(RequestError::Malformed(message)) => {
                    assert!(message.contains(why), "{head:?}: {message}")
                }
                other => panic!("{head:?}: {other:?}"),
            }
        }
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                if let Ok(Some(request)) = parse(&bytes) {
                    prop_assert!(request.head_len <= bytes.len());
                }
            }

            #[test]
            fn connect_targets_come_back_normalised(
                host in "[A-Za-z0-9]{1,10}(\\.[A-Za-z0-9]{1,10}){0,3}\\.?",
                port in 1u16..,
            ) {
                let head = format!("CONNECT {host}:{port} HTTP/1.1\r\n\r\n");
                let request = parse(head.as_bytes()).expect("valid").expect("complete");
                let expected = host.trim_end_matches('.').to_ascii_lowercase();
                prop_assert_eq!(request.host, expected);
                prop_assert_eq!(request.port, port);
                prop_assert_eq!(request.head_len, head.len());
            }
        }
    }

    #[test]
    fn bounds_head_size_and_header_count() {
        let long = format!(
            "GET http://example.com/{} HTTP/1.1\r\n",
            "a".repeat(MAX_HEAD_BYTES)
        );
        assert_eq!(parse(long.as_bytes()), Err(RequestError::TooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        let head = format!("GET http://example.com/ HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse(head.as_bytes()), Err(RequestError::TooLarge));
    }
}
