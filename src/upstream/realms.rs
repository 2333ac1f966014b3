//! Which token realms may receive an upstream's credentials.
//!
//! The registry chooses the realm in its `WWW-Authenticate` challenge, so a
//! hostile (or compromised, or misconfigured) upstream could name any host
//! and collect the credentials the proxy holds for it. They go only to: the
//! upstream's own host:port, the documented token hosts of the built-in
//! registries, and the hosts listed in the upstream's `tokenRealms`.
//!
//! Built-in token hosts (checked against each registry's challenge):
//! Docker Hub (`registry-1.docker.io`) → `auth.docker.io`; ghcr.io
//! (`https://ghcr.io/token`) and quay.io (`https://quay.io/v2/auth`) serve
//! their realm on their own host; registry.k8s.io is anonymous (it redirects
//! to other hosts for content, and takes no credentials).

use http::Uri;

use crate::config::Upstream;
use crate::oci::RegistryHost;

/// Registry hosts (where the proxy connects) whose token service lives on
/// another, documented host.
const BUILT_IN_TOKEN_HOSTS: &[(&str, &str)] = &[
    ("registry-1.docker.io", "auth.docker.io"),
    ("index.docker.io", "auth.docker.io"),
    ("docker.io", "auth.docker.io"),
];

/// One allowed realm authority; `port: None` means the realm scheme's
/// default port (443 for https, 80 for http).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RealmHost {
    host: String,
    port: Option<u16>,
}

impl RealmHost {
    fn parse(authority: &str) -> Option<RealmHost> {
        let authority: http::uri::Authority = authority.parse().ok()?;
        Some(RealmHost {
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16(),
        })
    }

    fn matches(&self, host: &str, port: u16, default_port: u16) -> bool {
        self.host == host && self.port.unwrap_or(default_port) == port
    }
}

/// The realms that may receive one upstream's credentials.
#[derive(Debug, Clone)]
pub(super) struct RealmAllowList {
    hosts: Vec<RealmHost>,
}

impl RealmAllowList {
    pub(super) fn for_upstream(upstream: &Upstream) -> RealmAllowList {
        let mut hosts = Vec::new();
        if let Some(mut own) = RealmHost::parse(upstream.url.authority.as_str()) {
            // The registry itself already receives the credentials.
            own.port = Some(own.port.unwrap_or(if upstream.url.https { 443 } else { 80 }));
            let built_in = BUILT_IN_TOKEN_HOSTS
                .iter()
                .filter(|(registry, _)| *registry == own.host)
                .filter_map(|(_, token_host)| RealmHost::parse(token_host));
            hosts.extend(built_in);
            hosts.push(own);
        }
        hosts.extend(
            upstream
                .token_realms
                .iter()
                .filter_map(|h: &RegistryHost| RealmHost::parse(h.as_str())),
        );
        RealmAllowList { hosts }
    }

    /// Whether the realm at `realm` (an absolute URL) may be sent credentials.
    pub(super) fn permits(&self, realm: &Uri) -> bool {
        let Some(host) = realm.host() else {
            return false;
        };
        let default_port = if realm.scheme_str() == Some("https") { 443 } else { 80 };
        let port = realm.port_u16().unwrap_or(default_port);
        let host = host.to_ascii_lowercase();
        self.hosts.iter().any(|h| h.matches(&host, port, default_port))
    }

    /// The allowed hosts, for error messages.
    pub(super) fn describe(&self) -> String {
        let shown: Vec<String> = self
            .hosts
            .iter()
            .map(|h| match h.port {
                Some(port) => format!("{}:{port}", h.host),
                None => h.host.clone(),
            })
            .collect();
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    fn allow_list(yaml_entry: &str) -> RealmAllowList {
        let yaml = format!("upstreams:\n{yaml_entry}");
        let config = Config::from_yaml(&yaml, "t.yaml", &Overrides::default()).expect("config");
        RealmAllowList::for_upstream(&config.upstreams[0])
    }

    fn permits(list: &RealmAllowList, realm: &str) -> bool {
        list.permits(&realm.parse().expect("uri"))
    }

    #[test]
    fn docker_hub_gets_auth_docker_io_and_nothing_else() {
        let hub = allow_list("  - host: docker.io\n    url: https://registry-1.docker.io\n");
        assert!(permits(&hub, "https://auth.docker.io/token"));
        assert!(permits(&hub, "https://registry-1.docker.io/token"));
        assert!(!permits(&hub, "https://auth.docker.io:8443/token"), "another port");
        assert!(!permits(&hub, "https://evil.example/token"));
        assert!(!permits(&hub, "https://auth.docker.io.evil.example/token"));
        let ghcr = allow_list("  - host: ghcr.io\n    url: https://ghcr.io\n");
        assert!(permits(&ghcr, "https://ghcr.io/token"));
        assert!(
            !permits(&ghcr, "https://auth.docker.io/token"),
            "built-ins are per registry"
        );
    }

    #[test]
    fn own_host_is_host_and_port() {
        let local =
            allow_list("  - host: 127.0.0.1:5001\n    url: http://127.0.0.1:5001\n    insecurePlainHttp: true\n");
        assert!(permits(&local, "http://127.0.0.1:5001/token"));
        assert!(
            !permits(&local, "http://127.0.0.1:5002/token"),
            "another service on the host"
        );
        assert!(!permits(&local, "http://127.0.0.2:5001/token"));
    }

    #[test]
    fn configured_token_realms_extend_the_list() {
        let gitlab = allow_list(
            "  - host: registry.gitlab.com\n    url: https://registry.gitlab.com\n    tokenRealms: [gitlab.com, \"auth.example:8443\"]\n",
        );
        assert!(permits(&gitlab, "https://gitlab.com/jwt/auth"));
        assert!(permits(&gitlab, "https://GitLab.com:443/jwt/auth"));
        assert!(!permits(&gitlab, "https://gitlab.com:444/jwt/auth"));
        assert!(permits(&gitlab, "https://auth.example:8443/token"));
        assert!(!permits(&gitlab, "https://auth.example/token"));
        assert_eq!(
            gitlab.describe(),
            "registry.gitlab.com:443, gitlab.com, auth.example:8443"
        );
    }
}
