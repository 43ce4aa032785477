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
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::bids::{BidRequest, parse_bid_id, status_json};
use crate::queue::PushError;

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
/// - `GET /metrics`: Prometheus text;
/// - `GET /healthz`: `ok`.
async fn route(request: Request<Incoming>, shared: Arc<Shared>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    match (request.method(), path.as_str()) {
        (&Method::POST, "/v1/bids") => post_bid(request, &shared).await,
        (&Method::GET, path) if path.starts_with("/v1/bids/") => {
            bid_status(&shared, &path["/v1/bids/".len()..])
        }
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
