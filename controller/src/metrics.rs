//! Prometheus metrics of the controller, labelled by the kind reconciled.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabels {
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub channel: &'static str,
    /// `delivered`, `retrying` or `failed` (given up).
    pub outcome: &'static str,
}

fn reconcile_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 3.0, 12))
}

#[derive(Clone)]
pub struct ControllerMetrics {
    reconciles: Family<KindLabels, Counter>,
    failures: Family<ErrorLabels, Counter>,
    duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    queue_depth: Family<KindLabels, Gauge>,
    transitions: Family<PhaseLabels, Counter>,
    storage_transitions: Family<PhaseLabels, Counter>,
    storage_repairs: Counter,
    swept: Family<VerdictLabels, Counter>,
    deliveries: Family<DeliveryLabels, Counter>,
}

impl ControllerMetrics {
    /// Registers the controller's metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("stratus_controller");
        let metrics = Self {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(reconcile_buckets),
            queue_depth: Family::default(),
            transitions: Family::default(),
            storage_transitions: Family::default(),
            storage_repairs: Counter::default(),
            swept: Family::default(),
            deliveries: Family::default(),
        };
        registry.register(
            "reconciles",
            "Reconciles run, by kind",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by kind and error",
            metrics.failures.clone(),
        );
        registry.register(
            "reconcile_seconds",
            "Duration of reconciles, by kind",
            metrics.duration.clone(),
        );
        registry.register(
            "queue_depth",
            "Keys ready and waiting for a worker, by kind",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "phase_transitions",
            "Servers entering a phase",
            metrics.transitions.clone(),
        );
        registry.register(
            "storage_phase_transitions",
            "Storage subscriptions entering a phase",
            metrics.storage_transitions.clone(),
        );
        registry.register(
            "storage_copy_repairs",
            "Storage copies found not to match their checksum and rewritten from the other copy (R26); alert on any increase",
            metrics.storage_repairs.clone(),
        );
        registry.register(
            "dnsbl_sweep_checks",
            "Held addresses the blacklist sweep asked about, by verdict (listed: a blocking blacklist lists it)",
            metrics.swept.clone(),
        );
        registry.register(
            "notification_attempts",
            "Notification and billing webhook deliveries attempted, by channel and outcome",
            metrics.deliveries.clone(),
        );
        metrics
    }

    pub fn reconciled(&self, kind: &str, elapsed: Duration, error: Option<&'static str>) {
        let labels = KindLabels {
            kind: kind.to_owned(),
        };
        self.reconciles.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            self.failures
                .get_or_create(&ErrorLabels {
                    kind: labels.kind,
                    error,
                })
                .inc();
        }
    }

    pub fn queue_depth(&self, kind: &str, depth: usize) {
        self.queue_depth
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Counts one sweep round's verdicts.
    pub fn swept(&self, clean: usize, listed: usize, inconclusive: usize) {
        for (verdict, count) in [
            ("clean", clean),
            ("listed", listed),
            ("inconclusive", inconclusive),
        ] {
            self.swept
                .get_or_create(&VerdictLabels { verdict })
                .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
        }
    }

    pub fn delivery(&self, channel: &'static str, outcome: &'static str) {
        self.deliveries
            .get_or_create(&DeliveryLabels { channel, outcome })
            .inc();
    }

    pub fn entered(&self, phase: &'static str) {
        self.transitions.get_or_create(&PhaseLabels { phase }).inc();
    }

    /// Counts a copy repaired from the other.
    pub fn storage_repaired(&self) {
        self.storage_repairs.inc();
    }

    /// Counts a storage subscription entering `phase`.
    pub fn storage_entered(&self, phase: &'static str) {
        self.storage_transitions
            .get_or_create(&PhaseLabels { phase })
            .inc();
    }
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self::register(&mut Registry::default())
    }
}
