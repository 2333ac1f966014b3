//! Policy files → [`PolicySet`]. Every `*.yaml`/`*.yml` in the directory is
//! one document; documents merge (names must be unique; rules keep file-name
//! then in-file order). Every reference is resolved and every pattern
//! compiled here, so evaluation cannot fail on the policy itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::schema::{self, AuthoritySpec, CheckSpec, IdentitySpec, PolicyDoc, RuleSpec};
use super::{
    AttestationRequirement, Authority, AuthorityKind, BlobSignatures, Check, CheckOp, CiClaim, Glob, Identity, Matcher,
    Mode, Mutability, NoMatch, PolicySet, Requirements, Rule, RuleAction, Sct, SignatureRequirement, Tlog, signers,
};
use crate::oci::{Algorithm, Digest, DigestHasher};
use crate::verify::signature::{PublicKey, SignatureHash, TrustRoot};

/// Why a policy directory was refused. Each names the file and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Yaml { path: PathBuf, source: yaml_serde::Error },
    #[error("{path}: {at}: {message}")]
    Invalid { path: PathBuf, at: String, message: String },
    #[error("no policy files (*.yaml) in {0}")]
    Empty(PathBuf),
    /// Two authorities accept one key: a single signature would satisfy
    /// both, which no `threshold` or `required` written over them intends.
    #[error(
        "authorities `{first}` and `{second}` both accept the key {fingerprint} ({} and {}): \
         one signature would satisfy both; give each signing key one authority",
        first_file.display(),
        second_file.display()
    )]
    SharedKey {
        first: String,
        second: String,
        fingerprint: Digest,
        first_file: PathBuf,
        second_file: PathBuf,
    },
}

struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, at: impl Into<String>, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            path: self.path.to_owned(),
            at: at.into(),
            message: message.into(),
        }
    }
}

/// Load and compile every policy document in `dir`.
pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| PolicyError::Read {
            path: dir.to_owned(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(PolicyError::Empty(dir.to_owned()));
    }
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Read {
            path: path.clone(),
            source,
        })?;
        let doc: PolicyDoc = yaml_serde::from_str(&text).map_err(|source| PolicyError::Yaml {
            path: path.clone(),
            source,
        })?;
        docs.push((path, text, doc));
    }
    compile(docs)
}

