//! Prometheus metrics of the agent.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationKind {
    pub operation: &'static str,
}

pub struct AgentMetrics {
    pub registry: Registry,
    operations: Family<OperationLabels, Counter>,
    durations: Family<OperationKind, Histogram>,
    certificate_expiry: Gauge,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("stratus_agent");
        let operations = Family::<OperationLabels, Counter>::default();
        registry.register(
            "operations",
            "Agent operations by outcome (ok or error kind)",
            operations.clone(),
        );
        let durations = Family::<OperationKind, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 4.0, 10))
        });
        registry.register(
            "operation_seconds",
            "Time spent in libvirt per operation",
            durations.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the agent's serving certificate expires (seconds since the epoch)",
            certificate_expiry.clone(),
        );
        Self {
            registry,
            operations,
            durations,
            certificate_expiry,
        }
    }
}

impl AgentMetrics {
    /// The gauge whoever loads the serving certificate keeps current.
    pub fn certificate_expiry(&self) -> Gauge {
        self.certificate_expiry.clone()
    }

    pub fn record(&self, operation: &'static str, outcome: &'static str, elapsed: Duration) {
        self.operations
            .get_or_create(&OperationLabels { operation, outcome })
            .inc();
        self.durations
            .get_or_create(&OperationKind { operation })
            .observe(elapsed.as_secs_f64());
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
