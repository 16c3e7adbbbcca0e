//! One access-log line: the fields of a request (or a refused handshake) and their JSON,
//! written by hand (no serde, no `fmt` on the usual values: a third of the instructions the
//! derive took, callgrind). `access` appends them to a buffer of the thread for its writer.

use std::fmt::Display;
use std::net::SocketAddr;

/// One request, as the proxy saw it. Written as one JSON object by `to_json`, fields in this
/// order, absent ones `null`; the time is when the line is written.
#[derive(Default)]
pub struct RequestLine<'a> {
    /// A word fixed in the code (written without escaping, like `alpn`).
    pub event: &'static str,
    /// `client` to `resumed` as `connection_json` rendered them for an earlier line of the
    /// same connection: copied instead of those five fields.
    pub connection: Option<&'a [u8]>,
    /// The client's TCP address (written without the formatting machinery)...
    pub client_inet: Option<SocketAddr>,
    /// ... or any other address (a Unix socket, an address without a port).
    pub client: Option<&'a dyn Display>,
    pub tls_name: Option<&'a str>,
    /// OpenSSL's protocol name (written without escaping).
    pub tls_version: Option<&'a str>,
    pub alpn: Option<&'static str>,
    pub resumed: Option<bool>,
    /// An HTTP method: a token, written without escaping.
    pub method: Option<&'a str>,
    pub host: Option<&'a str>,
    pub path: Option<&'a str>,
    pub status: Option<u16>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub duration_ms: Option<f64>,
    pub upstream: Option<SocketAddr>,
    pub pool: Option<&'a str>,
    pub upstream_status: Option<u16>,
    pub request_id: Option<&'a str>,
    pub refusal: Option<&'a str>,
}

impl RequestLine<'_> {
    /// The line as JSON, written by hand: a third of the instructions serde's derive takes
    /// for these fields (callgrind), and the same text.
    pub fn to_json(&self) -> String {
        let mut o = Vec::with_capacity(512);
        self.write_json(&mut o);
        // Only ASCII and the UTF-8 of `&str` fields go in: never invalid.
        String::from_utf8(o).unwrap_or_default()
    }

    /// `to_json` appended to `o`, the way the writer takes it. Each key is a constant with
    /// its punctuation (a copy of a known length, no `memcpy` call), and the fields go in one
    /// after the other: no table of values to build and walk.
    pub(crate) fn write_json(&self, o: &mut Vec<u8>) {
        o.reserve(512);
        o.extend_from_slice(b"{\"time\":\"");
        push_now(o);
        o.extend_from_slice(b"\",\"event\":");
        plain(o, Some(self.event));
        match self.connection {
            Some(rendered) => o.extend_from_slice(rendered),
            None => self.write_connection(o),
        }
        o.extend_from_slice(b",\"method\":");
        plain(o, self.method);
        o.extend_from_slice(b",\"host\":");
        string(o, self.host);
        o.extend_from_slice(b",\"path\":");
        string(o, self.path);
        o.extend_from_slice(b",\"status\":");
        uint(o, self.status.map(u64::from));
        o.extend_from_slice(b",\"bytes_in\":");
        uint(o, self.bytes_in);
        o.extend_from_slice(b",\"bytes_out\":");
        uint(o, self.bytes_out);
        o.extend_from_slice(b",\"duration_ms\":");
        millis(o, self.duration_ms);
        o.extend_from_slice(b",\"upstream\":");
        addr(o, self.upstream);
        o.extend_from_slice(b",\"pool\":");
        string(o, self.pool);
        o.extend_from_slice(b",\"upstream_status\":");
        uint(o, self.upstream_status.map(u64::from));
        o.extend_from_slice(b",\"request_id\":");
        string(o, self.request_id);
        o.extend_from_slice(b",\"refusal\":");
        string(o, self.refusal);
        o.push(b'}');
    }

    /// The fields that are the same for every request of a connection (`client` to
    /// `resumed`, each with its leading comma), as `connection` takes them: a connection's
    /// first line renders them, its later lines copy them.
    pub fn connection_json(&self) -> Box<[u8]> {
        let mut o = Vec::with_capacity(160);
        self.write_connection(&mut o);
        o.into_boxed_slice()
    }

    fn write_connection(&self, o: &mut Vec<u8>) {
        o.extend_from_slice(b",\"client\":");
        match (self.client_inet, self.client) {
            (Some(a), _) => addr(o, Some(a)),
            (None, Some(d)) => {
                use std::io::Write as _;
                // Addresses: digits, dots, colons and brackets, nothing to escape.
                o.push(b'"');
                let _ = write!(o, "{d}");
                o.push(b'"');
            }
            (None, None) => o.extend_from_slice(b"null"),
        }
        o.extend_from_slice(b",\"tls_name\":");
        string(o, self.tls_name);
        o.extend_from_slice(b",\"tls_version\":");
        plain(o, self.tls_version);
        o.extend_from_slice(b",\"alpn\":");
        plain(o, self.alpn);
        o.extend_from_slice(b",\"resumed\":");
        match self.resumed {
            Some(true) => o.extend_from_slice(b"true"),
            Some(false) => o.extend_from_slice(b"false"),
            None => o.extend_from_slice(b"null"),
        }
    }
}

