//! Tokens issued by `/token` (the Docker registry token flow): HS256 JWTs
//! made and checked by `jsonwebtoken`, never by hand. The key is shared by
//! replicas through `auth.tokenKey`, or random per process.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::failure::AuthFailure;
use super::identity::{Identity, Method, Principal};

/// The issuer of every token.
pub const ISSUER: &str = "portcullis";
/// A key file shorter than this is refused (HS256 wants ≥ 256 bits).
pub const MIN_KEY_BYTES: usize = 32;

/// One access entry, as the Docker token spec writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Access {
    pub fn pull(name: &str) -> Access {
        Access {
            kind: "repository".to_owned(),
            name: name.to_owned(),
            actions: vec!["pull".to_owned()],
        }
    }
}

/// The claims of an issued token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    pub access: Vec<Access>,
    /// Who the token was issued to (with groups or certificate names), so
    /// rules can be evaluated again on every request.
    pub identity: Identity,
}

/// A signed token and its lifetime, for the `/token` response.
#[derive(Debug)]
pub struct Issued {
    pub token: crate::config::Secret,
    pub expires_in: u64,
    pub issued_at: String,
}

/// Signing and verification keys. `Debug` shows no key material.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    service: String,
    ttl: Duration,
    /// Whether the key came from `auth.tokenKey` (shared by replicas).
    pub shared: bool,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys")
            .field("service", &self.service)
            .field("ttl", &self.ttl)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl TokenKeys {
    /// Keys from `secret` (≥ 32 bytes).
    pub fn new(secret: &[u8], service: &str, ttl: Duration, shared: bool) -> Result<TokenKeys, String> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(format!("the token key must be at least {MIN_KEY_BYTES} bytes"));
        }
        Ok(TokenKeys {
            encoding: EncodingKey::from_secret(secret).map_err(|e| e.to_string())?,
            decoding: DecodingKey::from_secret(secret).map_err(|e| e.to_string())?,
            service: service.to_owned(),
            ttl,
            shared,
        })
    }

    /// A random key for this process only.
    pub fn random(service: &str, ttl: Duration) -> Result<TokenKeys, String> {
        let mut secret = [0u8; 32];
        aws_lc_rs::rand::fill(&mut secret).map_err(|_| "no system randomness".to_owned())?;
        TokenKeys::new(&secret, service, ttl, false)
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The claims a token for `identity` and `access` would carry now.
    pub fn claims(&self, identity: &Identity, access: Vec<Access>) -> Claims {
        let iat = now();
        let mut jti = [0u8; 16];
        let _ = aws_lc_rs::rand::fill(&mut jti);
        Claims {
            iss: ISSUER.to_owned(),
            sub: identity.to_string(),
            aud: self.service.clone(),
            exp: iat + self.ttl.as_secs(),
            nbf: iat.saturating_sub(1),
            iat,
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
            access,
            identity: identity.clone(),
        }
    }

    /// Sign claims.
    pub fn sign(&self, claims: &Claims) -> Result<Issued, String> {
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding).map_err(|e| e.to_string())?;
        let issued_at = jiff::Timestamp::from_second(i64::try_from(claims.iat).unwrap_or(0))
            .map(|t| t.to_string())
            .unwrap_or_default();
        Ok(Issued {
            token: crate::config::Secret::new(token),
            expires_in: claims.exp.saturating_sub(claims.iat),
            issued_at,
        })
    }

    /// Check signature, algorithm, issuer, audience and expiry (with 5 s of
    /// leeway for clock skew between replicas).
    pub fn verify(&self, token: &str) -> Result<Principal, AuthFailure> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        v.validate_nbf = true;
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[&self.service]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthFailure::ExpiredToken,
            _ => AuthFailure::BadToken,
        })?;
        let claims = data.claims;
        let scope = claims
            .access
            .iter()
            .filter(|a| a.kind == "repository" && a.actions.iter().any(|x| x == "pull"))
            .map(|a| a.name.clone())
            .collect();
        Ok(Principal {
            identity: claims.identity,
            method: Method::IssuedToken,
            scope: Some(scope),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &[u8]) -> TokenKeys {
        TokenKeys::new(secret, "portcullis", Duration::from_secs(300), true).expect("keys")
    }

    fn alice() -> Identity {
        Identity::User {
            name: "alice".into(),
            groups: vec!["ci".into()],
        }
    }

    #[test]
    fn claims_round_trip_with_scope() {
        let k = keys(&[7; 32]);
        let claims = k.claims(&alice(), vec![Access::pull("apps/web")]);
        assert_eq!(claims.sub, "user:alice");
        assert_eq!(claims.aud, "portcullis");
        assert_eq!(claims.exp - claims.iat, 300);
        let issued = k.sign(&claims).expect("sign");
        assert_eq!(issued.expires_in, 300);
        let p = k.verify(issued.token.expose_secret()).expect("valid");
        assert_eq!(p.identity, alice());
        assert_eq!(p.method, Method::IssuedToken);
        assert_eq!(p.scope, Some(vec!["apps/web".to_owned()]));
    }

    #[test]
    fn expired_tampered_and_foreign_tokens_are_refused() {
        let k = keys(&[7; 32]);
        let mut claims = k.claims(&alice(), vec![Access::pull("apps/web")]);
        claims.exp = claims.iat - 3600;
        claims.nbf = claims.iat - 7200;
        let expired = k.sign(&claims).expect("sign");
        assert_eq!(
            k.verify(expired.token.expose_secret()).err(),
            Some(AuthFailure::ExpiredToken)
        );

        let good = k
            .sign(&k.claims(&alice(), vec![Access::pull("apps/web")]))
            .expect("sign");
        let text = good.token.expose_secret();
        // Tamper with the payload: claim another repository.
        let parts: Vec<&str> = text.split('.').collect();
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&k.claims(&alice(), vec![Access::pull("secret/db")])).expect("json"),
        );
        let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
        assert_eq!(k.verify(&tampered).err(), Some(AuthFailure::BadToken));
        // Another key (another deployment) and another audience.
        assert_eq!(keys(&[8; 32]).verify(text).err(), Some(AuthFailure::BadToken));
        let other = TokenKeys::new(&[7; 32], "other", Duration::from_secs(60), true).expect("keys");
        assert_eq!(other.verify(text).err(), Some(AuthFailure::BadToken));
        assert_eq!(k.verify("not.a.jwt").err(), Some(AuthFailure::BadToken));
        assert!(TokenKeys::new(&[1; 31], "s", Duration::from_secs(1), true).is_err());
        assert!(!format!("{k:?}").contains("7, 7"));
    }
}
