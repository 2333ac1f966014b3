//! Rendering a [`WatchEvent`] for a sink, and signing the body.
//!
//! - CloudEvents 1.0, structured JSON mode (cloudevents/spec `spec.md`,
//!   `formats/json-format.md`, `bindings/http-protocol-binding.md`):
//!   `Content-Type: application/cloudevents+json; charset=UTF-8`, every
//!   attribute in the body.
//! - OCSF 1.8.0 Detection Finding (`class_uid` 2004, category 2 Findings)
//!   with the attributes the class requires: `activity_id`, `category_uid`,
//!   `class_uid`, `type_uid`, `severity_id`, `time` (ms), `metadata`
//!   (`product`, `version`), `finding_info` (`uid`).
//! - The signature: `X-Portcullis-Signature-256: sha256=<hex HMAC-SHA256 of
//!   the body>` (GitHub's convention), verified in constant time by receivers.

use hmac::{KeyInit, Mac};
use serde_json::{Value, json};

use super::event::WatchEvent;
use crate::config::EventFormat;

/// The header carrying the body's HMAC-SHA256.
pub const SIGNATURE_HEADER: &str = "x-portcullis-signature-256";
/// `Content-Type` of a structured-mode CloudEvent.
pub const CLOUDEVENTS_CONTENT_TYPE: &str = "application/cloudevents+json; charset=UTF-8";
/// The OCSF schema version the findings follow.
pub const OCSF_VERSION: &str = "1.8.0";

/// The body and its `Content-Type` for `format`.
pub fn render(format: EventFormat, event: &WatchEvent) -> (Vec<u8>, &'static str) {
    let (value, content_type) = match format {
        EventFormat::Cloudevents => (cloudevent(event), CLOUDEVENTS_CONTENT_TYPE),
        EventFormat::Ocsf => (ocsf_finding(event), "application/json"),
    };
    // A `Value` built from strings, numbers and arrays always serialises.
    (serde_json::to_vec(&value).unwrap_or_default(), content_type)
}

/// `sha256=<hex>` of HMAC-SHA256(`secret`, `body`).
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::from("sha256=");
    for b in tag.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn cloudevent(e: &WatchEvent) -> Value {
    json!({
        "specversion": "1.0",
        "id": e.id,
        "source": format!("/portcullis/watch/{}/{}", e.registry, e.repository),
        "type": format!("dev.portcullis.{}", e.event),
        "subject": e.subject(),
        "time": e.observed_at,
        "datacontenttype": "application/json",
        "data": e,
    })
}

/// OCSF severity: a denied or lost signature is High, an undecided or
/// pinned move Medium, a deleted tag Low, an allowed move Informational.
fn severity(e: &WatchEvent) -> (u8, &'static str) {
    match (e.event.as_str(), e.verdict.as_deref()) {
        ("signature.lost", _) | (_, Some("denied")) => (4, "High"),
        ("tag.pinned" | "watch.failed", _) | (_, Some("undecided")) => (3, "Medium"),
        ("tag.deleted", _) => (2, "Low"),
        _ => (1, "Informational"),
    }
}

fn title(e: &WatchEvent) -> String {
    let verdict = e.verdict.as_deref().map(|v| format!(" ({v})")).unwrap_or_default();
    format!("{}: {}{verdict}", e.event, e.subject())
}

fn ocsf_finding(e: &WatchEvent) -> Value {
    let (severity_id, severity) = severity(e);
    let time_ms = e
        .observed_at
        .parse::<jiff::Timestamp>()
        .map_or(0, |t| t.as_millisecond());
    let digest = e.new_digest.as_ref().or(e.old_digest.as_ref());
    json!({
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": 1,
        "activity_name": "Create",
        "type_uid": 200401,
        "type_name": "Detection Finding: Create",
        "severity_id": severity_id,
        "severity": severity,
        "time": time_ms,
        "status_id": 1,
        "status": "New",
        "is_alert": severity_id >= 3,
        "message": title(e),
        "metadata": {
            "version": OCSF_VERSION,
            "uid": e.id,
            "product": {
                "name": "Portcullis",
                "vendor_name": "Portcullis",
                "version": env!("CARGO_PKG_VERSION"),
                "feature": { "name": "registry watch" },
            },
        },
        "finding_info": {
            "uid": e.id,
            "title": title(e),
            "desc": e.reasons.join("; "),
            "types": [e.event],
            "analytic": {
                "name": e.rule.clone().unwrap_or_else(|| "no rule matched".to_owned()),
                "type_id": 1,
                "type": "Rule",
            },
        },
        "resources": [{
            "name": e.subject(),
            "type": "Container Image",
            "uid": digest,
        }],
        "unmapped": e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GitHub's published vector ("Validating webhook deliveries").
    #[test]
    fn hmac_matches_the_published_vector() {
        assert_eq!(
            signature(b"It's a Secret to Everybody", b"Hello, World!"),
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }
}