/// Compile parsed documents `(path, text, doc)`.
pub fn compile(docs: Vec<(PathBuf, String, PolicyDoc)>) -> Result<PolicySet, PolicyError> {
    let mut revision = DigestHasher::new(Algorithm::Sha256);
    let mut defaults: Option<(PathBuf, schema::Defaults)> = None;
    let mut trust_roots: BTreeMap<String, Arc<TrustRoot>> = BTreeMap::new();
    let mut keys: BTreeMap<String, Arc<PublicKey>> = BTreeMap::new();
    let mut key_files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut sources: Vec<PathBuf> = Vec::new();
    let mut authority_specs: Vec<(PathBuf, String, AuthoritySpec)> = Vec::new();
    let mut rule_specs: Vec<(PathBuf, RuleSpec)> = Vec::new();
    let mut promotion: Option<(PathBuf, schema::PromotionSpec)> = None;

    for (path, text, doc) in docs {
        let cx = Ctx { path: &path };
        if doc.api_version != schema::API_VERSION || doc.kind != schema::KIND {
            return Err(cx.err(
                "apiVersion/kind",
                format!("expected apiVersion {} and kind {}", schema::API_VERSION, schema::KIND),
            ));
        }
        hash_part(
            &mut revision,
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
                .as_bytes(),
        );
        hash_part(&mut revision, text.as_bytes());
        sources.push(path.clone());
        if let Some(d) = doc.defaults {
            if let Some((other, _)) = &defaults {
                return Err(cx.err("defaults", format!("defaults are already set in {}", other.display())));
            }
            defaults = Some((path.clone(), d));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for (name, spec) in doc.trust_roots {
            let file = base.join(&spec.trusted_root);
            let root = TrustRoot::load(&name, &file, spec.sha256.as_deref())
                .map_err(|e| cx.err(format!("trustRoots.{name}"), e.to_string()))?;
            hash_part(&mut revision, root.sha256.as_bytes());
            sources.push(file);
            unique(
                &cx,
                "trust root",
                &name,
                trust_roots.insert(name.clone(), Arc::new(root)).is_some(),
            )?;
        }
        for (name, spec) in doc.keys {
            let file = base.join(&spec.path);
            let pem = std::fs::read(&file)
                .map_err(|e| cx.err(format!("keys.{name}"), format!("cannot read {}: {e}", file.display())))?;
            hash_part(&mut revision, &pem);
            let hash = match spec.hash_algorithm.unwrap_or(schema::HashAlgorithm::Sha256) {
                schema::HashAlgorithm::Sha256 => SignatureHash::Sha256,
                schema::HashAlgorithm::Sha384 => SignatureHash::Sha384,
                schema::HashAlgorithm::Sha512 => SignatureHash::Sha512,
            };
            let key = PublicKey::from_pem(&pem, hash).map_err(|e| cx.err(format!("keys.{name}"), e.to_string()))?;
            unique(&cx, "key", &name, keys.insert(name.clone(), Arc::new(key)).is_some())?;
            key_files.insert(name, file.clone());
            sources.push(file);
        }
        for (name, spec) in doc.authorities {
            if authority_specs.iter().any(|(_, n, _)| *n == name) {
                return Err(cx.err(format!("authorities.{name}"), "authority name is used twice"));
            }
            authority_specs.push((path.clone(), name, spec));
        }
        if let Some(p) = doc.promotion {
            if let Some((other, _)) = &promotion {
                return Err(cx.err("promotion", format!("promotion is already set in {}", other.display())));
            }
            promotion = Some((path.clone(), p));
        }
        for rule in doc.rules {
            if rule_specs.iter().any(|(_, r)| r.name == rule.name) {
                return Err(cx.err(format!("rules.{}", rule.name), "rule name is used twice"));
            }
            rule_specs.push((path.clone(), rule));
        }
    }

    let mut authorities = BTreeMap::new();
    for (path, name, spec) in authority_specs {
        let cx = Ctx { path: &path };
        let a = authority(&cx, &name, spec, &keys, &trust_roots)?;
        authorities.insert(name, Arc::new(a));
    }
    let defaults = defaults.map(|(_, d)| d).unwrap_or_default();
    let mut rules = Vec::new();
    for (path, spec) in rule_specs {
        let cx = Ctx { path: &path };
        rules.push(rule(&cx, spec, &defaults, &authorities)?);
    }
    let (promoter, promotion_rules) = match promotion {
        Some((path, p)) => promotion_section(&Ctx { path: &path }, p, &defaults, &authorities, &rules)?,
        None => (None, Vec::new()),
    };
    if let Some(shared) = signers::shared_key(&authorities) {
        let file = |key: &str| key_files.get(key).cloned().unwrap_or_default();
        return Err(PolicyError::SharedKey {
            first_file: file(&shared.first.1),
            second_file: file(&shared.second.1),
            first: shared.first.0,
            second: shared.second.0,
            fingerprint: shared.fingerprint,
        });
    }
    let mut warnings = shadow_warnings(&rules);
    warnings.extend(signers::keyless_overlaps(&authorities));
    let revision = revision.finish().hex();
    let mut seen = BTreeSet::new();
    sources.retain(|file| seen.insert(file.clone()));
    Ok(PolicySet {
        revision,
        rules,
        no_match: defaults.no_match.unwrap_or(NoMatch::Deny),
        authorities,
        promoter,
        promotion_rules,
        warnings,
        sources,
    })
}

/// Length-prefixed, so that file boundaries cannot be shifted.
/// `promotion:`: the promoter must be an authority; its rules compile like
/// pull rules, with names of their own.
fn promotion_section(
    cx: &Ctx<'_>,
    p: schema::PromotionSpec,
    defaults: &schema::Defaults,
    authorities: &BTreeMap<String, Arc<Authority>>,
    pull_rules: &[Rule],
) -> Result<(Option<String>, Vec<Rule>), PolicyError> {
    if let Some(name) = &p.promoter
        && !authorities.contains_key(name)
    {
        return Err(cx.err("promotion.promoter", format!("no authority named `{name}`")));
    }
    let mut rules: Vec<Rule> = Vec::new();
    for spec in p.rules {
        let at = format!("promotion.rules.{}", spec.name);
        if pull_rules.iter().chain(rules.iter()).any(|r| r.name == spec.name) {
            return Err(cx.err(at, "rule name is used twice"));
        }
        rules.push(rule(cx, spec, defaults, authorities)?);
    }
    Ok((p.promoter, rules))
}

fn hash_part(h: &mut DigestHasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

fn unique(cx: &Ctx<'_>, what: &str, name: &str, duplicate: bool) -> Result<(), PolicyError> {
    if duplicate {
        Err(cx.err(name, format!("{what} name `{name}` is used twice")))
    } else {
        Ok(())
    }
}

fn authority(
    cx: &Ctx<'_>,
    name: &str,
    spec: AuthoritySpec,
    keys: &BTreeMap<String, Arc<PublicKey>>,
    trust_roots: &BTreeMap<String, Arc<TrustRoot>>,
) -> Result<Authority, PolicyError> {
    let at = format!("authorities.{name}");
    let root = |r: &str| {
        trust_roots
            .get(r)
            .cloned()
            .ok_or_else(|| cx.err(&at, format!("unknown trust root `{r}`")))
    };
    let (kind, trust_root, default_tlog) = match (spec.key, spec.keyless) {
        (Some(k), None) => {
            if k.keys.is_empty() {
                return Err(cx.err(&at, "a key authority needs at least one key"));
            }
            let list = k
                .keys
                .iter()
                .map(|kn| {
                    keys.get(kn)
                        .cloned()
                        .map(|key| (kn.clone(), key))
                        .ok_or_else(|| cx.err(&at, format!("unknown key `{kn}`")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let tr = spec.trust_root.as_deref().map(root).transpose()?;
            (AuthorityKind::Key { keys: list }, tr, Tlog::Optional)
        }
        (None, Some(kl)) => {
            if spec.trust_root.is_some() {
                return Err(cx.err(
                    &at,
                    "keyless authorities name their trust root under `keyless.trustRoot`",
                ));
            }
            if kl.identities.is_empty() {
                return Err(cx.err(&at, "a keyless authority needs at least one identity"));
            }
            let tr = root(&kl.trust_root)?;
            let identities = kl
                .identities
                .into_iter()
                .enumerate()
                .map(|(i, id)| identity(cx, &format!("{at}.keyless.identities[{i}]"), id))
                .collect::<Result<Vec<_>, _>>()?;
            (AuthorityKind::Keyless { identities }, Some(tr), Tlog::Required)
        }
        _ => return Err(cx.err(&at, "give exactly one of `key` or `keyless`")),
    };
    let tlog = match spec.tlog {
        None => default_tlog,
        Some(schema::TlogMode::Required) => Tlog::Required,
        Some(schema::TlogMode::Optional) => Tlog::Optional,
        Some(schema::TlogMode::Ignore) => Tlog::Ignore,
    };
    if matches!(kind, AuthorityKind::Keyless { .. }) && tlog == Tlog::Ignore {
        return Err(cx.err(
            &at,
            "keyless signatures need a verified time: `tlog: ignore` is not allowed",
        ));
    }
    if tlog != Tlog::Ignore && trust_root.is_none() {
        return Err(cx.err(
            &at,
            "`tlog: required|optional` needs a `trustRoot` with the Rekor keys (or set `tlog: ignore`)",
        ));
    }
    let sct = match spec.sct {
        Some(schema::SctMode::Ignore) => Sct::Ignore,
        _ => Sct::Required,
    };
    let blob_signatures = if spec.accept_blob_signatures {
        BlobSignatures::AcceptOverManifest
    } else {
        BlobSignatures::Refuse
    };
    Ok(Authority {
        name: name.to_owned(),
        kind,
        tlog,
        sct,
        trust_root,
        blob_signatures,
    })
}

fn matcher(
    cx: &Ctx<'_>,
    at: &str,
    field: &str,
    exact: Option<String>,
    regex: Option<String>,
    required: bool,
) -> Result<Option<Matcher>, PolicyError> {
    match (exact, regex) {
        (Some(_), Some(_)) => Err(cx.err(at, format!("give `{field}` or `{field}RegExp`, not both"))),
        (Some(e), None) => Ok(Some(Matcher::Exact(e))),
        (None, Some(r)) => Matcher::anchored(&r)
            .map(Some)
            .map_err(|e| cx.err(at, format!("`{field}RegExp`: {e}"))),
        (None, None) if required => Err(cx.err(at, format!("`{field}` or `{field}RegExp` is required"))),
        (None, None) => Ok(None),
    }
}

fn identity(cx: &Ctx<'_>, at: &str, id: IdentitySpec) -> Result<Identity, PolicyError> {
    let required = |m: Option<Matcher>| m.ok_or_else(|| cx.err(at, "missing matcher"));
    let issuer = required(matcher(cx, at, "issuer", id.issuer, id.issuer_reg_exp, true)?)?;
    let subject = required(matcher(cx, at, "subject", id.subject, id.subject_reg_exp, true)?)?;
    let mut claims = Vec::new();
    let mut add = |claim: CiClaim, field: &str, exact: Option<String>, re: Option<String>| -> Result<(), PolicyError> {
        if let Some(m) = matcher(cx, at, field, exact, re, false)? {
            claims.push((claim, m));
        }
        Ok(())
    };
    add(
        CiClaim::BuildSignerUri,
        "buildSignerUri",
        id.build_signer_uri,
        id.build_signer_uri_reg_exp,
    )?;
    add(
        CiClaim::BuildSignerDigest,
        "buildSignerDigest",
        id.build_signer_digest,
        None,
    )?;
    add(
        CiClaim::RunnerEnvironment,
        "runnerEnvironment",
        id.runner_environment,
        None,
    )?;
    add(
        CiClaim::SourceRepository,
        "sourceRepository",
        id.source_repository,
        id.source_repository_reg_exp,
    )?;
    add(
        CiClaim::SourceRepositoryDigest,
        "sourceRepositoryDigest",
        id.source_repository_digest,
        None,
    )?;
    add(
        CiClaim::SourceRepositoryRef,
        "sourceRepositoryRef",
        id.source_repository_ref,
        id.source_repository_ref_reg_exp,
    )?;
    add(
        CiClaim::SourceRepositoryOwnerUri,
        "sourceRepositoryOwnerUri",
        id.source_repository_owner_uri,
        None,
    )?;
    add(
        CiClaim::BuildConfigUri,
        "buildConfigUri",
        id.build_config_uri,
        id.build_config_uri_reg_exp,
    )?;
    add(CiClaim::BuildTrigger, "buildTrigger", id.build_trigger, None)?;
    Ok(Identity {
        issuer,
        subject,
        claims,
    })
}

fn rule(
    cx: &Ctx<'_>,
    spec: RuleSpec,
    defaults: &schema::Defaults,
    authorities: &BTreeMap<String, Arc<Authority>>,
) -> Result<Rule, PolicyError> {
    let at = format!("rules.{}", spec.name);
    let glob_err = |e: super::glob::GlobError| cx.err(&at, e.to_string());
    if spec.matches.repositories.is_empty() {
        return Err(cx.err(&at, "`match.repositories` needs at least one glob (`**` for all)"));
    }
    let registry = spec
        .matches
        .registry
        .as_deref()
        .map(Glob::single)
        .transpose()
        .map_err(glob_err)?;
    let repositories = spec
        .matches
        .repositories
        .iter()
        .map(|g| Glob::path(g))
        .collect::<Result<_, _>>()
        .map_err(glob_err)?;
    let tags = spec
        .matches
        .tags
        .iter()
        .map(|g| Glob::single(g))
        .collect::<Result<_, _>>()
        .map_err(glob_err)?;
    let action = match (spec.static_verdict, spec.require) {
        (Some(v), None) => RuleAction::Static(v),
        (None, Some(req)) => RuleAction::Verify(requirements(cx, &at, req, authorities)?),
        (Some(_), Some(_)) => {
            return Err(cx.err(&at, "a rule has either `static` or `require`, not both"));
        }
        (None, None) => return Err(cx.err(&at, "a rule needs `static: allow|deny` or `require`")),
    };
    let formats = spec
        .formats
        .or_else(|| defaults.formats.clone())
        .unwrap_or_else(|| vec![super::Format::Bundle, super::Format::Legacy]);
    if formats.is_empty() {
        return Err(cx.err(&at, "`formats` must not be empty"));
    }
    let tags_spec = spec.tags;
    Ok(Rule {
        name: spec.name,
        registry,
        repositories,
        tags,
        mode: spec.mode.or(defaults.mode).unwrap_or(Mode::Enforce),
        action,
        formats,
        mutable_tags: tags_spec.as_ref().and_then(|t| t.mutable).unwrap_or(Mutability::Allow),
        require_digest: tags_spec.is_some_and(|t| t.require_digest),
        index_covers_children: spec
            .index_covers_children
            .or(defaults.index_covers_children)
            .unwrap_or(true),
    })
}

fn requirements(
    cx: &Ctx<'_>,
    at: &str,
    req: schema::RequireSpec,
    authorities: &BTreeMap<String, Arc<Authority>>,
) -> Result<Requirements, PolicyError> {
    let known = |names: &[String], where_: &str| -> Result<(), PolicyError> {
        let mut seen = BTreeSet::new();
        for n in names {
            if !authorities.contains_key(n) {
                return Err(cx.err(at, format!("{where_}: unknown authority `{n}`")));
            }
            if !seen.insert(n) {
                return Err(cx.err(at, format!("{where_}: authority `{n}` is listed twice")));
            }
        }
        Ok(())
    };
    let threshold = |t: Option<usize>, n: usize, where_: &str| -> Result<usize, PolicyError> {
        let t = t.unwrap_or(1);
        if t == 0 || t > n {
            return Err(cx.err(at, format!("{where_}: threshold {t} must be between 1 and {n}")));
        }
        Ok(t)
    };
    let signatures = match req.signatures {
        None => None,
        Some(s) => {
            if s.any_of.is_empty() {
                return Err(cx.err(at, "require.signatures.anyOf needs at least one authority"));
            }
            known(&s.any_of, "require.signatures.anyOf")?;
            if let Some(r) = s.required.iter().find(|r| !s.any_of.contains(r)) {
                return Err(cx.err(
                    at,
                    format!("require.signatures.required: `{r}` must also be listed in anyOf"),
                ));
            }
            let t = threshold(s.threshold, s.any_of.len(), "require.signatures")?;
            if s.required.len() > t {
                return Err(cx.err(at, "require.signatures: more required authorities than the threshold"));
            }
            Some(SignatureRequirement {
                any_of: s.any_of,
                threshold: t,
                required: s.required,
            })
        }
    };
    let mut attestations = Vec::new();
    for a in req.attestations {
        let where_ = format!("require.attestations.{}", a.name);
        if a.authorities.is_empty() {
            return Err(cx.err(at, format!("{where_}: needs at least one authority")));
        }
        known(&a.authorities, &where_)?;
        let t = threshold(a.threshold, a.authorities.len(), &where_)?;
        let checks = a
            .checks
            .into_iter()
            .map(|c| check(cx, at, &where_, c))
            .collect::<Result<_, _>>()?;
        attestations.push(AttestationRequirement {
            name: a.name,
            predicate_type: a.predicate_type,
            authorities: a.authorities,
            threshold: t,
            checks,
        });
    }
    if signatures.is_none() && attestations.is_empty() {
        return Err(cx.err(at, "`require` needs `signatures` or `attestations`"));
    }
    Ok(Requirements {
        signatures,
        attestations,
    })
}

fn check(cx: &Ctx<'_>, at: &str, where_: &str, c: CheckSpec) -> Result<Check, PolicyError> {
    if !(c.path.is_empty() || c.path.starts_with('/')) {
        return Err(cx.err(at, format!("{where_}: check path `{}` is not a JSON pointer", c.path)));
    }
    let mut ops = Vec::new();
    if let Some(v) = c.equals {
        ops.push(CheckOp::Equals(v));
    }
    if let Some(v) = c.one_of {
        ops.push(CheckOp::In(v));
    }
    if let Some(r) = c.matches {
        let re = regex::Regex::new(&format!("^(?:{r})$")).map_err(|e| cx.err(at, format!("{where_}: {e}")))?;
        ops.push(CheckOp::Matches(re));
    }
    if let Some(s) = c.starts_with {
        ops.push(CheckOp::StartsWith(s));
    }
    if let Some(b) = c.exists {
        ops.push(CheckOp::Exists(b));
    }
    if ops.len() != 1 {
        return Err(cx.err(
            at,
            format!(
                "{where_}: check `{}` needs exactly one of equals, in, matches, startsWith, exists",
                c.path
            ),
        ));
    }
    let op = ops.remove(0);
    Ok(Check { pointer: c.path, op })
}

/// A rule is shadowed when an earlier rule matches everything it matches.
fn shadow_warnings(rules: &[Rule]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, later) in rules.iter().enumerate() {
        for earlier in &rules[..i] {
            let registry = match (&earlier.registry, &later.registry) {
                (None, _) => true,
                (Some(e), Some(l)) => l.is_covered_by(e),
                (Some(_), None) => false,
            };
            let repos = later
                .repositories
                .iter()
                .all(|l| earlier.repositories.iter().any(|e| l.is_covered_by(e)));
            let tags = earlier.tags.is_empty()
                || (!later.tags.is_empty()
                    && later
                        .tags
                        .iter()
                        .all(|l| earlier.tags.iter().any(|e| l.is_covered_by(e))));
            if registry && repos && tags {
                out.push(format!(
                    "rule `{}` is shadowed by the earlier rule `{}` and never applies",
                    later.name, earlier.name
                ));
                break;
            }
        }
    }
    out
}
