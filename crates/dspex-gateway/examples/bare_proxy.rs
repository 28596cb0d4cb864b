//! The floor for `scripts/gateway-bench`: the least an HTTP proxy on hyper
//! can do (read a request, send its body to one upstream URL over a pooled
//! connection, return the upstream's answer), with none of the gateway's
//! work (no keys, routing, decoding, client stack, analytics, metrics).
//! Measuring it beside `dspex serve` shows how much of the gateway's
//! overhead is the extra HTTP hop itself on this machine.
//!
//! ```text
//! cargo run --release -p dspex-gateway --example bare_proxy -- 127.0.0.1:14091 http://127.0.0.1:18189/v1/chat/completions
//! ```
#![allow(clippy::print_stderr)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

// The allocator `dspex serve` uses, so the two differ only in their work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Upstream = Client<HttpConnector, Full<Bytes>>;

async fn forward(
    client: Upstream,
    upstream: hyper::Uri,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut outgoing = Request::post(upstream)
        .body(Full::new(body))
        .unwrap_or_default();
    for name in [hyper::header::AUTHORIZATION, hyper::header::CONTENT_TYPE] {
        if let Some(value) = parts.headers.get(&name) {
            outgoing.headers_mut().insert(name, value.clone());
        }
    }
    let answer = match client.request(outgoing).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::from_parts(parts, Full::new(body))
        }
        Err(_) => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"upstream failed")));
            *response.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            response
        }
    };
    Ok(answer)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:14091".into())
        .parse()?;
    let upstream: hyper::Uri = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:18189/v1/chat/completions".into())
        .parse()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new()).build(connector);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("bare proxy on {listen} -> {upstream}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                forward(client.clone(), upstream.clone(), request)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
