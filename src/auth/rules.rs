//! Authorization: the first rule that names the identity and matches the
//! registry and repository allows the pull; no such rule, no pull.

use super::identity::Identity;
use crate::config::{AuthRule, IdentityPattern};

/// Whether `pattern` names `identity`.
pub fn names(pattern: &IdentityPattern, identity: &Identity) -> bool {
    match (pattern, identity) {
        (IdentityPattern::Anonymous, Identity::Anonymous) => true,
        (IdentityPattern::User(g), Identity::User { name, .. }) => g.matches_text(name),
        (IdentityPattern::Group(g), Identity::User { groups, .. }) => groups.iter().any(|x| g.matches_text(x)),
        (IdentityPattern::Cert(g), Identity::Cert { names }) => names.iter().any(|n| g.matches_text(n)),
        _ => false,
    }
}

/// Whether `rule` covers `registry` / `repository` (upstream names).
fn covers(rule: &AuthRule, registry: &str, repository: &str) -> bool {
    rule.registry.as_ref().is_none_or(|g| g.matches(registry))
        && rule.repositories.iter().any(|g| g.matches(repository))
}

/// The index of the first rule allowing `identity` to pull `registry` /
/// `repository`.
pub fn first_match(rules: &[AuthRule], identity: &Identity, registry: &str, repository: &str) -> Option<usize> {
    rules
        .iter()
        .position(|r| r.identities.iter().any(|p| names(p, identity)) && covers(r, registry, repository))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Glob;

    fn rule(identities: &[&str], registry: Option<&str>, repos: &[&str]) -> AuthRule {
        AuthRule {
            identities: identities
                .iter()
                .map(|i| IdentityPattern::parse(i).expect("pattern"))
                .collect(),
            registry: registry.map(|r| Glob::single(r).expect("glob")),
            repositories: repos.iter().map(|r| Glob::path(r).expect("glob")).collect(),
        }
    }

    fn user(name: &str, groups: &[&str]) -> Identity {
        Identity::User {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = vec![
            rule(
                &["group:ci", "cert:CN=node-*", "anonymous"],
                Some("registry.internal"),
                &["apps/**"],
            ),
            rule(&["alice"], None, &["**"]),
            rule(&["user:bob"], Some("*.internal"), &["team/*"]),
            rule(&["cert:spiffe://cluster/ns/*/sa/puller"], None, &["**"]),
        ];
        let ci = user("robot", &["ci"]);
        assert_eq!(first_match(&rules, &ci, "registry.internal", "apps/web/api"), Some(0));
        assert_eq!(first_match(&rules, &ci, "registry.internal", "private/db"), None);
        assert_eq!(first_match(&rules, &ci, "docker.io", "apps/web"), None);
        assert_eq!(
            first_match(&rules, &user("alice", &[]), "docker.io", "library/alpine"),
            Some(1)
        );
        let bob = user("bob", &[]);
        assert_eq!(first_match(&rules, &bob, "registry.internal", "team/x"), Some(2));
        assert_eq!(first_match(&rules, &bob, "registry.internal", "team/x/y"), None);
        assert_eq!(
            first_match(&rules, &Identity::Anonymous, "registry.internal", "apps/a"),
            Some(0)
        );
        assert_eq!(first_match(&rules, &Identity::Anonymous, "docker.io", "apps/a"), None);
        let node = Identity::Cert {
            names: vec!["CN=node-7,O=Acme".into(), "node-7.cluster.local".into()],
        };
        assert_eq!(first_match(&rules, &node, "registry.internal", "apps/a"), Some(0));
        let spiffe = Identity::Cert {
            names: vec![String::new(), "spiffe://cluster/ns/prod/sa/puller".into()],
        };
        assert_eq!(first_match(&rules, &spiffe, "ghcr.io", "org/x"), Some(3));
        // A user named like a certificate is not a certificate.
        assert_eq!(
            first_match(&rules, &user("CN=node-1", &[]), "registry.internal", "apps/a"),
            None
        );
    }
}
