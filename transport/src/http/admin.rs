//! The admin API: create, read, list and cancel auctions, JSON in and out (the canonical
//! proto3 JSON of the `gavel.v1` admin messages). `docs/admin-api.md` is its reference.
//!
//! | route | method | role | answer |
//! |---|---|---|---|
//! | `/v1/auctions` | `POST` (body `CreateAuction`) | admin | 201 `AuctionSnapshot`, once durable |
//! | `/v1/auctions?after_id=&limit=` | `GET` | any | 200 `ListAuctionsResponse` |
//! | `/v1/auctions/{id}` | `GET` | any | 200 `AuctionSnapshot` |
//! | `/v1/auctions/{id}/cancel` | `POST` | admin | 200 `AuctionSnapshot`, once durable |
//! | `/v1/auctions/{id}` | `DELETE` | admin | the same as cancel |
//!
//! "any" is every client the TLS configuration admits, anonymous watchers included. Every
//! request is counted in `gavel_admin_requests_total{method,route,status}` with the route
//! template, never the id.

use std::sync::Arc;

use bytes::Bytes;
use gavel_engine::{AuctionId, AuctionSpec, CreateError, ManageError};
use gavel_proto::pb;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::response::{self, Body};
use super::{Peer, Server};
use crate::clock::now_micros;
use crate::fanout::hub::STREAM_EPOCH;
use crate::gateway::Backend;
use crate::identity::Role;
use crate::metrics;
use crate::settlement;

/// The collection's path.
pub(super) const COLLECTION: &str = "/v1/auctions";
/// The cluster view's path.
pub(super) const CLUSTER: &str = "/v1/cluster";
/// Prefix of one auction's paths.
pub(super) const COLLECTION_SLASH: &str = "/v1/auctions/";
/// Auctions in a page when the request asks for the node's default (`limit` absent or 0);
/// capped by `list_limit_max`.
pub const LIST_LIMIT_DEFAULT: u32 = 100;
/// `Retry-After` of a 503 while recovering or shutting down, in seconds.
const RETRY_AFTER_NOT_READY_S: u64 = 1;

