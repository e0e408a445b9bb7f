//! Prometheus metrics of the controller.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone)]
pub struct ControllerMetrics {
    reconciles: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    transitions: Family<PhaseLabels, Counter>,
}

impl ControllerMetrics {
    /// Registers the controller's metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("stratus_controller");
        let metrics = Self {
            reconciles: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new(exponential_buckets(0.0005, 3.0, 12)),
            transitions: Family::default(),
        };
        registry.register(
            "reconciles",
            "Server reconciles run",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Server reconciles that failed, by error",
            metrics.failures.clone(),
        );
        registry.register(
            "reconcile_seconds",
            "Duration of server reconciles",
            metrics.duration.clone(),
        );
        registry.register(
            "phase_transitions",
            "Servers entering a phase",
            metrics.transitions.clone(),
        );
        metrics
    }

    pub fn reconciled(&self, elapsed: Duration, error: Option<&'static str>) {
        self.reconciles.inc();
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            self.failures.get_or_create(&ErrorLabels { error }).inc();
        }
    }

    pub fn entered(&self, phase: &'static str) {
        self.transitions.get_or_create(&PhaseLabels { phase }).inc();
    }
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::register(&mut Registry::default())
    }
}
