//! Strict decoding of signed payloads. cosign reads JSON with Go's
//! `encoding/json` (case-insensitive keys, last duplicate wins); a payload
//! that Go would read differently from us must not pass, so keys are exact,
//! unknown keys, duplicates and trailing data are errors.

use serde::Deserialize;

use crate::oci::{Digest, json};

/// `critical.type` of a cosign image signature.
pub const COSIGN_SIGNATURE_TYPE: &str = "cosign container image signature";

/// The simple-signing payload of a legacy cosign signature.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimpleSigning {
    pub critical: Critical,
    pub optional: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Critical {
    pub identity: CriticalIdentity,
    pub image: CriticalImage,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriticalIdentity {
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriticalImage {
    #[serde(rename = "docker-manifest-digest")]
    pub docker_manifest_digest: Digest,
}

/// Decode a simple-signing payload strictly.
pub fn simple_signing(bytes: &[u8]) -> Result<SimpleSigning, String> {
    json::check(bytes, &json::SIMPLE_SIGNING).map_err(|e| format!("simple-signing payload: {e}"))?;
    let payload: SimpleSigning = serde_json::from_slice(bytes).map_err(|e| format!("simple-signing payload: {e}"))?;
    if payload.critical.kind != COSIGN_SIGNATURE_TYPE {
        return Err(format!("simple-signing payload type is `{}`", payload.critical.kind));
    }
    Ok(payload)
}

/// An in-toto statement (v0.1 or v1), decoded strictly at the top level; the
/// predicate is kept as JSON for policy checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub statement_type: String,
    pub subject: Vec<Subject>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    /// cosign v3.0.x omitted an empty predicate (cosign#4634).
    #[serde(default)]
    pub predicate: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub struct Subject {
    #[serde(default)]
    pub name: Option<String>,
    pub digest: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: Option<serde_json::Value>,
}

pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// Decode a statement and require that one of its subjects is `image`.
pub fn statement_for(bytes: &[u8], image: &Digest) -> Result<(Statement, serde_json::Value), String> {
    // `Subject` keeps unknown members (in-toto allows them), so a `Digest`
    // beside `digest` would be the subject Go clients read: one reading.
    json::check(bytes, &json::IN_TOTO_STATEMENT).map_err(|e| format!("in-toto statement: {e}"))?;
    let statement: Statement = serde_json::from_slice(bytes).map_err(|e| format!("in-toto statement: {e}"))?;
    if !matches!(
        statement.statement_type.as_str(),
        "https://in-toto.io/Statement/v0.1" | "https://in-toto.io/Statement/v1"
    ) {
        return Err(format!("unknown statement type `{}`", statement.statement_type));
    }
    let wanted = image.hex();
    let named = statement.subject.iter().any(|s| {
        s.digest
            .get(image.algorithm().as_str())
            .is_some_and(|v| v.eq_ignore_ascii_case(&wanted))
    });
    if !named {
        return Err(format!("statement subject does not name {image}"));
    }
    let value = serde_json::from_slice(bytes).map_err(|e| format!("in-toto statement: {e}"))?;
    Ok((statement, value))
}

/// A DSSE envelope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    pub payload: String,
    pub signatures: Vec<EnvelopeSignature>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeSignature {
    #[serde(default)]
    pub keyid: Option<String>,
    pub sig: String,
}

/// DSSE pre-authentication encoding: the bytes a DSSE signature covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"critical":{"identity":{"docker-reference":"r/x"},"image":{"docker-manifest-digest":"sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00"},"type":"cosign container image signature"},"optional":null}"#;

    #[test]
    fn strict_simple_signing() {
        assert!(simple_signing(GOOD.as_bytes()).is_ok());
        // Go would accept each of these (or read them differently); we refuse.
        let dup = GOOD.replace(r#""type":"#, r#""type":"x","type":"#);
        let case = GOOD.replace("docker-manifest-digest", "Docker-manifest-digest");
        let extra = GOOD.replace(r#""optional":null"#, r#""optional":null,"extra":1"#);
        let trailing = format!("{GOOD} {{}}");
        let wrong_type = GOOD.replace("cosign container image signature", "something else");
        for bad in [dup, case, extra, trailing, wrong_type] {
            assert!(simple_signing(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn pae_matches_the_spec_example() {
        // From the DSSE protocol specification.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn statement_subject_binding() {
        let d: Digest = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00"
            .parse()
            .expect("digest");
        let st = format!(
            r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"digest":{{"sha256":"{}"}}}}],"predicateType":"p","predicate":{{}}}}"#,
            d.hex()
        );
        assert!(statement_for(st.as_bytes(), &d).is_ok());
        let other = Digest::of(crate::oci::Algorithm::Sha256, b"x");
        assert!(statement_for(st.as_bytes(), &other).is_err());
        assert!(statement_for(st.replace("Statement/v1", "Statement/v9").as_bytes(), &d).is_err());
    }
}