/// Why an admin request failed; each becomes a status and a JSON `{code, message}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The body is not JSON of the expected message (400 `bad_json`).
    #[error("the body is not a valid JSON message: {0}")]
    BadJson(String),
    /// The rules or a parameter were refused (400 `invalid_argument`).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request needs a client certificate (401 `unauthenticated`).
    #[error("this request needs a client certificate with the admin role")]
    Unauthenticated,
    /// The certificate's role may not do this (403 `forbidden`).
    #[error("role {0} may not do this; it needs the admin role")]
    Forbidden(&'static str),
    /// No auction with this id, or no such route (404 `not_found`).
    #[error("{0}")]
    NotFound(String),
    /// The route does not take this method (405 `method_not_allowed`).
    #[error("this route allows {0}")]
    MethodNotAllowed(&'static str),
    /// An auction with the id exists (409 `already_exists`).
    #[error("auction {0} already exists")]
    AlreadyExists(u64),
    /// The auction is closed already (409 `already_closed`).
    #[error("auction {0} is already closed")]
    AlreadyClosed(u64),
    /// The node holds its maximum of auctions (409 `too_many_auctions`).
    #[error("the node holds its maximum of {0} auctions")]
    TooManyAuctions(usize),
    /// The auction's partition of the shared log is another node's (421 `misdirected`; the
    /// body's `owner` names it and its addresses).
    #[error(
        "auction {auction} lives in partition {} of the shared log, which node {} owns \
         (HTTPS {}); send this request there (GET /v1/cluster shows who owns what)",
        owner.partition,
        owner.node,
        or_none(&owner.https)
    )]
    Misdirected {
        /// The auction asked for.
        auction: u64,
        /// Its partition's owner.
        owner: pb::PartitionOwner,
    },
    /// Nobody owns the auction's partition now: it is being taken over (503 `no_owner`,
    /// `Retry-After`).
    #[error(
        "auction {auction} lives in partition {partition} of the shared log, which no node \
         serves right now (it is being taken over); retry later"
    )]
    NoOwner {
        /// The auction asked for.
        auction: u64,
        /// Its partition.
        partition: u32,
    },
    /// The body is longer than `http_body_bytes_max` (413 `too_large`).
    #[error("the body is longer than {0} bytes")]
    TooLarge(usize),
    /// The node is recovering or shutting down (503 `not_ready`, `Retry-After`).
    #[error("the node is not ready (recovering or shutting down); retry later")]
    NotReady,
    /// The write-ahead log's queue is full (503 `overloaded`, `Retry-After`).
    #[error("the node is overloaded; retry after {0} µs")]
    Overloaded(u64),
    /// The log failed: the change may or may not survive (500 `internal`).
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::BadJson(_) | AdminError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            AdminError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AdminError::Forbidden(_) => StatusCode::FORBIDDEN,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::AlreadyExists(_)
            | AdminError::AlreadyClosed(_)
            | AdminError::TooManyAuctions(_) => StatusCode::CONFLICT,
            AdminError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            AdminError::NotReady | AdminError::Overloaded(_) | AdminError::NoOwner { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AdminError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable `code` of the JSON error.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::BadJson(_) => "bad_json",
            AdminError::InvalidArgument(_) => "invalid_argument",
            AdminError::Unauthenticated => "unauthenticated",
            AdminError::Forbidden(_) => "forbidden",
            AdminError::NotFound(_) => "not_found",
            AdminError::MethodNotAllowed(_) => "method_not_allowed",
            AdminError::AlreadyExists(_) => "already_exists",
            AdminError::AlreadyClosed(_) => "already_closed",
            AdminError::TooManyAuctions(_) => "too_many_auctions",
            AdminError::TooLarge(_) => "too_large",
            AdminError::Misdirected { .. } => "misdirected",
            AdminError::NoOwner { .. } => "no_owner",
            AdminError::NotReady => "not_ready",
            AdminError::Overloaded(_) => "overloaded",
            AdminError::Internal(_) => "internal",
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut response = match &self {
            AdminError::Misdirected { owner, .. } => {
                response::error_naming(self.status(), self.code(), &self.to_string(), owner)
            }
            _ => response::error(self.status(), self.code(), &self.to_string()),
        };
        let retry_after_s = match &self {
            AdminError::NotReady | AdminError::NoOwner { .. } => Some(RETRY_AFTER_NOT_READY_S),
            AdminError::Overloaded(us) => Some(us.div_ceil(1_000_000).max(1)),
            _ => None,
        };
        if let Some(seconds) = retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let AdminError::MethodNotAllowed(allow) = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

impl From<CreateError> for AdminError {
    fn from(error: CreateError) -> AdminError {
        match error {
            CreateError::AlreadyExists(id) => AdminError::AlreadyExists(id.0),
            CreateError::TooManyAuctions { auctions_max } => {
                AdminError::TooManyAuctions(auctions_max)
            }
            CreateError::Overloaded { retry_after_us } => AdminError::Overloaded(retry_after_us),
        }
    }
}

impl From<ManageError> for AdminError {
    fn from(error: ManageError) -> AdminError {
        match error {
            ManageError::UnknownAuction(id) => {
                AdminError::NotFound(format!("unknown auction {id}"))
            }
            // `NotDue` comes from closing an auction at its end, `NotSettled` from pruning
            // one and `NotPruned` from forgetting one, which the API does not offer; a
            // cancel returns none of them.
            ManageError::AlreadyClosed(id)
            | ManageError::NotDue { id, .. }
            | ManageError::NotSettled(id)
            | ManageError::NotPruned(id) => AdminError::AlreadyClosed(id.0),
            ManageError::Overloaded { retry_after_us } => AdminError::Overloaded(retry_after_us),
        }
    }
}

/// An admin route, parsed from the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// `/v1/auctions`
    Collection,
    /// `/v1/auctions/{id}`
    Auction(u64),
    /// `/v1/auctions/{id}/cancel`
    Cancel(u64),
    /// `/v1/cluster`
    Cluster,
}

