//! Verified promotion: copy the exact digest the gate admitted, with its
//! verification material, from one registry to another, and move the
//! destination tag last.
//!
//! ```text
//! resolve SRC once ─► admit (the proxy's gate, pull rules of the source) ─► digest D
//!      (refused if `promotion.promoter` is among the authorities that satisfied it)
//! read DST tag (T0; --expect-current must agree)
//! copy children before parents: blobs (present │ mount │ stream while hashed),
//!      child manifests, D (exact bytes and media type)
//! copy material of D and, for an index, of each child: referrers (by digest),
//!      then the .sig/.att/.sbom tags (a different object at the destination:
//!      merged, its layers kept, `legacy`) and the sha256-<hex> fallback index
//!      (by tag; at a destination without the referrers API created or merged,
//!      existing entries kept: `fallback`, the one writer of that index)
//! with a promoter key: sign the promotion record (SLSA VSA in DSSE in a Sigstore
//!      bundle) and attach it as a referrer of D (fallback index updated if needed)
//! read D back from DST by digest ─► admit again at DST (its bytes, its signatures)
//! DST tag still T0? ─► PUT D under the tag           (else refused, nothing moved)
//! ```
//! A failure at any step leaves the destination tag untouched; what was
//! copied before it is content-addressed, and a rerun skips it.
//!
//! Imports: `oci`, `policy` (authorities, signer ids), `upstream`, `verify`, `proxy`.

pub mod copy;
pub mod fallback;
pub mod legacy;
pub mod record;

use crate::oci::{Digest, Reference, Tag};
use crate::policy::{Authority, AuthorityKind, SignerId};
use crate::proxy::{self, Proxy, Target};
use crate::telemetry::Requester;
use crate::upstream;
use crate::verify::VerifiedManifest;
use copy::Copier;
pub use copy::{CopyError, CopyStats, DEFAULT_CHUNK_BYTES};

/// What the destination tag must name before it moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// The tag must not exist (`--expect-current none`).
    Absent,
    Digest(Digest),
}

impl std::str::FromStr for Expected {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(Expected::Absent);
        }
        s.parse()
            .map(Expected::Digest)
            .map_err(|_| format!("`{s}` is neither a digest nor `none`"))
    }
}

