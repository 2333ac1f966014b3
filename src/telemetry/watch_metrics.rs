//! The registry watch's metric families: events by registry, kind and
//! verdict; the last successful round per watched repository; failures;
//! queue depth and delivery outcomes per sink. Registered by
//! [`super::metrics::Metrics::new`]; label values are enums or configured
//! names (upstream hosts, watched repositories, sink names).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The kinds of watch event.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WatchEventKind {
    TagMoved,
    TagCreated,
    TagDeleted,
    SignatureLost,
    TagPinned,
    /// The follow-up of an undecided verdict: the digest a tag points to,
    /// unmoved, now has a verdict.
    VerdictDecided,
    WatchFailed,
}

impl WatchEventKind {
    /// The name in CloudEvents types (`dev.portcullis.<name>`) and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchEventKind::TagMoved => "tag.moved",
            WatchEventKind::TagCreated => "tag.created",
            WatchEventKind::TagDeleted => "tag.deleted",
            WatchEventKind::SignatureLost => "signature.lost",
            WatchEventKind::TagPinned => "tag.pinned",
            WatchEventKind::VerdictDecided => "verdict.decided",
            WatchEventKind::WatchFailed => "watch.failed",
        }
    }
}
label_value!(WatchEventKind);

/// The policy's answer for the digest an event is about (`none`: no digest
/// was judged, e.g. a deleted tag).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum WatchVerdict {
    Allowed,
    Denied,
    Undecided,
    None,
}

impl WatchVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchVerdict::Allowed => "allowed",
            WatchVerdict::Denied => "denied",
            WatchVerdict::Undecided => "undecided",
            WatchVerdict::None => "none",
        }
    }
}
label_value!(WatchVerdict);

/// How one delivery attempt ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// Receiver unreachable, 5xx, or any other non-2xx: retried.
    Failed,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Failed => "failed",
        }
    }
}
label_value!(DeliveryOutcome);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    registry: String,
    event: WatchEventKind,
    verdict: WatchVerdict,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    registry: String,
    repository: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    sink: String,
    outcome: DeliveryOutcome,
}

/// The watch families (empty when nothing is watched).
#[derive(Debug, Default)]
pub struct WatchMetrics {
    events: Family<EventLabels, Counter>,
    last_success: Family<TargetLabels, Gauge>,
    failures: Family<TargetLabels, Counter>,
    queue_depth: Family<SinkLabels, Gauge>,
    queue_over_limit: Family<SinkLabels, Gauge>,
    deliveries: Family<DeliveryLabels, Counter>,
}

impl WatchMetrics {
    pub(super) fn register(r: &mut Registry) -> WatchMetrics {
        let m = WatchMetrics::default();
        r.register(
            "watch_events",
            "Registry watch events by upstream registry, kind (tag.moved, signature.lost, ...) and verdict of the digest",
            m.events.clone(),
        );
        r.register(
            "watch_last_success_timestamp_seconds",
            "Unix time of the last round that checked every watched tag of the repository",
            m.last_success.clone(),
        );
        r.register(
            "watch_failures",
            "Watch checks of a repository that failed after retries",
            m.failures.clone(),
        );
        r.register(
            "watch_queue_depth",
            "Watch events queued on disk for a sink, not yet acknowledged",
            m.queue_depth.clone(),
        );
        r.register(
            "watch_queue_over_limit",
            "1 while a sink's queue holds more than watch.queueLimit events (none are dropped)",
            m.queue_over_limit.clone(),
        );
        r.register(
            "watch_deliveries",
            "Webhook delivery attempts by sink and outcome",
            m.deliveries.clone(),
        );
        m
    }

    pub fn event(&self, registry: &str, event: WatchEventKind, verdict: WatchVerdict) {
        let labels = EventLabels {
            registry: registry.to_owned(),
            event,
            verdict,
        };
        self.events.get_or_create(&labels).inc();
    }

    pub fn round_succeeded(&self, registry: &str, repository: &str, unix_seconds: i64) {
        self.last_success
            .get_or_create(&target(registry, repository))
            .set(unix_seconds);
    }

    pub fn failure(&self, registry: &str, repository: &str) {
        self.failures.get_or_create(&target(registry, repository)).inc();
    }

    pub fn queue(&self, sink: &str, depth: usize, over_limit: bool) {
        let labels = SinkLabels { sink: sink.to_owned() };
        self.queue_depth
            .get_or_create(&labels)
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.queue_over_limit.get_or_create(&labels).set(i64::from(over_limit));
    }

    pub fn delivery(&self, sink: &str, outcome: DeliveryOutcome) {
        let labels = DeliveryLabels {
            sink: sink.to_owned(),
            outcome,
        };
        self.deliveries.get_or_create(&labels).inc();
    }
}

fn target(registry: &str, repository: &str) -> TargetLabels {
    TargetLabels {
        registry: registry.to_owned(),
        repository: repository.to_owned(),
    }
}
