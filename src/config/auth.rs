//! `auth:` → a validated [`AuthConfig`]: which files hold credentials, and
//! the authorization rules with every glob compiled. The files themselves
//! are read (and re-read on change) by `crate::auth`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawAuth, RawAuthRule};
use crate::oci::Glob;

/// Issued tokens live this long unless `auth.tokenTtl` says otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Validated `auth:`.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub htpasswd: Option<PathBuf>,
    pub groups_file: Option<PathBuf>,
    /// Inline groups: group name → user names.
    pub groups: BTreeMap<String, Vec<String>>,
    pub tokens: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub anonymous: bool,
    pub token_key: Option<PathBuf>,
    pub token_ttl: Duration,
    pub service: String,
    pub realm: Option<String>,
    pub rules: Vec<AuthRule>,
}

/// Who a rule names.
#[derive(Clone, Debug)]
pub enum IdentityPattern {
    /// `user:NAME` or a bare `NAME` (globs allowed): an htpasswd user or a
    /// static token's name.
    User(Glob),
    /// `group:NAME`: a member of the group (htpasswd companion or inline).
    Group(Glob),
    /// `cert:GLOB`: a client certificate whose subject DN or a SAN matches.
    Cert(Glob),
    /// `anonymous`: a client without credentials (only with `anonymous: true`).
    Anonymous,
}

/// One rule: `identities` may pull from `registry` the `repositories`.
#[derive(Clone, Debug)]
pub struct AuthRule {
    pub identities: Vec<IdentityPattern>,
    /// `None`: any registry.
    pub registry: Option<Glob>,
    /// Never empty (`**` when the YAML names none).
    pub repositories: Vec<Glob>,
}

impl IdentityPattern {
    /// Parse `user:NAME`, `group:NAME`, `cert:GLOB`, `anonymous` or a bare name.
    pub fn parse(text: &str) -> Result<IdentityPattern, String> {
        if text == "anonymous" {
            return Ok(IdentityPattern::Anonymous);
        }
        let glob = |name: &str| {
            if name.is_empty() || name.chars().any(char::is_whitespace) {
                return Err(format!("`{text}`: the name is empty or has white space"));
            }
            Glob::single(name).map_err(|e| format!("`{text}`: {e}"))
        };
        match text.split_once(':') {
            Some(("user", name)) => glob(name).map(IdentityPattern::User),
            Some(("group", name)) => glob(name).map(IdentityPattern::Group),
            Some(("cert", name)) => glob(name).map(IdentityPattern::Cert),
            Some((kind, _)) => Err(format!(
                "`{text}`: unknown kind `{kind}` (user:, group:, cert: or anonymous)"
            )),
            None => glob(text).map(IdentityPattern::User),
        }
    }
}

/// Validate `auth:`; errors are `(YAML path, message)`. `resolve` makes a
/// relative path relative to the configuration file.
pub(super) fn auth_config(raw: RawAuth, resolve: impl Fn(PathBuf) -> PathBuf) -> Result<AuthConfig, (String, String)> {
    let methods = [raw.htpasswd.is_some(), raw.tokens.is_some(), raw.client_ca.is_some()];
    if !raw.anonymous && !methods.iter().any(|m| *m) {
        return Err((
            "auth".to_owned(),
            "name at least one of `htpasswd`, `tokens`, `clientCA`, or set `anonymous: true`".to_owned(),
        ));
    }
    if raw.rules.is_empty() {
        return Err((
            "auth.rules".to_owned(),
            "at least one rule is needed: without one, nothing may be pulled".to_owned(),
        ));
    }
    let token_ttl = raw.token_ttl.map_or(DEFAULT_TOKEN_TTL, |d| d.0);
    if token_ttl.is_zero() || token_ttl > Duration::from_secs(24 * 3600) {
        return Err(("auth.tokenTtl".to_owned(), "must be between 1s and 24h".to_owned()));
    }
    let service = raw.service.unwrap_or_else(|| "portcullis".to_owned());
    if !quotable(&service) {
        return Err((
            "auth.service".to_owned(),
            "must be printable, without `\"` or `\\`".to_owned(),
        ));
    }
    if let Some(realm) = &raw.realm
        && (!quotable(realm) || !(realm.starts_with("https://") || realm.starts_with("http://")))
    {
        return Err((
            "auth.realm".to_owned(),
            "must be an http(s) URL without `\"` or `\\`".to_owned(),
        ));
    }
    if let Some(group) = raw
        .groups
        .keys()
        .find(|g| g.is_empty() || g.contains(char::is_whitespace))
    {
        return Err((format!("auth.groups.{group}"), "not a group name".to_owned()));
    }
    let rules = raw
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| rule(r).map_err(|(at, m)| (format!("auth.rules[{i}].{at}"), m)))
        .collect::<Result<_, _>>()?;
    Ok(AuthConfig {
        htpasswd: raw.htpasswd.map(&resolve),
        groups_file: raw.groups_file.map(&resolve),
        groups: raw.groups,
        tokens: raw.tokens.map(&resolve),
        client_ca: raw.client_ca.map(&resolve),
        anonymous: raw.anonymous,
        token_key: raw.token_key.map(&resolve),
        token_ttl,
        service,
        realm: raw.realm,
        rules,
    })
}

