//! A minimal HTTP/1.1 server for profilers without an endpoint of their
//! own: `GET /debug/pprof/heap` and `GET /debug/pprof/profile?seconds=N`,
//! a thread per connection. Prints `listening on http://ADDR`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// Serves `GET /debug/pprof/heap` with `heap()` and
/// `GET /debug/pprof/profile?seconds=N` with `cpu(N)` on a loopback port,
/// a thread per connection, forever.
pub fn serve(heap: fn() -> Vec<u8>, cpu: fn(Duration) -> Vec<u8>) -> ! {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!(
        "listening on http://{}",
        listener.local_addr().expect("addr")
    );
    let _ = std::io::stdout().flush();
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || answer(conn, heap, cpu));
    }
    unreachable!("incoming() never ends")
}

fn answer(mut conn: TcpStream, heap: fn() -> Vec<u8>, cpu: fn(Duration) -> Vec<u8>) {
    let mut line = String::new();
    let mut reader = BufReader::new(&conn);
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let body = if path.starts_with("/debug/pprof/heap") {
        heap()
    } else if let Some(q) = path.strip_prefix("/debug/pprof/profile?seconds=") {
        cpu(Duration::from_secs(q.parse().unwrap_or(30)))
    } else {
        Vec::new()
    };
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(&body);
}
