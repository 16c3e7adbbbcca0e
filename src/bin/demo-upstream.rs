//! A tiny HTTP/1.1 upstream for `make run`, the tests and the load benchmarks: it answers every
//! request with a short text naming itself and echoing the request line and headers, keeps
//! connections alive, answers `/up` with `OK` (the health-check path), `/bytes/<n>` with n
//! bytes (slow-reader tests), `/sleep/<ms>` after ms milliseconds (timeouts, draining), and
//! echoes the bytes of an upgraded connection (WebSocket tests).
//!
//! Usage: `demo-upstream [--listen 127.0.0.1:3000] [--name app]`

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::io::Result<()> {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 3000).into();
    let mut name = String::from("demo");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--listen", Some(v)) => {
                listen = v
                    .parse()
                    .map_err(|e| std::io::Error::other(format!("--listen {v}: {e}")))?
            }
            ("--name", Some(v)) => name = v,
            _ => {
                eprintln!("usage: demo-upstream [--listen IP:PORT] [--name NAME]");
                std::process::exit(2);
            }
        }
    }
    let listener = TcpListener::bind(listen).await?;
    eprintln!("demo-upstream {name} listening on http://{listen}");
    let name: &'static str = Box::leak(name.into_boxed_str());
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = serve(stream, name).await;
        });
    }
}

async fn serve(stream: TcpStream, name: &str) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = String::new();
    loop {
        let mut head = Vec::new();
        let mut content_length = 0usize;
        let mut close = false;
        let mut upgrade = false;
        loop {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
            if lower.starts_with("upgrade:") {
                upgrade = true;
            }
            head.push(l.to_string());
        }
        if content_length > MAX_BODY {
            write
                .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await?;
            return Ok(());
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body).await?;
        let request_line = head.first().cloned().unwrap_or_default();
        if upgrade {
            // An upgrade (WebSocket): 101, then every byte is echoed back until either side
            // closes. No framing: the tests speak raw bytes through the edge.
            write
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .await?;
            let mut buf = [0u8; 4096];
            loop {
                let n = reader.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                write.write_all(&buf[..n]).await?;
            }
        }
        if let Some(ms) = sleep_asked(&request_line) {
            // `GET /sleep/<ms>`: answer after ms milliseconds (at most ten minutes).
            tokio::time::sleep(std::time::Duration::from_millis(ms.min(600_000))).await;
        }
        let connection = if close { "Connection: close\r\n" } else { "" };
        if let Some(n) = bytes_asked(&request_line) {
            // `GET /bytes/<n>`: n bytes (at most 1 GiB), written in chunks, to test slow readers.
            let n = n.min(1 << 30);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\nX-Upstream: {name}\r\n{connection}\r\n"
            );
            write.write_all(head.as_bytes()).await?;
            let chunk = [b'x'; 64 * 1024];
            let mut left = n;
            while left > 0 {
                let now = left.min(chunk.len());
                write.write_all(&chunk[..now]).await?;
                left -= now;
            }
        } else {
            let text = if request_line.starts_with("GET /up ") {
                "OK\n".to_string()
            } else {
                let mut t = format!("upstream: {name}\n");
                for h in &head {
                    t.push_str(h);
                    t.push('\n');
                }
                t
            };
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Upstream: {name}\r\n{connection}\r\n{text}",
                text.len(),
            );
            write.write_all(response.as_bytes()).await?;
        }
        if close {
            return Ok(());
        }
    }
}

/// `ms` of a `GET /sleep/<ms> HTTP/1.1` request line.
fn sleep_asked(request_line: &str) -> Option<u64> {
    let path = request_line.strip_prefix("GET /sleep/")?;
    path.split(' ').next()?.parse().ok()
}

/// Largest request body read (larger ones get 413).
const MAX_BODY: usize = 64 << 20;

/// `n` of a `GET /bytes/<n> HTTP/1.1` request line.
fn bytes_asked(request_line: &str) -> Option<usize> {
    let path = request_line.strip_prefix("GET /bytes/")?;
    path.split(' ').next()?.parse().ok()
}