/// A string that never holds a byte to escape (a word fixed in the code, an HTTP method
/// token, OpenSSL's protocol name), or `null`.
fn plain(o: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            o.push(b'"');
            o.extend_from_slice(s.as_bytes());
            o.push(b'"');
        }
        None => o.extend_from_slice(b"null"),
    }
}

/// Any string, escaped, or `null`.
fn string(o: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json::string(o, s),
        None => o.extend_from_slice(b"null"),
    }
}

fn uint(o: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => push_uint(o, n),
        None => o.extend_from_slice(b"null"),
    }
}

/// A socket address as a string: IPv4 without the formatting machinery.
fn addr(o: &mut Vec<u8>, a: Option<SocketAddr>) {
    use std::io::Write as _;
    let Some(a) = a else {
        o.extend_from_slice(b"null");
        return;
    };
    o.push(b'"');
    match a {
        SocketAddr::V4(v4) => {
            let [a, b, c, d] = v4.ip().octets();
            push_uint(o, u64::from(a));
            o.push(b'.');
            push_uint(o, u64::from(b));
            o.push(b'.');
            push_uint(o, u64::from(c));
            o.push(b'.');
            push_uint(o, u64::from(d));
            o.push(b':');
            push_uint(o, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(o, "{a}");
        }
    }
    o.push(b'"');
}

/// Milliseconds with at most three decimals; `null` when absent or not a finite duration.
fn millis(o: &mut Vec<u8>, ms: Option<f64>) {
    let Some(ms) = ms.filter(|ms| ms.is_finite() && *ms >= 0.0 && *ms < 1e15) else {
        o.extend_from_slice(b"null");
        return;
    };
    // Three decimals, as integers: float formatting is the costliest part of a line.
    let micros = (ms * 1000.0).round() as u64;
    push_uint(o, micros / 1000);
    let frac = micros % 1000;
    if frac != 0 {
        let digits = [
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ];
        let keep = if frac % 10 != 0 {
            4
        } else if frac % 100 != 0 {
            3
        } else {
            2
        };
        o.extend_from_slice(&digits[..keep]);
    }
}

/// `n` in decimal, without the formatting machinery. Most values (octets, statuses, small
/// sizes) have at most three digits: those are copied with a constant length (no `memcpy`).
fn push_uint(o: &mut Vec<u8>, mut n: u64) {
    if n < 10 {
        o.push(b'0' + n as u8);
        return;
    }
    if n < 100 {
        o.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
        return;
    }
    if n < 1000 {
        o.extend_from_slice(&[
            b'0' + (n / 100) as u8,
            b'0' + (n / 10 % 10) as u8,
            b'0' + (n % 10) as u8,
        ]);
        return;
    }
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    o.extend_from_slice(&buf[i..]);
}

/// JSON strings.
mod json {
    /// `s` as a JSON string: quote and backslash escaped, control characters as `\u00XX`; the
    /// rest of UTF-8 as it is.
    pub fn string(o: &mut Vec<u8>, s: &str) {
        o.push(b'"');
        // The usual value (a name, a path, an id) has nothing to escape: one copy.
        if !needs_escape(s.as_bytes()) {
            o.extend_from_slice(s.as_bytes());
            o.push(b'"');
            return;
        }
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f | 0x7f => "",
                _ => continue,
            };
            o.extend_from_slice(&s.as_bytes()[start..i]);
            if escape.is_empty() {
                o.extend_from_slice(format!("\\u{b:04x}").as_bytes());
            } else {
                o.extend_from_slice(escape.as_bytes());
            }
            start = i + 1;
        }
        o.extend_from_slice(&s.as_bytes()[start..]);
        o.push(b'"');
    }

    fn escaped(b: u8) -> bool {
        b < 0x20 || b == b'"' || b == b'\\' || b == 0x7f
    }

    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);

    /// Whether a byte of `w` is zero (exact as a yes/no: a false mark can only sit above a
    /// true zero byte).
    fn has_zero(w: u64) -> bool {
        w.wrapping_sub(ONES) & !w & HIGHS != 0
    }

    /// Whether any byte of `s` needs an escape: eight bytes at a time as one word (a control
    /// byte, `"`, `\\` or DEL in any of them), the last few one by one.
    fn needs_escape(s: &[u8]) -> bool {
        let mut words = s.chunks_exact(8);
        for word in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(word);
            let w = u64::from_ne_bytes(b);
            // Below 0x20: subtracting 0x20 borrows into the high bit, unless it was set.
            let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS != 0;
            if control
                || has_zero(w ^ (ONES * u64::from(b'"')))
                || has_zero(w ^ (ONES * u64::from(b'\\')))
                || has_zero(w ^ (ONES * 0x7f))
            {
                return true;
            }
        }
        words.remainder().iter().any(|&b| escaped(b))
    }
}

