//! `/metrics` read by the Prometheus project's own Python parser
//! (`prometheus_client`, Debian's `python3-prometheus-client`): the classic
//! text format and OpenMetrics, each turned into (name, labels, value)
//! samples for exact assertions.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

/// Debian's interpreter, which the Debian package installs the parser for
/// (a `python3` earlier on `PATH`, e.g. pyenv's, would not have it).
const PYTHON: &str = "/usr/bin/python3";

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families as classic
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
parse = openmetrics if sys.argv[1] == "openmetrics" else classic
out = []
for family in parse(sys.stdin.read()):
    for s in family.samples:
        out.append({"name": s.name, "labels": s.labels, "value": s.value, "type": family.type})
json.dump(out, sys.stdout)
"#;

/// One sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub family_type: String,
}

/// Parse an exposition with the real parser; panics with its error when it
/// refuses the text (which is what a scrape would do).
pub fn parse(text: &str, openmetrics: bool) -> Vec<Sample> {
    let available = Command::new(PYTHON)
        .args([
            "-c",
            "import prometheus_client.parser, prometheus_client.openmetrics.parser",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        available,
        "the Prometheus text parser is missing: install Debian's python3-prometheus-client (scripts/test does)"
    );
    let mut child = Command::new(PYTHON)
        .args(["-c", PARSE, if openmetrics { "openmetrics" } else { "classic" }])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the parser");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write exposition");
    }
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("parser JSON");
    raw.into_iter()
        .map(|v| Sample {
            name: v["name"].as_str().unwrap_or_default().to_owned(),
            labels: v["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            value: v["value"].as_f64().unwrap_or(f64::NAN),
            family_type: v["type"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

/// The value of the one sample named `name` whose labels include `labels`
/// (0 when there is none: a counter never incremented has no series).
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    match matching.as_slice() {
        [] => 0.0,
        [one] => one.value,
        many => many.iter().map(|s| s.value).sum(),
    }
}
