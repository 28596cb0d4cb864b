//! A loopback HTTP upstream that answers every request with the body the
//! current fuzz input sets, so provider replies are fuzzed through the
//! client's public API: the same HTTP, SSE and JSON decoding a real call
//! takes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};

use dspex_client::config::RawProvider;
use dspex_client::{Client, ClientConfig, Message, ProviderConfig, RequestOptions};
use futures::StreamExt;

/// The reply the upstream sends next: content type and body.
type Reply = Arc<Mutex<(&'static str, Vec<u8>)>>;

struct Upstream {
    runtime: tokio::runtime::Runtime,
    client: Client,
    reply: Reply,
}

fn serve(stream: TcpStream, reply: &Reply) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    stream.set_nodelay(true)?;
    let mut writer = stream;
    loop {
        // The request line and headers; only Content-Length matters.
        let mut length = 0usize;
        let mut line = String::new();
        let mut first = true;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" && !first {
                break;
            }
            first = false;
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let (content_type, body) = reply.lock().expect("reply lock").clone();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        // One write: a head and body written apart meet Nagle's algorithm
        // and the client's delayed ACK, 40 ms per call.
        let mut reply = head.into_bytes();
        reply.extend_from_slice(&body);
        writer.write_all(&reply)?;
        writer.flush()?;
    }
}

fn upstream(kind: &'static str) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let address = listener.local_addr().expect("local address");
    let reply: Reply = Arc::new(Mutex::new(("application/json", Vec::new())));
    let served = Arc::clone(&reply);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let reply = Arc::clone(&served);
            std::thread::spawn(move || serve(stream, &reply));
        }
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let raw = RawProvider {
        kind: Some(kind.into()),
        base_url: Some(format!("http://{address}/v1")),
        api_key_env: Some("FUZZ_KEY".into()),
        model: Some("fuzz-model".into()),
        // One attempt per input, and a breaker that never opens: every input
        // must reach the decoder.
        max_retries: Some(0),
        circuit_breaker: Some(dspex_client::config::RawBreaker {
            failure_threshold: Some(1_000_000_000),
            ..Default::default()
        }),
        default_max_tokens: Some(16),
        ..RawProvider::default()
    };
    let config = ProviderConfig::validate("fuzz", &raw, None, &|_| Some("sk-fuzz".into()))
        .expect("provider config");
    let client = runtime.block_on(async {
        let client = Client::from_config(&ClientConfig::default())
            .await
            .expect("client");
        client.add_provider(config).await.expect("provider");
        client
    });
    Upstream {
        runtime,
        client,
        reply,
    }
}

/// Sends one chat through a `kind` provider whose upstream answers `body`:
/// a complete JSON reply, or with `stream` an event stream, read to its end.
pub fn call(kind: &'static str, stream: bool, body: &[u8]) {
    static OPENAI: OnceLock<Upstream> = OnceLock::new();
    static ANTHROPIC: OnceLock<Upstream> = OnceLock::new();
    let cell = if kind == "openai" {
        &OPENAI
    } else {
        &ANTHROPIC
    };
    let upstream = cell.get_or_init(|| upstream(kind));
    let content_type = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    *upstream.reply.lock().expect("reply lock") = (content_type, body.to_vec());
    let client = &upstream.client;
    upstream.runtime.block_on(async {
        let messages = vec![Message::user("hello")];
        if stream {
            match client
                .request_stream("fuzz", messages, RequestOptions::new())
                .await
            {
                Ok(mut events) => {
                    while let Some(event) = events.next().await {
                        if let Err(error) = event {
                            assert!(!error.to_string().is_empty(), "an error says what failed");
                            break;
                        }
                    }
                }
                Err(error) => assert!(!error.to_string().is_empty(), "an error says what failed"),
            }
        } else {
            match client
                .request("fuzz", messages, RequestOptions::new())
                .await
            {
                Ok(response) => assert!(!response.choices.is_empty(), "a reply has a choice"),
                Err(error) => assert!(!error.to_string().is_empty(), "an error says what failed"),
            }
        }
    });
}
