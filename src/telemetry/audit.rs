//! Audit events: one JSON line per admission decision (allow, deny, or
//! would-deny in audit mode), with the policy revision that made it.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// One admission decision, as written to the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    pub time: String,
    /// The client's address.
    pub client: String,
    /// The client's identity (`user:NAME`, `cert:DN`, `anonymous`).
    pub identity: String,
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: String,
    /// `allow`, `deny` or `would-deny` (audit mode: served anyway).
    pub verdict: &'static str,
    pub served: bool,
    pub rule: Option<String>,
    pub mode: &'static str,
    pub authorities_satisfied: Vec<String>,
    pub reason: String,
    /// `None` only in integrity-only mode.
    pub policy_revision: Option<String>,
    pub integrity_only: bool,
    /// Whether the verdict came from the cache.
    pub cached: bool,
}

/// Where audit events go.
pub struct AuditSink {
    out: Mutex<Box<dyn Write + Send>>,
    /// Events kept for the caller (the `verify` command).
    kept: Option<Mutex<Vec<AuditEvent>>>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditSink")
    }
}

impl AuditSink {
    pub fn stdout() -> AuditSink {
        AuditSink {
            out: Mutex::new(Box::new(std::io::stdout())),
            kept: None,
        }
    }

    /// Standard error: for commands whose standard output is their report
    /// (`export`, `import`).
    pub fn stderr() -> AuditSink {
        AuditSink {
            out: Mutex::new(Box::new(std::io::stderr())),
            kept: None,
        }
    }

    /// Keep events in memory (for `portcullis verify`), writing nothing.
    pub fn memory() -> AuditSink {
        AuditSink {
            out: Mutex::new(Box::new(std::io::sink())),
            kept: Some(Mutex::new(Vec::new())),
        }
    }

    /// The events kept so far (memory sinks only).
    pub fn kept(&self) -> Vec<AuditEvent> {
        self.kept
            .as_ref()
            .and_then(|k| k.lock().ok().map(|v| v.clone()))
            .unwrap_or_default()
    }

    /// Append to `path` (created if needed).
    pub fn file(path: &Path) -> std::io::Result<AuditSink> {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(AuditSink {
            out: Mutex::new(Box::new(f)),
            kept: None,
        })
    }

    /// Write one event as a JSON line. Failures are logged, never fatal.
    pub fn emit(&self, event: &AuditEvent) {
        if let Some(kept) = &self.kept
            && let Ok(mut k) = kept.lock()
        {
            k.push(event.clone());
        }
        self.write_line(event);
    }

    /// Write any other audit record (watch events) as one JSON line.
    pub fn emit_record(&self, record: &impl Serialize) {
        self.write_line(record);
    }

    fn write_line(&self, record: &impl Serialize) {
        let mut line = match serde_json::to_vec(record) {
            Ok(l) => l,
            Err(e) => return tracing::error!(error = %e, "cannot encode an audit event"),
        };
        line.push(b'\n');
        let written = match self.out.lock() {
            Ok(mut out) => out.write_all(&line).and_then(|()| out.flush()),
            Err(_) => Ok(()),
        };
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot write an audit event");
        }
    }
}

/// The current time in RFC 3339.
pub fn now() -> String {
    jiff::Timestamp::now().to_string()
}
