//! The server on a real loopback socket: the connection limit, and the real `openai` Python
//! client (tests/openai_client.py) chatting, streaming and listing models.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use common::{app, Setup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// A running server; dropping it stops the server.
struct Running {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn start(router: Router, max_connections: usize) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("bound address");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(infinihip_server::serve(listener, router, max_connections, async move {
        let _ = stopped.await;
    }));
    Running { addr, _stop: stop }
}

/// Sends `GET /health` on `stream` (kept alive) and reads the response.
async fn health(stream: &mut TcpStream) -> String {
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n").await.expect("write");
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    // The body is small and fixed: read until it is complete.
    while !String::from_utf8_lossy(&response).ends_with("\"ok\"}") {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "the server closed the connection: {}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_wait_for_a_free_slot() {
    let server = start(app(&Setup::default()), 1).await;
    let mut first = TcpStream::connect(server.addr).await.expect("connect");
    assert!(health(&mut first).await.starts_with("HTTP/1.1 200"));
    // The first connection stays open (keep-alive), so the second is not served...
    let mut second = TcpStream::connect(server.addr).await.expect("the kernel accepts into its backlog");
    let waiting = tokio::time::timeout(Duration::from_millis(500), health(&mut second)).await;
    assert!(waiting.is_err(), "a connection past the limit was served");
    // ...until the first closes.
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(10), health(&mut second)).await;
    assert!(answer.expect("served once a slot is free").starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_client_works_against_the_server() {
    let python = std::process::Command::new("python3").args(["-c", "import openai"]).output();
    match python {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the `openai` Python package is needed: python3 -m pip install openai ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("python3 is needed to run the openai client test: {e}"),
    }
    let server = start(app(&Setup { api_key: Some("test-key".into()), ..Setup::default() }), 64).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let base_url = format!("http://{}/v1", server.addr);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .env("INFINIHIP_BASE_URL", base_url)
            .env("INFINIHIP_API_KEY", "test-key")
            .output()
            .expect("python3 runs")
    })
    .await
    .expect("the script finishes");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the openai client script failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
