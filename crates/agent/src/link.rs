//! The agent's side of the controller link: the sync long-poll (lease renewal + commands) and
//! the report sender.

use std::sync::Arc;
use std::time::Duration;

use duplex_driver::Driver;
use duplex_model::HostId;
use duplex_model::wire::{AgentReport, ReportBatch, SyncRequest, SyncResponse};
use tokio::sync::mpsc;

use crate::Shared;

/// What can go wrong talking to the controller.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The controller could not be reached or answered garbage.
    #[error("controller {url}: {source}")]
    Request {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The controller refused the request.
    #[error("controller {url} answered {status}: {body}")]
    Refused {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Its message.
        body: String,
    },
}

/// A connection to the controller.
#[derive(Clone, Debug)]
pub struct Link {
    client: reqwest::Client,
    sync_url: String,
    report_url: String,
    token: Option<String>,
    /// This agent process's boot id.
    pub boot: String,
}

impl Link {
    /// A link for `host` to the controller at `base`.
    pub fn new(base: &str, host: &HostId, token: Option<String>) -> Result<Link, LinkError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(LinkError::Client)?;
        let base = base.trim_end_matches('/');
        let nanos = std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .map_or(0, |d| d.as_nanos());
        Ok(Link {
            client,
            sync_url: format!("{base}/v1/agents/{host}/sync"),
            report_url: format!("{base}/v1/agents/{host}/reports"),
            token,
            boot: format!("{}-{nanos:x}", std::process::id()),
        })
    }

    async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<R, LinkError> {
        let mut req = self.client.post(url).json(body).timeout(timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let err = |source| LinkError::Request {
            url: url.to_owned(),
            source,
        };
        let resp = req.send().await.map_err(err)?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(LinkError::Refused {
                url: url.to_owned(),
                status: status.as_u16(),
                body,
            });
        }
        resp.json().await.map_err(err)
    }

    /// One sync: heartbeat, lease renewal and the commands queued for this host.
    pub async fn sync(&self, req: &SyncRequest) -> Result<SyncResponse, LinkError> {
        self.post(&self.sync_url, req, Duration::from_secs(10))
            .await
    }

    /// Posts reports.
    pub async fn send_reports(&self, reports: Vec<AgentReport>) -> Result<(), LinkError> {
        let batch = ReportBatch {
            boot: self.boot.clone(),
            reports,
        };
        let _: serde_json::Value = self
            .post(&self.report_url, &batch, Duration::from_secs(5))
            .await?;
        Ok(())
    }
}

/// Syncs forever: each answered sync renews the lease (measured from when it was sent) and
/// hands its commands to the executor, in order.
pub(crate) async fn poll_loop<D: Driver>(shared: Arc<Shared<D>>, link: Link) {
    let mut acked = 0;
    let mut controller: Option<String> = None;
    let mut warned = false;
    loop {
        let req = SyncRequest {
            boot: link.boot.clone(),
            acked,
            controller: controller.clone(),
            running: shared.driver.running(),
            synced: shared.synced.lock().await.clone(),
        };
        let sent = tokio::time::Instant::now();
        match link.sync(&req).await {
            Ok(resp) => {
                if warned {
                    tracing::info!(host = %shared.cfg.host, "controller reachable again");
                    warned = false;
                }
                *shared.last_renewed.lock().await = Some(sent);
                if controller.as_ref() != Some(&resp.controller) {
                    // A (re)started controller numbers its commands afresh.
                    tracing::info!(host = %shared.cfg.host, controller = %resp.controller, "controller (re)started");
                    controller = Some(resp.controller.clone());
                    acked = 0;
                }
                *shared.lease.lock().await = Duration::from_millis(resp.lease_ms);
                for env in resp.commands {
                    if env.seq <= acked {
                        continue;
                    }
                    acked = env.seq;
                    crate::exec::execute(&shared, env).await;
                }
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(host = %shared.cfg.host, error = %e, "cannot sync with the controller; retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Sends reports as they come; keeps them (in order) while the controller is unreachable.
pub(crate) async fn report_loop(link: Link, mut rx: mpsc::UnboundedReceiver<AgentReport>) {
    let mut pending: Vec<AgentReport> = Vec::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(r) => pending.push(r),
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            pending.push(r);
        }
        match link.send_reports(pending.clone()).await {
            Ok(()) => pending.clear(),
            Err(e) => {
                tracing::warn!(error = %e, queued = pending.len(), "cannot send reports; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