thread_local! {
    /// `YYYY-MM-DDTHH:MM:SS` of the last second a line was written in on this thread.
    static SECOND: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// Now, RFC 3339 in UTC with milliseconds, appended to `o`; the date and time of day are
/// formatted once per second per thread.
fn push_now(o: &mut Vec<u8>) {
    use std::fmt::Write as _;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let t = i64::try_from(secs)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            cached.1.clear();
            let _ = write!(
                cached.1,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            cached.0 = secs;
        }
        o.extend_from_slice(cached.1.as_bytes());
    });
    let ms = now.subsec_millis();
    o.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written line is valid JSON with every field, for hostile strings too.
    #[test]
    fn lines_are_json_with_every_field_in_order() {
        let client: std::net::SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let upstream: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let nasty = "/a\"b\\c\nd\te\u{1}f\u{7f}g/ü/😀";
        let line = RequestLine {
            event: "request",
            connection: None,
            client_inet: Some(client),
            client: None,
            tls_name: Some("shop.example"),
            tls_version: Some("TLSv1.3"),
            alpn: Some("h2"),
            resumed: Some(false),
            method: Some("GET"),
            host: Some("shop.example:443"),
            path: Some(nasty),
            status: Some(200),
            bytes_in: Some(0),
            bytes_out: Some(5120),
            duration_ms: Some(12.345),
            upstream: Some(upstream),
            pool: Some("app"),
            upstream_status: Some(200),
            request_id: Some("abc"),
            refusal: None,
        }
        .to_json();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["path"], nasty);
        assert_eq!(v["client"], "[2001:db8::1]:443");
        assert_eq!(v["upstream"], "127.0.0.1:8080");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 12.345);
        assert!(line.contains("\"duration_ms\":12.345,"), "{line}");
        assert_eq!(v["resumed"], false);
        assert_eq!(v["refusal"], serde_json::Value::Null);
        let keys: Vec<&str> = line
            .trim_start_matches('{')
            .split(",\"")
            .filter_map(|kv| kv.trim_start_matches('"').split_once("\":").map(|(k, _)| k))
            .collect();
        assert_eq!(keys[..3], ["time", "event", "client"]);
        assert_eq!(v.as_object().unwrap().len(), 19, "{line}");
        let time = v["time"].as_str().unwrap();
        assert_eq!(time.len(), "2026-12-01T12:00:00.123Z".len(), "{time}");
        assert!(
            time::OffsetDateTime::parse(time, &time::format_description::well_known::Rfc3339)
                .is_ok(),
            "{time}"
        );
        // Absent fields are null, never missing; a non-finite duration is null too.
        let empty = RequestLine {
            event: "handshake_refused",
            duration_ms: Some(f64::NAN),
            ..RequestLine::default()
        }
        .to_json();
        let v: serde_json::Value = serde_json::from_str(&empty).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 19, "{empty}");
        assert_eq!(v["duration_ms"], serde_json::Value::Null);
        for (ms, text) in [
            (0.0, "0"),
            (0.5, "0.5"),
            (3.0, "3"),
            (1.0004, "1"),
            (7.01, "7.01"),
        ] {
            let line = RequestLine {
                duration_ms: Some(ms),
                client_inet: Some("10.0.0.255:65535".parse().unwrap()),
                ..RequestLine::default()
            }
            .to_json();
            assert!(
                line.contains(&format!("\"duration_ms\":{text},")),
                "{ms}: {line}"
            );
            assert!(line.contains("\"client\":\"10.0.0.255:65535\""), "{line}");
        }
    }

    /// A connection's fields rendered once and copied into a later line give the same line
    /// as the fields themselves.
    #[test]
    fn rendered_connection_fields_give_the_same_line() {
        let client = "203.0.113.9:40000".parse().unwrap();
        let conn = RequestLine {
            client_inet: Some(client),
            tls_name: Some("shop.example"),
            tls_version: Some("TLSv1.3"),
            alpn: Some("h2"),
            resumed: Some(true),
            ..RequestLine::default()
        };
        let rendered = conn.connection_json();
        let request = |connection| RequestLine {
            event: "request",
            connection,
            method: Some("GET"),
            path: Some("/a"),
            status: Some(204),
            ..RequestLine::default()
        };
        let direct = RequestLine {
            client_inet: Some(client),
            tls_name: Some("shop.example"),
            tls_version: Some("TLSv1.3"),
            alpn: Some("h2"),
            resumed: Some(true),
            ..request(None)
        }
        .to_json();
        let copied = request(Some(&rendered)).to_json();
        // The same but for the time, which is when each line was written.
        let untimed = |l: &str| l[l.find("\"event\"").unwrap()..].to_owned();
        assert_eq!(untimed(&direct), untimed(&copied));
        let v: serde_json::Value = serde_json::from_str(&copied).unwrap();
        assert_eq!(v["client"], "203.0.113.9:40000");
        assert_eq!(v["resumed"], true);
        assert_eq!(v.as_object().unwrap().len(), 19, "{copied}");
    }

    /// A byte to escape is found wherever it sits: in a sixteen-byte block or in the tail.
    #[test]
    fn escapes_are_found_in_blocks_and_in_the_tail() {
        for len in [1, 15, 16, 17, 31, 32, 40] {
            for at in 0..len {
                for bad in [0u8, 0x1f, b'"', b'\\', 0x7f] {
                    let mut s = vec![b'a'; len];
                    s[at] = bad;
                    let s = String::from_utf8(s).unwrap();
                    let mut o = Vec::new();
                    json::string(&mut o, &s);
                    let back: String = serde_json::from_slice(&o)
                        .unwrap_or_else(|e| panic!("{e}: {len} {at} {bad}"));
                    assert_eq!(back, s);
                    assert!(o.len() > len + 2, "{len} {at} {bad} not escaped");
                }
            }
            for clean in ["b".repeat(len), "é😀 ~!".repeat(len)] {
                let mut o = Vec::new();
                json::string(&mut o, &clean);
                assert_eq!(o, format!("\"{clean}\"").into_bytes());
            }
        }
    }

    #[test]
    fn numbers_at_every_digit_count() {
        for n in [0, 9, 10, 99, 100, 999, 1000, 65535, 1_000_000_007, u64::MAX] {
            let mut o = Vec::new();
            push_uint(&mut o, n);
            assert_eq!(o, n.to_string().into_bytes());
        }
    }
}
