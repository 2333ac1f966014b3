//! Secrets whose `Debug` never shows them, and loading them from the places a
//! config names (file, environment variable, inline).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use super::Credentials;
use super::raw::RawCredentials;

/// A password or token. `Debug` prints `[secret elided]`; the value is only
/// reachable through [`Secret::expose_secret`].
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Secret {
        Secret(value.into())
    }

    /// The secret value. Call only where it is put on the wire.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[secret elided]")
    }
}

pub(super) fn one_secret(
    what: &str,
    inline: Option<String>,
    file: Option<&Path>,
    env: Option<&str>,
    base: Option<&Path>,
) -> Result<Option<Secret>, String> {
    let given = [inline.is_some(), file.is_some(), env.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if given > 1 {
        return Err(format!("give only one of `{what}`, `{what}File`, `{what}Env`"));
    }
    if let Some(v) = inline {
        return Ok(Some(Secret::new(v)));
    }
    if let Some(f) = file {
        let path = match base {
            Some(b) if f.is_relative() => b.join(f),
            _ => f.to_owned(),
        };
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {what}File {}: {e}", path.display()))?;
        return Ok(Some(Secret::new(text.trim_end_matches(['\r', '\n']))));
    }
    if let Some(var) = env {
        let v = std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set"))?;
        return Ok(Some(Secret::new(v)));
    }
    Ok(None)
}

/// Turn the raw credentials mapping into [`Credentials`], reading secrets.
pub(super) fn load_credentials(raw: RawCredentials, base: Option<&Path>) -> Result<Credentials, String> {
    let password = one_secret(
        "password",
        raw.password,
        raw.password_file.as_deref(),
        raw.password_env.as_deref(),
        base,
    )?;
    let token = one_secret(
        "token",
        raw.token,
        raw.token_file.as_deref(),
        raw.token_env.as_deref(),
        base,
    )?;
    match (raw.username, password, token) {
        (Some(username), Some(password), None) => Ok(Credentials::Basic { username, password }),
        (None, None, Some(token)) => Ok(Credentials::Bearer(token)),
        _ => Err("give either `username` with a password, or a token".to_owned()),
    }
}
