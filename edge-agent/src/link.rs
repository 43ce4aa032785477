//! The agent's connection to the node: one `gavel-client` SDK client with the device
//! certificate, connected with the agent's backoff; once up, the SDK keeps it (it
//! reconnects by itself with full-jitter backoff from 1 s to the agent's cap, and resends
//! unanswered bids under their bid ids).

use std::time::Instant;

use gavel_client::{Client, ClientConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backoff::{BASE, Backoff};
use crate::config::AgentConfig;

/// The node client once connected, shared by the forwarder and the stream.
pub(crate) struct NodeLink {
    client: watch::Sender<Option<Client>>,
}

impl NodeLink {
    pub(crate) fn new() -> NodeLink {
        NodeLink {
            client: watch::channel(None).0,
        }
    }

    /// The client, once connected; `None` if `shutdown` comes first.
    pub(crate) async fn client(&self, shutdown: &CancellationToken) -> Option<Client> {
        let mut receiver = self.client.subscribe();
        tokio::select! {
            _ = shutdown.cancelled() => None,
            client = receiver.wait_for(Option::is_some) => {
                client.ok().and_then(|client| client.clone())
            }
        }
    }
}

/// The SDK's configuration: the device's certificate files, the agent's backoff.
pub(crate) fn client_config(config: &AgentConfig) -> anyhow::Result<ClientConfig> {
    let mut client = ClientConfig::from_cert_files(
        config.node,
        config.server_name.clone(),
        &config.ca_cert,
        &config.cert,
        &config.key,
    )?;
    client.reconnect_backoff_base = BASE;
    client.reconnect_backoff_max = config.reconnect_backoff_max;
    Ok(client)
}

/// Connects with backoff until it succeeds or `shutdown`, then hands out the client.
pub(crate) async fn connect(
    client_config: ClientConfig,
    config: AgentConfig,
    link: std::sync::Arc<NodeLink>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(config.reconnect_backoff_max);
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            attempt = Client::connect(client_config.clone()) => attempt,
        };
        match attempt {
            Ok(client) => {
                tracing::info!(node = %config.node, "connected to the node");
                link.client.send_replace(Some(client));
                return;
            }
            Err(e) => {
                let delay = backoff.failed(Instant::now(), &mut rand::rng());
                tracing::warn!(node = %config.node, error = %e, ?delay, "cannot reach the node; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