impl Route {
    /// The route template: the metric label.
    fn template(parsed: Option<&Route>) -> &'static str {
        match parsed {
            Some(Route::Collection) => "/v1/auctions",
            Some(Route::Auction(_)) => "/v1/auctions/{id}",
            Some(Route::Cancel(_)) => "/v1/auctions/{id}/cancel",
            Some(Route::Cluster) => CLUSTER,
            None => "other",
        }
    }

    fn parse(path: &str) -> Result<Route, AdminError> {
        if path == COLLECTION {
            return Ok(Route::Collection);
        }
        if path == CLUSTER {
            return Ok(Route::Cluster);
        }
        let rest = path
            .strip_prefix(COLLECTION_SLASH)
            .ok_or_else(|| AdminError::NotFound("no such route".into()))?;
        let (id, action) = match rest.split_once('/') {
            Some((id, action)) => (id, Some(action)),
            None => (rest, None),
        };
        let id: u64 = id.parse().map_err(|_| {
            AdminError::InvalidArgument(format!(
                "auction id {id:?} is not an unsigned 64-bit integer"
            ))
        })?;
        match action {
            None => Ok(Route::Auction(id)),
            Some("cancel") => Ok(Route::Cancel(id)),
            Some(_) => Err(AdminError::NotFound("no such route".into())),
        }
    }
}

/// Answers one admin request and counts it.
pub(super) async fn handle<B: Backend>(
    server: &Arc<Server<B>>,
    peer: &Peer,
    request: Request<Incoming>,
) -> Response<Body> {
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "other",
    };
    let route = Route::parse(request.uri().path());
    let template = Route::template(route.as_ref().ok());
    let response = match route {
        Ok(route) => match dispatch(server, peer, route, request).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        },
        Err(error) => error.into_response(),
    };
    let status = response.status().as_u16().to_string();
    ::metrics::counter!(metrics::ADMIN_REQUESTS, "method" => method, "route" => template, "status" => status)
        .increment(1);
    response
}

async fn dispatch<B: Backend>(
    server: &Arc<Server<B>>,
    peer: &Peer,
    route: Route,
    request: Request<Incoming>,
) -> Result<Response<Body>, AdminError> {
    let method = request.method().clone();
    match (route, method) {
        (Route::Collection, Method::POST) => {
            require_admin(peer)?;
            create(server, request).await
        }
        (Route::Collection, Method::GET) => list(server, request.uri().query()),
        (Route::Collection, _) => Err(AdminError::MethodNotAllowed("GET, POST")),
        (Route::Auction(id), Method::GET) => get(server, id),
        (Route::Auction(id), Method::DELETE) | (Route::Cancel(id), Method::POST) => {
            require_admin(peer)?;
            cancel(server, id).await
        }
        (Route::Auction(_), _) => Err(AdminError::MethodNotAllowed("GET, DELETE")),
        (Route::Cancel(_), _) => Err(AdminError::MethodNotAllowed("POST")),
        (Route::Cluster, Method::GET) => {
            let cluster = backend(server)?.cluster();
            let cluster = cluster.ok_or_else(|| {
                AdminError::NotFound("this node writes its own log: no cluster".into())
            })?;
            Ok(response::json(StatusCode::OK, &cluster))
        }
        (Route::Cluster, _) => Err(AdminError::MethodNotAllowed("GET")),
    }
}

/// 421 if another node owns the auction's partition of the shared log, 503 if nobody does
/// now (counted in `gavel_redirects_total{transport="https"}`).
fn misdirected<B: Backend>(backend: &B, id: AuctionId) -> Result<(), AdminError> {
    let Some(owner) = backend.owner_elsewhere(id) else {
        return Ok(());
    };
    metrics::redirect("https", &owner);
    Err(if owner.node.is_empty() {
        AdminError::NoOwner {
            auction: id.0,
            partition: owner.partition,
        }
    } else {
        AdminError::Misdirected {
            auction: id.0,
            owner,
        }
    })
}