/// Safe inside a quoted challenge parameter.
fn quotable(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\')
}

fn rule(raw: RawAuthRule) -> Result<AuthRule, (String, String)> {
    if raw.identities.is_empty() {
        return Err(("identities".to_owned(), "name at least one identity".to_owned()));
    }
    let identities = raw
        .identities
        .iter()
        .enumerate()
        .map(|(i, t)| IdentityPattern::parse(t).map_err(|m| (format!("identities[{i}]"), m)))
        .collect::<Result<_, _>>()?;
    let registry = raw
        .matches
        .registry
        .as_deref()
        .map(Glob::single)
        .transpose()
        .map_err(|e| ("match.registry".to_owned(), e.to_string()))?;
    let mut repositories = raw
        .matches
        .repositories
        .iter()
        .enumerate()
        .map(|(i, g)| Glob::path(g).map_err(|e| (format!("match.repositories[{i}]"), e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    if repositories.is_empty() {
        repositories.push(Glob::path("**").map_err(|e| ("match.repositories".to_owned(), e.to_string()))?);
    }
    Ok(AuthRule {
        identities,
        registry,
        repositories,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn load(yaml: &str) -> Result<Config, String> {
        Config::from_yaml(yaml, "/etc/portcullis/config.yaml", &Overrides::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn config_check_names_the_auth_mode() {
        let c = load(
            "tls: { cert: c.pem, key: k.pem }\nauth:\n  htpasswd: htpasswd\n  clientCA: ca.pem\n  rules:\n    - identities: [alice]\n      match: {}\n",
        )
        .expect("valid");
        let text = c.describe();
        assert!(
            text.contains("clients: htpasswd /etc/portcullis/htpasswd, client certificates from /etc/portcullis/ca.pem, issued tokens (300s, a per-process key); anonymous refused; 1 authorization rules"),
            "{text}"
        );
        let err =
            load("auth:\n  clientCA: ca.pem\n  rules:\n    - identities: [a]\n      match: {}\n").expect_err("no tls");
        assert!(err.contains("auth.clientCA"), "{err}");
    }

    #[test]
    fn identity_patterns() {
        assert!(matches!(
            IdentityPattern::parse("anonymous"),
            Ok(IdentityPattern::Anonymous)
        ));
        assert!(matches!(IdentityPattern::parse("alice"), Ok(IdentityPattern::User(_))));
        assert!(matches!(
            IdentityPattern::parse("user:alice"),
            Ok(IdentityPattern::User(_))
        ));
        assert!(matches!(
            IdentityPattern::parse("group:ci"),
            Ok(IdentityPattern::Group(_))
        ));
        assert!(matches!(
            IdentityPattern::parse("cert:CN=node-*"),
            Ok(IdentityPattern::Cert(_))
        ));
        assert!(IdentityPattern::parse("role:x").is_err());
        assert!(IdentityPattern::parse("user:").is_err());
        assert!(IdentityPattern::parse("a b").is_err());
    }

    #[test]
    fn auth_section_is_validated_and_paths_resolved() {
        let c = load(
            "auth:\n  htpasswd: htpasswd\n  anonymous: false\n  rules:\n    - identities: [\"group:ci\", \"cert:CN=node-*\", anonymous]\n      match: { registry: registry.internal, repositories: [\"apps/**\"] }\n",
        )
        .expect("valid");
        let a = c.auth.expect("auth");
        assert_eq!(a.htpasswd, Some(PathBuf::from("/etc/portcullis/htpasswd")));
        assert_eq!(a.rules[0].identities.len(), 3);
        assert_eq!(a.token_ttl, DEFAULT_TOKEN_TTL);
        assert_eq!(a.service, "portcullis");
        for (yaml, needle) in [
            ("auth:\n  htpasswd: x\n  colour: red\n  rules: []\n", "colour"),
            ("auth:\n  htpasswd: x\n  rules: []\n", "auth.rules"),
            (
                "auth:\n  rules:\n    - identities: [a]\n      match: {}\n",
                "at least one of",
            ),
            (
                "auth:\n  htpasswd: x\n  rules:\n    - identities: [\"role:a\"]\n      match: {}\n",
                "auth.rules[0].identities[0]",
            ),
            (
                "auth:\n  htpasswd: x\n  rules:\n    - identities: [a]\n      match: { repositories: [\"a/**b\"] }\n",
                "auth.rules[0].match.repositories[0]",
            ),
            (
                "auth:\n  htpasswd: x\n  rules:\n    - identities: [a]\n      match: { repository: a }\n",
                "repository",
            ),
            (
                "auth:\n  htpasswd: x\n  service: 'a\"b'\n  rules:\n    - identities: [a]\n      match: {}\n",
                "auth.service",
            ),
        ] {
            let err = load(yaml).expect_err(yaml);
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }
}
