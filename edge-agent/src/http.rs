//! The agent's local HTTP/1.1 port (plain HTTP: it listens on the device, by default on
//! loopback): `/metrics`, `/healthz`, and what local clients use — see [`route`].

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::bids::{BidRequest, parse_bid_id, status_json};
use crate::queue::PushError;
use crate::state::state_json;

/// A response body: whole, or a stream (SSE).
pub(crate) type Body = BoxBody<Bytes, Infallible>;

/// Accepts connections until `shutdown`; each connection finishes its request in flight.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a local HTTP connection");
                    // Out of descriptors, most likely: wait rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shared = Arc::clone(&shared);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(route(request, shared).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
}

/// Largest bid request body, in bytes.
const BID_BODY_BYTES_MAX: usize = 4_096;

/// The routes (docs in the README's edge agent section):
/// - `POST /v1/bids`: queue a bid — `202` and its status once on disk; `200` and the
///   current status for a bid id already known; `400` for a bad request; `503`
///   `queue_full` when the queue is at a bound; `500` `disk` when the write failed;
/// - `GET /v1/bids/<bid id>`: the bid's status, `404` if unknown;
/// - `GET /v1/auctions`: every auction's state (a JSON array, by id);
/// - `GET /v1/auctions/<id>`: one auction's state, `404` if not held;
/// - `GET /v1/stream`: SSE — every state at once, then each change, as `event: state`
///   with `id: <auction>:<epoch>:<seq>` and the state's JSON as data;
/// - `GET /metrics`: Prometheus text;
/// - `GET /healthz`: `ok`.
async fn route(request: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    match (request.method(), path.as_str()) {
        (&Method::POST, "/v1/bids") => post_bid(request, &shared).await,
        (&Method::GET, path) if path.starts_with("/v1/bids/") => {
            bid_status(&shared, &path["/v1/bids/".len()..])
        }
        (&Method::GET, "/v1/auctions") => {
            let all: Vec<_> = shared.store.all().iter().map(|s| state_json(s)).collect();
            json(StatusCode::OK, &serde_json::Value::Array(all))
        }
        (&Method::GET, path) if path.starts_with("/v1/auctions/") => {
            let state = path["/v1/auctions/".len()..]
                .parse()
                .ok()
                .and_then(|id| shared.store.get(id));
            match state {
                Some(state) => json(StatusCode::OK, &state_json(&state)),
                None => error(
                    StatusCode::NOT_FOUND,
                    "unknown_auction",
                    "no auction with this id is held",
                ),
            }
        }
        (&Method::GET, "/v1/stream") => sse(shared),
        (&Method::GET, "/metrics") => text(StatusCode::OK, shared.prometheus.render()),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".to_owned()),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such route"),
    }
}

async fn post_bid(request: Request<Incoming>, shared: &Arc<Shared>) -> Response<Body> {
    let body = match Limited::new(request.into_body(), BID_BODY_BYTES_MAX)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("reading the body: {e}"),
            );
        }
    };
    let bid = match BidRequest::parse(&body) {
        Ok(bid) => bid,
        Err(why) => {
            metrics::counter!(crate::metrics::BIDS_REFUSED, "reason" => "invalid").increment(1);
            return error(StatusCode::BAD_REQUEST, "invalid", &why);
        }
    };
    let bid_id = bid.bid_id;
    match shared.bids.submit(bid).await {
        Ok(status) => json(StatusCode::ACCEPTED, &status_json(bid_id, &status)),
        Err(PushError::Known(status)) => json(StatusCode::OK, &status_json(bid_id, &status)),
        Err(full @ PushError::Full { .. }) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_full",
            &full.to_string(),
        ),
        Err(e @ PushError::Io(_)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "disk", &e.to_string())
        }
    }
}