impl Expected {
    fn of(current: Option<&Digest>) -> Expected {
        current.map_or(Expected::Absent, |d| Expected::Digest(d.clone()))
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Absent => f.write_str("no tag"),
            Expected::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// One promotion.
#[derive(Debug, Clone)]
pub struct Plan {
    pub src: Target,
    pub src_ref: Reference,
    pub dst: Target,
    pub dst_tag: Tag,
    pub expect_current: Option<Expected>,
    pub dry_run: bool,
    pub chunk_bytes: usize,
    /// Sign and attach a promotion record with this key.
    pub promoter_key: Option<std::sync::Arc<record::PromoterKey>>,
}

/// A promotion that completed (or, dry, would have).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Promoted {
    pub digest: Digest,
    /// What the destination tag named before (`None`: it did not exist).
    pub previous: Option<Digest>,
    pub copied: CopyStats,
    pub material_manifests: usize,
    /// The promotion record's referrer manifest, when one was signed.
    pub record: Option<Digest>,
    pub dry_run: bool,
    /// Things that did not stop the promotion but an operator should know.
    pub warnings: Vec<String>,
}

/// Why a promotion did not happen. [`PromoteError::exit_code`]: 1 for a
/// policy denial, 2 for everything that failed to complete.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("denied by policy at the source: {0}")]
    Denied(String),
    #[error("denied by policy at the destination after the copy: {0}")]
    DeniedAtDestination(String),
    #[error(
        "separation of roles: the promoter's authority `{0}` is among the signers that satisfied the source's requirement"
    )]
    PromoterSigned(String),
    #[error(
        "separation of roles: the promoter's authority `{authority}` accepts {signer}, who signed for the source's requirement"
    )]
    PromoterAmongSigners { authority: String, signer: String },
    #[error("--sign-key is not a key of the promoter's authority `{0}`")]
    NotThePromotersKey(String),
    #[error(
        "the promoter's authority `{0}` is keyless: a promotion record is signed with --sign-key by a key authority (keyless record signing is not implemented)"
    )]
    KeylessRecord(String),
    #[error("source: {0}")]
    Source(proxy::Error),
    #[error("destination: {0}")]
    Destination(upstream::Error),
    #[error("destination check: {0}")]
    DestinationCheck(proxy::Error),
    #[error("promotion record: {0}")]
    Record(#[from] record::RecordError),
    #[error("copy: {0}")]
    Copy(#[from] CopyError),
    #[error(transparent)]
    FallbackIndex(#[from] fallback::FallbackError),
    #[error(transparent)]
    LegacyMerge(#[from] legacy::MergeError),
    #[error("destination tag {tag} names {found}, expected {expected}: refusing to overwrite it")]
    TagChanged {
        tag: Tag,
        expected: Expected,
        found: Expected,
    },
    #[error("the destination serves {found} for the digest {expected} that was copied")]
    ReadBack { expected: Digest, found: Digest },
}

impl PromoteError {
    pub fn exit_code(&self) -> u8 {
        match self {
            PromoteError::Denied(_)
            | PromoteError::DeniedAtDestination(_)
            | PromoteError::PromoterSigned(_)
            | PromoteError::PromoterAmongSigners { .. } => 1,
            _ => 2,
        }
    }

    fn at_source(e: proxy::Error) -> PromoteError {
        match e {
            proxy::Error::Denied { message } => PromoteError::Denied(message),
            other => PromoteError::Source(other),
        }
    }
}

fn requester() -> Requester {
    Requester {
        client: "portcullis promote".to_owned(),
        identity: "-".to_owned(),
    }
}

/// Run `plan` through `proxy`'s registries and gate.
pub async fn run(proxy: &Proxy, plan: &Plan) -> Result<Promoted, PromoteError> {
    check_signing_key(proxy, plan)?;
    // Resolve once and admit: from here on everything is by this digest.
    let admitted = Box::pin(proxy.manifest(&plan.src, &plan.src_ref, None, &requester()))
        .await
        .map_err(PromoteError::at_source)?;
    check_roles(proxy, admitted.manifest.satisfied(), admitted.manifest.signers())?;
    let digest = admitted.manifest.digest().clone();
    check_promotion_rule(proxy, plan, &digest).await?;
    let previous = current_tag(plan).await?;
    let expected = plan
        .expect_current
        .clone()
        .unwrap_or_else(|| Expected::of(previous.as_ref()));
    check_tag(plan, &expected, previous.as_ref())?;
    let mut done = Promoted {
        digest: digest.clone(),
        previous,
        copied: CopyStats::default(),
        material_manifests: 0,
        record: None,
        dry_run: plan.dry_run,
        warnings: Vec::new(),
    };
    if plan.dry_run {
        return Ok(done);
    }
    let mut copier = Copier::new(plan.src.clone(), plan.dst.clone(), plan.chunk_bytes);
    let manifest = copier.source_manifest(&digest).await?;
    copier.tree(&manifest).await?;
    let material = copy_all_material(proxy, plan, &mut copier, &manifest, &mut done.warnings).await?;
    done.material_manifests = material.len();
    if let Some(key) = &plan.promoter_key {
        let summary = summary(proxy, plan, &admitted.manifest, material);
        let (media_type, size) = (manifest.media_type().as_str(), manifest.bytes().len() as u64);
        done.record = Some(record::attach(&plan.dst, key, &summary, media_type, size).await?);
    }
    read_back_and_admit(proxy, plan, &copier, &digest).await?;
    // Last: the tag, only if nobody moved it meanwhile.
    check_tag(plan, &expected, current_tag(plan).await?.as_ref())?;
    copier.put(&manifest, &Reference::Tag(plan.dst_tag.clone())).await?;
    done.copied = copier.stats;
    Ok(done)
}

/// With `promotion.promoter` in the policy, the promoter must not be among
/// those who signed for the source: neither its authority among the
/// satisfied ones, nor its identity among the signers, whichever authority
/// accepted them (two authorities may accept the same key or keyless
/// identity, so comparing authority names alone would miss it).
fn check_roles(proxy: &Proxy, satisfied: &[String], signers: &[SignerId]) -> Result<(), PromoteError> {
    let Some(policy) = proxy.gate().policy() else {
        return Ok(());
    };
    let Some(name) = &policy.promoter else { return Ok(()) };
    if satisfied.contains(name) {
        return Err(PromoteError::PromoterSigned(name.clone()));
    }
    // The policy compiler refuses a promoter that names no authority.
    let Some(authority) = policy.authorities.get(name) else {
        return Ok(());
    };
    match signers.iter().find(|s| accepts(authority, s)) {
        Some(signer) => Err(PromoteError::PromoterAmongSigners {
            authority: name.clone(),
            signer: signer.to_string(),
        }),
        None => Ok(()),
    }
}

/// Whether the promoter's `authority` accepts `signer`: one of its keys,
/// or (keyless) an identity whose issuer and subject match. A [`SignerId`]
/// carries no CI claims, so an identity that also constrains claims is
/// taken as matching on issuer and subject alone: a separation check errs
/// towards refusing.
fn accepts(authority: &Authority, signer: &SignerId) -> bool {
    match (&authority.kind, signer) {
        (AuthorityKind::Key { keys }, SignerId::Key(fingerprint)) => {
            keys.iter().any(|(_, k)| &k.fingerprint() == fingerprint)
        }
        (AuthorityKind::Keyless { identities }, SignerId::Keyless { subject, issuer }) => identities
            .iter()
            .any(|id| id.subject.matches(subject) && id.issuer.matches(issuer)),
        _ => false,
    }
}

/// The first `promotion.rules` entry matching the destination must allow
/// the source digest too (besides its pull rules), without the promoter.
async fn check_promotion_rule(proxy: &Proxy, plan: &Plan, digest: &Digest) -> Result<(), PromoteError> {
    let host = plan.dst.registry.host().to_string();
    let destination = (host.as_str(), plan.dst.repo.as_str(), &plan.dst_tag);
    let decided = Box::pin(proxy.decide_promotion(&plan.src, digest, destination, &requester()))
        .await
        .map_err(PromoteError::Source)?;
    let Some((decision, message)) = decided else {
        return Ok(());
    };
    if !decision.serves() {
        return Err(PromoteError::Denied(message));
    }
    check_roles(proxy, decision.satisfied(), decision.signers())
}

/// With both a `promotion.promoter` and `--sign-key`, the record must be
/// signed by a key of that authority (checked before anything is done).
fn check_signing_key(proxy: &Proxy, plan: &Plan) -> Result<(), PromoteError> {
    let (Some(key), Some(policy)) = (&plan.promoter_key, proxy.gate().policy()) else {
        return Ok(());
    };
    let Some(name) = &policy.promoter else { return Ok(()) };
    let listed = match policy.authorities.get(name).map(|a| &a.kind) {
        Some(AuthorityKind::Key { keys }) => keys.iter().any(|(_, k)| &k.fingerprint() == key.fingerprint()),
        // Separation of roles works for a keyless promoter; the record is
        // signed with a key only.
        Some(AuthorityKind::Keyless { .. }) => return Err(PromoteError::KeylessRecord(name.clone())),
        None => false,
    };
    if listed {
        Ok(())
    } else {
        Err(PromoteError::NotThePromotersKey(name.clone()))
    }
}

async fn current_tag(plan: &Plan) -> Result<Option<Digest>, PromoteError> {
    plan.dst
        .registry
        .tag_digest(&plan.dst.repo, &plan.dst_tag)
        .await
        .map_err(PromoteError::Destination)
}

fn check_tag(plan: &Plan, expected: &Expected, current: Option<&Digest>) -> Result<(), PromoteError> {
    let found = Expected::of(current);
    if &found == expected {
        Ok(())
    } else {
        Err(PromoteError::TagChanged {
            tag: plan.dst_tag.clone(),
            expected: expected.clone(),
            found,
        })
    }
}

/// Copy the verification material of the promoted manifest and, for an
/// index, of each child it lists: a platform image's own signatures are
/// what a node pulling that platform by digest verifies.
async fn copy_all_material(
    proxy: &Proxy,
    plan: &Plan,
    copier: &mut Copier,
    manifest: &VerifiedManifest,
    warnings: &mut Vec<String>,
) -> Result<Vec<Digest>, PromoteError> {
    let mut subjects = vec![manifest.digest().clone()];
    if manifest.media_type().is_index() {
        subjects.extend(manifest.info().references.iter().map(|d| d.digest.clone()));
    }
    let mut all = Vec::new();
    for subject in &subjects {
        all.extend(copy_material(proxy, plan, copier, subject, warnings).await?);
    }
    Ok(all)
}

/// Copy every piece of verification material the source holds for
/// `digest`: referrers by digest, then the legacy and fallback tags; at a
/// destination without the referrers API, the fallback index is created or
/// merged (entries kept) so the referrers stay discoverable. Returns the
/// material manifests' digests.
async fn copy_material(
    proxy: &Proxy,
    plan: &Plan,
    copier: &mut Copier,
    digest: &Digest,
    warnings: &mut Vec<String>,
) -> Result<Vec<Digest>, PromoteError> {
    let refs = proxy
        .material_refs(&plan.src, digest)
        .await
        .map_err(PromoteError::Source)?;
    let mut entries = Vec::new();
    for referrer in &refs.referrers {
        let m = copier.source_manifest(referrer).await?;
        copier.tree(&m).await?;
        entries.push(fallback::descriptor(m.media_type().as_str(), m.digest(), m.bytes()));
    }
    let fallback_tag = fallback::tag_of(digest)?;
    let without_api = !refs.referrers.is_empty()
        && !fallback::api_available(&plan.dst, digest)
            .await
            .map_err(PromoteError::Destination)?;
    for (tag, material) in &refs.tags {
        let m = copier.source_manifest(material).await?;
        copier.tree(&m).await?;
        let now = plan
            .dst
            .registry
            .tag_digest(&plan.dst.repo, tag)
            .await
            .map_err(PromoteError::Destination)?;
        match now {
            Some(d) if &d == material => {}
            // Absent: the source's exact bytes (same digest on both sides).
            None => copier.put(&m, &Reference::Tag(tag.clone())).await?,
            // The destination's own fallback index: merged below, its
            // entries first, so nothing only the destination lists is lost.
            Some(_) if tag == &fallback_tag && without_api => {
                entries.splice(0..0, fallback::entries_of(m.bytes()));
            }
            // The destination's own fallback index, while it has the
            // referrers API (which clients use instead): left as it is.
            Some(d) if tag == &fallback_tag => warnings.push(format!(
                "destination tag {tag} names {d}, not the source's {material}: left as it is"
            )),
            // Another signature object is there already: the union of both
            // (overwriting could drop signatures only the destination has).
            Some(d) => merge_legacy(plan, copier, tag, &d, &m).await?,
        }
    }
    if without_api
        && let fallback::Extended::Merged { digest: index, added } =
            fallback::extend(&plan.dst, digest, &entries).await?
    {
        tracing::info!(subject = %digest, %index, added, "destination fallback index merged");
    }
    let mut all = refs.referrers;
    all.extend(refs.tags.into_iter().map(|(_, d)| d));
    Ok(all)
}

/// Replace the destination's legacy object under `tag` (digest `theirs`)
/// with its union with the source's `ours` (their layers first).
async fn merge_legacy(
    plan: &Plan,
    copier: &mut Copier,
    tag: &Tag,
    theirs: &Digest,
    ours: &VerifiedManifest,
) -> Result<(), PromoteError> {
    let existing = copier.destination_manifest(theirs).await?;
    let Some(merged) = legacy::merge(&existing, ours)? else {
        return Ok(());
    };
    copy::push_small_blob(&plan.dst, bytes::Bytes::from(merged.config))
        .await
        .map_err(PromoteError::Destination)?;
    let digest = Digest::of(crate::oci::Algorithm::Sha256, &merged.manifest);
    plan.dst
        .registry
        .put_manifest(
            &plan.dst.repo,
            &Reference::Tag(tag.clone()),
            &digest,
            &merged.media_type,
            bytes::Bytes::from(merged.manifest),
        )
        .await
        .map_err(PromoteError::Destination)?;
    tracing::info!(%tag, previous = %theirs, merged = %digest, "destination legacy signature object merged");
    Ok(())
}

/// What the promotion record states: the destination reference by digest,
/// the policy (directory and revision) the source was admitted under, and
/// the material copied with it.
fn summary(proxy: &Proxy, plan: &Plan, admitted: &proxy::Admitted, inputs: Vec<Digest>) -> record::Summary {
    let policy_uri = match proxy.gate().policy_dir() {
        Some(dir) => format!("file://{}", dir.display()),
        None => "portcullis:integrity-only".to_owned(),
    };
    record::Summary {
        resource_uri: format!("{}/{}@{}", plan.dst.registry.host(), plan.dst.repo, admitted.digest()),
        digest: admitted.digest().clone(),
        policy_uri,
        policy_revision: admitted.revision().map(str::to_owned),
        inputs,
    }
}

/// Read the promoted digest back from the destination (its bytes must hash
/// to it) and admit it again there: its bytes, its discoverable signatures.
async fn read_back_and_admit(proxy: &Proxy, plan: &Plan, copier: &Copier, digest: &Digest) -> Result<(), PromoteError> {
    let back = copier.destination_manifest(digest).await?;
    if back.digest() != digest {
        return Err(PromoteError::ReadBack {
            expected: digest.clone(),
            found: back.digest().clone(),
        });
    }
    let reference = Reference::Digest(digest.clone());
    match Box::pin(proxy.manifest(&plan.dst, &reference, None, &requester())).await {
        Ok(_) => Ok(()),
        Err(proxy::Error::Denied { message }) => Err(PromoteError::DeniedAtDestination(message)),
        Err(e) => Err(PromoteError::DestinationCheck(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn expectations_parse_and_compare() {
        let digest: Digest = D.parse().expect("digest");
        assert_eq!("none".parse::<Expected>(), Ok(Expected::Absent));
        assert_eq!(D.parse::<Expected>(), Ok(Expected::Digest(digest.clone())));
        for bad in ["", "None", "latest", "sha256:zz"] {
            assert!(bad.parse::<Expected>().is_err(), "{bad}");
        }
        assert_eq!(Expected::of(None), Expected::Absent);
        assert_eq!(Expected::of(Some(&digest)), Expected::Digest(digest.clone()));
        assert_eq!(Expected::Absent.to_string(), "no tag");
        assert_eq!(Expected::Digest(digest).to_string(), D);
    }

    fn authority(kind: AuthorityKind) -> Authority {
        Authority {
            name: "promoter".into(),
            kind,
            tlog: crate::policy::Tlog::Ignore,
            sct: crate::policy::Sct::Ignore,
            trust_root: None,
            blob_signatures: Default::default(),
        }
    }

    #[test]
    fn a_keyless_promoter_is_recognised_by_issuer_and_subject() {
        use crate::policy::{CiClaim, Identity, Matcher};
        let issuer = "https://token.actions.githubusercontent.com";
        let promoter = authority(AuthorityKind::Keyless {
            identities: vec![Identity {
                issuer: Matcher::Exact(issuer.into()),
                subject: Matcher::anchored(r"https://github\.com/acme/release/.*").expect("regex"),
                // Not in a SignerId: ignored, towards refusing.
                claims: vec![(CiClaim::SourceRepository, Matcher::Exact("acme/release".into()))],
            }],
        });
        let signer = |subject: &str, issuer: &str| SignerId::Keyless {
            subject: subject.into(),
            issuer: issuer.into(),
        };
        let release = "https://github.com/acme/release/.github/workflows/promote.yml@refs/heads/main";
        let build = "https://github.com/acme/app/.github/workflows/build.yml@refs/heads/main";
        assert!(accepts(&promoter, &signer(release, issuer)));
        assert!(!accepts(&promoter, &signer(build, issuer)));
        assert!(!accepts(&promoter, &signer(release, "https://accounts.google.com")));
        assert!(!accepts(&promoter, &SignerId::Key(D.parse().expect("digest"))));
    }

    fn generated_key() -> crate::verify::signature::PublicKey {
        use aws_lc_rs::encoding::AsDer as _;
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("key");
        let spki = pair.public_key().as_der().expect("spki");
        let hash = crate::verify::signature::SignatureHash::Sha256;
        crate::verify::signature::PublicKey::from_spki_der(spki.as_ref(), hash).expect("key")
    }

    #[test]
    fn a_key_promoter_is_recognised_by_fingerprint() {
        let (mine, other) = (generated_key(), generated_key());
        let promoter = authority(AuthorityKind::Key {
            keys: vec![("p".into(), std::sync::Arc::new(mine.clone()))],
        });
        assert!(accepts(&promoter, &SignerId::Key(mine.fingerprint())));
        assert!(!accepts(&promoter, &SignerId::Key(other.fingerprint())));
        let keyless = SignerId::Keyless {
            subject: "x".into(),
            issuer: "y".into(),
        };
        assert!(!accepts(&promoter, &keyless));
    }

    #[test]
    fn only_policy_denials_exit_1() {
        assert_eq!(PromoteError::Denied("x".into()).exit_code(), 1);
        assert_eq!(PromoteError::DeniedAtDestination("x".into()).exit_code(), 1);
        let among = PromoteError::PromoterAmongSigners {
            authority: "p".into(),
            signer: "key sha256:…".into(),
        };
        assert_eq!(among.exit_code(), 1);
        assert_eq!(PromoteError::KeylessRecord("p".into()).exit_code(), 2);
        let moved = PromoteError::TagChanged {
            tag: "stable".parse().expect("tag"),
            expected: Expected::Absent,
            found: Expected::Digest(D.parse().expect("digest")),
        };
        assert_eq!(moved.exit_code(), 2);
        assert_eq!(
            moved.to_string(),
            format!("destination tag stable names {D}, expected no tag: refusing to overwrite it")
        );
        let denied = PromoteError::at_source(proxy::Error::Denied { message: "no".into() });
        assert!(matches!(denied, PromoteError::Denied(m) if m == "no"));
        let other = PromoteError::at_source(proxy::Error::Internal("boom".into()));
        assert_eq!(other.exit_code(), 2);
    }
}