/// An advertised address for a message: itself, or "none advertised".
fn or_none(address: &str) -> &str {
    if address.is_empty() {
        "none advertised"
    } else {
        address
    }
}

fn require_admin(peer: &Peer) -> Result<(), AdminError> {
    match &peer.identity {
        None => Err(AdminError::Unauthenticated),
        Some(identity) if identity.role == Role::Admin => Ok(()),
        Some(identity) => Err(AdminError::Forbidden(identity.role.as_str())),
    }
}

/// The backend, unless the node is recovering or shutting down.
fn backend<B: Backend>(server: &Server<B>) -> Result<Arc<B>, AdminError> {
    if server.gateway.shutdown().is_cancelled() {
        return Err(AdminError::NotReady);
    }
    server
        .gateway
        .backend()
        .cloned()
        .ok_or(AdminError::NotReady)
}

async fn create<B: Backend>(
    server: &Arc<Server<B>>,
    request: Request<Incoming>,
) -> Result<Response<Body>, AdminError> {
    let backend = backend(server)?;
    let body = read_body(request, server.gateway.limits().http_body_bytes_max).await?;
    let message: pb::CreateAuction =
        serde_json::from_slice(&body).map_err(|e| AdminError::BadJson(e.to_string()))?;
    let spec =
        AuctionSpec::try_from(message).map_err(|e| AdminError::InvalidArgument(e.to_string()))?;
    let id = spec.id();
    misdirected(&*backend, id)?;
    let receipt = backend.create_auction(spec, now_micros())?;
    backend
        .durable(receipt)
        .await
        .map_err(|e| AdminError::Internal(format!("auction {id} was created but is {e}")))?;
    server.gateway.hub().changed(id);
    tracing::info!(auction = id.0, "auction created through the admin API");
    let mut response = response::json(StatusCode::CREATED, &snapshot(&*backend, id)?);
    if let Ok(location) = HeaderValue::try_from(format!("{COLLECTION_SLASH}{}", id.0)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /v1/auctions/{id}`: the snapshot, or for an auction the retention rule pruned,
/// `410 Gone` with its final result.
fn get<B: Backend>(server: &Arc<Server<B>>, id: u64) -> Result<Response<Body>, AdminError> {
    let backend = backend(server)?;
    let id = AuctionId(id);
    misdirected(&*backend, id)?;
    if let Some(view) = backend.view(id, now_micros()) {
        let snapshot = pb::AuctionSnapshot::from_view(&view, STREAM_EPOCH);
        return Ok(response::json(StatusCode::OK, &snapshot));
    }
    match backend.pruned(id) {
        Some(result) => Ok(response::json(
            StatusCode::GONE,
            &pb::PrunedAuction::from(&result),
        )),
        None => Err(AdminError::NotFound(format!("unknown auction {id}"))),
    }
}

fn list<B: Backend>(
    server: &Arc<Server<B>>,
    query: Option<&str>,
) -> Result<Response<Body>, AdminError> {
    let backend = backend(server)?;
    let (after_id, limit) = list_query(query)?;
    let limit_max = server.gateway.limits().list_limit_max;
    let limit = match limit {
        0 => LIST_LIMIT_DEFAULT.min(limit_max),
        asked => asked.min(limit_max),
    } as usize;
    // One more than the page, to know whether another page follows.
    let mut views = backend.list(after_id.map(AuctionId), limit + 1, now_micros());
    let more = views.len() > limit;
    views.truncate(limit);
    let response = pb::ListAuctionsResponse {
        next_after_id: more.then(|| views.last().map(|v| v.spec.id().0)).flatten(),
        auctions: views
            .iter()
            .map(|view| pb::AuctionSnapshot::from_view(view, STREAM_EPOCH))
            .collect(),
    };
    Ok(response::json(StatusCode::OK, &response))
}

/// Parses `after_id=<u64>&limit=<u32>` (both optional, other keys refused).
fn list_query(query: Option<&str>) -> Result<(Option<u64>, u32), AdminError> {
    let mut after_id = None;
    let mut limit = 0;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad =
            |what: &str| AdminError::InvalidArgument(format!("{key}={value:?} is not {what}"));
        match key {
            "after_id" | "afterId" => {
                after_id = Some(
                    value
                        .parse()
                        .map_err(|_| bad("an unsigned 64-bit integer"))?,
                );
            }
            "limit" => {
                limit = value
                    .parse()
                    .map_err(|_| bad("an unsigned 32-bit integer"))?
            }
            _ => {
                return Err(AdminError::InvalidArgument(format!(
                    "unknown query parameter {key:?} (expected after_id, limit)"
                )));
            }
        }
    }
    Ok((after_id, limit))
}

async fn cancel<B: Backend>(
    server: &Arc<Server<B>>,
    id: u64,
) -> Result<Response<Body>, AdminError> {
    let backend = backend(server)?;
    misdirected(&*backend, AuctionId(id))?;
    let closed = backend.cancel_auction(AuctionId(id), now_micros())?;
    let hub = Arc::clone(server.gateway.hub());
    settlement::announce(Arc::clone(&backend), hub, closed)
        .await
        .map_err(|e| {
            AdminError::Internal(format!(
                "auction {id} was cancelled but the cancellation is {e}"
            ))
        })?;
    tracing::info!(auction = id, "auction cancelled through the admin API");
    Ok(response::json(
        StatusCode::OK,
        &snapshot(&*backend, AuctionId(id))?,
    ))
}

fn snapshot<B: Backend>(backend: &B, id: AuctionId) -> Result<pb::AuctionSnapshot, AdminError> {
    let view = backend
        .view(id, now_micros())
        .ok_or_else(|| AdminError::NotFound(format!("unknown auction {id}")))?;
    Ok(pb::AuctionSnapshot::from_view(&view, STREAM_EPOCH))
}

/// The whole body, refused beyond `bytes_max` (by its `Content-Length` before reading, or
/// while reading a body that does not declare it).
async fn read_body(request: Request<Incoming>, bytes_max: usize) -> Result<Bytes, AdminError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > bytes_max as u64) {
        return Err(AdminError::TooLarge(bytes_max));
    }
    match Limited::new(request.into_body(), bytes_max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(AdminError::TooLarge(bytes_max))
        }
        Err(e) => Err(AdminError::BadJson(format!("could not read the body: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_routes() {
        assert_eq!(Route::parse("/v1/auctions"), Ok(Route::Collection));
        assert_eq!(Route::parse("/v1/cluster"), Ok(Route::Cluster));
        assert_eq!(Route::parse("/v1/auctions/42"), Ok(Route::Auction(42)));
        assert_eq!(
            Route::parse("/v1/auctions/42/cancel"),
            Ok(Route::Cancel(42))
        );
        assert_eq!(
            Route::parse("/v1/auctions/x").unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            Route::parse("/v1/auctions/1/close").unwrap_err().status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            Route::parse("/v1/auctions/18446744073709551616")
                .unwrap_err()
                .code(),
            "invalid_argument"
        );
    }

    #[test]
    fn parses_list_queries() {
        assert_eq!(list_query(None), Ok((None, 0)));
        assert_eq!(list_query(Some("after_id=7&limit=3")), Ok((Some(7), 3)));
        assert_eq!(list_query(Some("limit=5")), Ok((None, 5)));
        assert!(list_query(Some("limit=-1")).is_err());
        assert!(list_query(Some("page=2")).is_err());
    }

    #[test]
    fn overload_retry_after_rounds_up_to_whole_seconds() {
        let response = AdminError::Overloaded(1_500_000).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let response = AdminError::NotReady.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }
}