fn bid_status(shared: &Shared, hex: &str) -> Response<Body> {
    let bid_id = match parse_bid_id(hex) {
        Ok(bid_id) => bid_id,
        Err(why) => return error(StatusCode::BAD_REQUEST, "invalid", &why),
    };
    match shared.bids.lock().status(bid_id) {
        Some(status) => json(StatusCode::OK, &status_json(bid_id, &status)),
        None => error(
            StatusCode::NOT_FOUND,
            "unknown_bid",
            "no bid with this id is known",
        ),
    }
}

/// Events an SSE connection may have waiting to be written; a reader slower than this
/// misses updates, then gets every state again (`Lagged` below).
const SSE_EVENTS_MAX: usize = 256;

/// The SSE stream: every state, then changes; ends at shutdown or when the reader leaves.
fn sse(shared: Arc<Shared>) -> Response<Body> {
    let (events, receiver) = mpsc::channel::<Bytes>(SSE_EVENTS_MAX);
    tokio::spawn(async move {
        let mut updates = shared.store.subscribe();
        let mut all = shared.store.all();
        loop {
            for state in all.drain(..) {
                if events.send(sse_event(&state)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = events.closed() => return,
                update = updates.recv() => match update {
                    Ok(state) => all.push(state),
                    Err(RecvError::Lagged(_)) => all = shared.store.all(),
                    Err(RecvError::Closed) => return,
                },
            }
        }
    });
    let body = SseBody(receiver).boxed();
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    response
}

fn sse_event(state: &gavel_edge_proto::AuctionState) -> Bytes {
    Bytes::from(format!(
        "event: state\nid: {}:{}:{}\ndata: {}\n\n",
        state.auction_id,
        state.epoch,
        state.seq,
        state_json(state)
    ))
}

/// The SSE body: frames from a bounded channel; it ends when the sender does.
struct SseBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|bytes| bytes.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// An error as JSON: `{"error": code, "message": message}`.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({ "error": code, "message": message }),
    )
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};

    use super::*;
    use crate::state::tests::state;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sse_sends_every_state_then_changes_and_get_reads_the_current_state() {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::for_tests(dir.path(), |_| {});
        shared.store.apply(state(3, 110));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            Arc::clone(&shared),
            shared.shutdown.clone(),
        ));
        let reader = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(20)))
                .unwrap();
            write!(stream, "GET /v1/stream HTTP/1.1\r\nhost: t\r\n\r\n").unwrap();
            let mut lines = BufReader::new(stream).lines().map_while(Result::ok);
            let head: Vec<String> = lines.by_ref().take_while(|l| !l.is_empty()).collect();
            let data: Vec<String> = lines
                .filter(|l| l.starts_with("data: ") || l.starts_with("id: "))
                .take(4)
                .collect();
            (head, data)
        });
        // Once the reader has the first event, a change follows it.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        shared.store.apply(state(4, 120));
        let (head, data) = reader.await.unwrap();
        assert!(head[0].contains("200"), "{head:?}");
        assert!(
            head.iter()
                .any(|h| h.eq_ignore_ascii_case("content-type: text/event-stream")),
            "{head:?}"
        );
        assert_eq!(data[0], "id: 7:1:3");
        assert!(data[1].contains(r#""price":110"#), "{data:?}");
        assert_eq!(data[2], "id: 7:1:4");
        assert!(data[3].contains(r#""price":120"#), "{data:?}");
        let get = move |path: &str| {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
            )
            .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        };
        let one = tokio::task::spawn_blocking(move || {
            (
                get("/v1/auctions/7"),
                get("/v1/auctions"),
                get("/v1/auctions/9"),
            )
        });
        let (one, all, missing) = one.await.unwrap();
        assert!(
            one.starts_with("HTTP/1.1 200") && one.contains(r#""seq":4"#),
            "{one}"
        );
        assert!(all.contains(r#"[{"auction_id":7"#), "{all}");
        assert!(
            missing.starts_with("HTTP/1.1 404") && missing.contains("unknown_auction"),
            "{missing}"
        );
        shared.shutdown.cancel();
    }
}
