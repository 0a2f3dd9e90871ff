//! What the model proxy adds to a model call: the same small streamed chat-completions answer
//! fetched straight from a loopback endpoint, and through the proxy's Unix socket (as the
//! bridge does, one connection per call). DESIGN §6 has no budget for it; a model's own
//! latency is hundreds of milliseconds, so the proxy should add well under one.
//! Run: `cargo bench -p ash-sandbox --bench proxy`.

use std::time::{Duration, Instant};

use ash_sandbox::{Api, Proxy, Upstream};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const CALLS: usize = 2_000;
const ANSWER: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hello \"}}]}\n\n\
                      data: {\"choices\":[{\"delta\":{\"content\":\"there\"}}]}\n\n\
                      data: [DONE]\n\n";

/// A loopback endpoint answering every request with [`ANSWER`] as an SSE stream.
async fn endpoint() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    let response = hyper::Response::builder()
                        .header("content-type", "text/event-stream")
                        .body(Full::new(Bytes::from_static(ANSWER.as_bytes())))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

/// One call on a new connection: handshake, POST, the whole answer read.
async fn call<S>(stream: S) -> usize
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::post("/chat/completions")
        .header("host", "bench")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"model":"m","stream":true}"#,
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .len()
}

fn report(what: &str, mut times: Vec<Duration>) -> Duration {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "{what:<28} p50 {:>8.1} µs   p95 {:>8.1} µs   p99 {:>8.1} µs",
        at(0.5).as_secs_f64() * 1e6,
        at(0.95).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6
    );
    at(0.5)
}

#[tokio::main]
async fn main() {
    let address = endpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let _proxy = Proxy::start(
        dir.path(),
        Upstream {
            base_url: format!("http://{address}"),
            key: "sk-bench".into(),
            api: Api::OpenaiChat,
        },
        None,
    )
    .unwrap();
    let socket = dir.path().join("model.sock");

    let mut direct = Vec::with_capacity(CALLS);
    let mut proxied = Vec::with_capacity(CALLS);
    for round in 0..CALLS + 200 {
        let started = Instant::now();
        assert_eq!(
            call(tokio::net::TcpStream::connect(address).await.unwrap()).await,
            ANSWER.len()
        );
        let straight = started.elapsed();
        let started = Instant::now();
        assert_eq!(
            call(tokio::net::UnixStream::connect(&socket).await.unwrap()).await,
            ANSWER.len()
        );
        let through = started.elapsed();
        if round >= 200 {
            direct.push(straight);
            proxied.push(through);
        }
    }
    println!("{CALLS} calls each, after 200 warm-up calls");
    let a = report("straight to the endpoint", direct);
    let b = report("through the model proxy", proxied);
    println!(
        "added by the proxy (p50)     {:.1} µs",
        (b.as_secs_f64() - a.as_secs_f64()) * 1e6
    );
}
