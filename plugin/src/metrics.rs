//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` HTTP endpoints.
//!
//! Metric names (all prefixed `hbm_plugin_`): `devices{resource,health}`,
//! `registrations_total{resource,result}`, `kubelet_restarts_total`,
//! `allocate_calls_total{resource,result}`, `allocate_seconds{resource}` (histogram),
//! `config_reloads_total{result}`, `resource_problems`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceHealth {
    pub resource: String,
    pub health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceResult {
    pub resource: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

type HistogramFamily = Family<ResourceLabel, Histogram, fn() -> Histogram>;

fn allocate_histogram() -> Histogram {
    // 10 us .. ~330 ms
    Histogram::new(exponential_buckets(0.000_01, 2.0, 16))
}

/// Every metric of the process plus liveness/readiness state.
pub struct Metrics {
    registry: Registry,
    pub devices: Family<ResourceHealth, Gauge>,
    pub registrations: Family<ResourceResult, Counter>,
    pub kubelet_restarts: Counter,
    pub allocate_calls: Family<ResourceResult, Counter>,
    pub allocate_seconds: HistogramFamily,
    pub config_reloads: Family<ResultLabel, Counter>,
    pub resource_problems: Gauge,
    ready: AtomicBool,
    last_tick_ms: AtomicU64,
    liveness_window: Duration,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Metrics {
    /// `liveness_window`: how long the manager loop may go without a tick before `/healthz` fails.
    pub fn new(liveness_window: Duration) -> Self {
        let mut registry = Registry::with_prefix("hbm_plugin");
        let devices = Family::<ResourceHealth, Gauge>::default();
        let registrations = Family::<ResourceResult, Counter>::default();
        let kubelet_restarts = Counter::default();
        let allocate_calls = Family::<ResourceResult, Counter>::default();
        let allocate_seconds: HistogramFamily = Family::new_with_constructor(allocate_histogram);
        let config_reloads = Family::<ResultLabel, Counter>::default();
        let resource_problems = Gauge::default();
        registry.register("devices", "Advertised devices per resource and health", devices.clone());
        registry.register(
            "registrations",
            "Registration attempts with the kubelet",
            registrations.clone(),
        );
        registry.register("kubelet_restarts", "Kubelet restarts noticed", kubelet_restarts.clone());
        registry.register(
            "allocate_calls",
            "Allocate calls per resource and result",
            allocate_calls.clone(),
        );
        registry.register("allocate_seconds", "Allocate call latency", allocate_seconds.clone());
        registry.register("config_reloads", "Config file reloads", config_reloads.clone());
        registry.register(
            "resource_problems",
            "Config/inventory problems seen by the last derivation",
            resource_problems.clone(),
        );
        Self {
            registry,
            devices,
            registrations,
            kubelet_restarts,
            allocate_calls,
            allocate_seconds,
            config_reloads,
            resource_problems,
            ready: AtomicBool::new(false),
            last_tick_ms: AtomicU64::new(now_ms()),
            liveness_window,
        }
    }

    pub fn registration(&self, resource: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" }.to_string();
        self.registrations
            .get_or_create(&ResourceResult {
                resource: resource.to_string(),
                result,
            })
            .inc();
    }

    pub fn allocate(&self, resource: &str, ok: bool, elapsed: Duration) {
        let result = if ok { "ok" } else { "error" }.to_string();
        self.allocate_calls
            .get_or_create(&ResourceResult {
                resource: resource.to_string(),
                result,
            })
            .inc();
        self.allocate_seconds
            .get_or_create(&ResourceLabel {
                resource: resource.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn config_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" }.to_string();
        self.config_reloads.get_or_create(&ResultLabel { result }).inc();
    }

    /// Sets the device gauges of `resource` (healthy, unhealthy counts).
    pub fn set_devices(&self, resource: &str, healthy: usize, unhealthy: usize) {
        for (health, n) in [("Healthy", healthy), ("Unhealthy", unhealthy)] {
            self.devices
                .get_or_create(&ResourceHealth {
                    resource: resource.to_string(),
                    health: health.to_string(),
                })
                .set(n as i64);
        }
    }

    /// Drops the gauges of a resource no longer served.
    pub fn remove_resource(&self, resource: &str) {
        for health in ["Healthy", "Unhealthy"] {
            self.devices.remove(&ResourceHealth {
                resource: resource.to_string(),
                health: health.to_string(),
            });
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Called by the manager loop on every pass.
    pub fn tick(&self) {
        self.last_tick_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn is_live(&self) -> bool {
        now_ms().saturating_sub(self.last_tick_ms.load(Ordering::Relaxed)) <= self.liveness_window.as_millis() as u64
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

async fn metrics_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        m.render(),
    )
}

async fn healthz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.is_live() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "manager loop stalled\n")
    }
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not registered with the kubelet yet\n")
    }
}

/// Binds `addr` and serves the endpoints until `stop` is cancelled. Returns the bound address
/// (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    let handle = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(%error, "metrics server failed");
        }
    });
    Ok((local, handle))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn exposition_names_and_values() {
        let m = Metrics::new(Duration::from_secs(5));
        m.set_devices("amd.com/x", 3, 1);
        m.registration("amd.com/x", true);
        m.registration("amd.com/x", false);
        m.kubelet_restarts.inc();
        m.allocate("amd.com/x", true, Duration::from_micros(50));
        let text = m.render();
        for line in [
            "hbm_plugin_devices{resource=\"amd.com/x\",health=\"Healthy\"} 3",
            "hbm_plugin_devices{resource=\"amd.com/x\",health=\"Unhealthy\"} 1",
            "hbm_plugin_registrations_total{resource=\"amd.com/x\",result=\"ok\"} 1",
            "hbm_plugin_registrations_total{resource=\"amd.com/x\",result=\"error\"} 1",
            "hbm_plugin_kubelet_restarts_total 1",
            "hbm_plugin_allocate_calls_total{resource=\"amd.com/x\",result=\"ok\"} 1",
            "hbm_plugin_allocate_seconds_count{resource=\"amd.com/x\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        m.remove_resource("amd.com/x");
        assert!(!m.render().contains("hbm_plugin_devices{"));
    }
}
