//! The identity of a client certificate that rustls has already verified
//! against `auth.clientCA`: its subject DN (RFC 4514) and its SANs.

use x509_cert::der::Decode;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use super::identity::Identity;

/// `cert:` names of a verified end-entity certificate (DER): the subject
/// DN first (empty when the subject is), then DNS, URI, e-mail and IP SANs.
/// `None` when the certificate cannot be decoded (rustls accepted it, so
/// this does not happen in practice; the client is then unauthenticated).
pub fn identity(der: &[u8]) -> Option<Identity> {
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let tbs = &cert.tbs_certificate;
    let mut names = vec![tbs.subject.to_string()];
    for ext in tbs.extensions.iter().flatten() {
        if ext.extn_id != <SubjectAltName as x509_cert::der::oid::AssociatedOid>::OID {
            continue;
        }
        let Ok(san) = SubjectAltName::from_der(ext.extn_value.as_bytes()) else {
            continue;
        };
        names.extend(san.0.iter().filter_map(general_name));
    }
    if names.iter().all(String::is_empty) {
        return None;
    }
    Some(Identity::Cert { names })
}

fn general_name(n: &GeneralName) -> Option<String> {
    match n {
        GeneralName::DnsName(s) | GeneralName::UniformResourceIdentifier(s) | GeneralName::Rfc822Name(s) => {
            Some(s.to_string())
        }
        GeneralName::IpAddress(octets) => match octets.as_bytes().len() {
            4 => <[u8; 4]>::try_from(octets.as_bytes())
                .ok()
                .map(|b| std::net::IpAddr::from(b).to_string()),
            16 => <[u8; 16]>::try_from(octets.as_bytes())
                .ok()
                .map(|b| std::net::IpAddr::from(b).to_string()),
            _ => None,
        },
        _ => None,
    }
}
