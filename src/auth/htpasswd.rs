//! The htpasswd file (bcrypt entries only, as Distribution and zot read
//! them) and its companion group file (`group: user1 user2`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::LazyLock;

use super::failure::AuthFailure;

/// Why a credentials file was refused (the old one stays in force).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("line {line}: expected `user:hash`")]
    NoSeparator { line: usize },
    #[error("line {line}: empty user name")]
    EmptyUser { line: usize },
    #[error("line {line}: user `{user}` appears twice")]
    Duplicate { line: usize, user: String },
    #[error("line {line}: user `{user}` has a {scheme} hash; only bcrypt ($2y$, $2b$, $2a$) is accepted (htpasswd -B)")]
    NotBcrypt {
        line: usize,
        user: String,
        scheme: &'static str,
    },
    #[error("line {line}: user `{user}` has a malformed bcrypt hash")]
    BadBcrypt { line: usize, user: String },
    #[error("line {line}: {message}")]
    Invalid { line: usize, message: String },
}

/// The users of an htpasswd file. `Debug` shows user names only.
#[derive(Clone, Default)]
pub struct Htpasswd {
    users: HashMap<String, String>,
}

impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.users.keys().collect();
        names.sort();
        f.debug_struct("Htpasswd").field("users", &names).finish()
    }
}

/// Compared against when the user is unknown, so that an unknown user
/// costs as much time as a wrong password (no user-enumeration oracle).
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| bcrypt::hash("portcullis-dummy", 10).unwrap_or_default());

/// The scheme of a non-bcrypt htpasswd hash, for the error message.
fn scheme_of(hash: &str) -> &'static str {
    if hash.starts_with("$apr1$") {
        "MD5 (apr1)"
    } else if hash.starts_with("{SHA}") {
        "SHA-1"
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        "SHA-crypt"
    } else if hash.starts_with("$2x$") {
        "bcrypt $2x$ (buggy variant)"
    } else if hash.starts_with('$') {
        "unsupported"
    } else {
        "crypt or plain-text"
    }
}

/// Whether a line is blank or a comment.
fn skip(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

impl Htpasswd {
    /// Parse the file's text; any bad entry refuses the whole file.
    pub fn parse(text: &str) -> Result<Htpasswd, FileError> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if skip(raw) {
                continue;
            }
            let (user, hash) = raw.trim().split_once(':').ok_or(FileError::NoSeparator { line })?;
            if user.is_empty() {
                return Err(FileError::EmptyUser { line });
            }
            let user = user.to_owned();
            if !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
                let scheme = scheme_of(hash);
                return Err(FileError::NotBcrypt { line, user, scheme });
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(FileError::BadBcrypt { line, user });
            }
            if users.insert(user.clone(), hash.to_owned()).is_some() {
                return Err(FileError::Duplicate { line, user });
            }
        }
        Ok(Htpasswd { users })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The stored hash (part of the verification cache key).
    pub(super) fn hash_of(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(String::as_str)
    }

    /// Check a password. Blocking: bcrypt is deliberately slow.
    pub fn verify(&self, user: &str, password: &str) -> Result<(), AuthFailure> {
        match self.users.get(user) {
            Some(hash) => match bcrypt::verify(password, hash) {
                Ok(true) => Ok(()),
                _ => Err(AuthFailure::BadPassword),
            },
            None => {
                let _ = bcrypt::verify(password, &DUMMY_HASH);
                Err(AuthFailure::UnknownUser)
            }
        }
    }
}

/// Group memberships: group → users.
#[derive(Clone, Debug, Default)]
pub struct Groups {
    members: BTreeMap<String, Vec<String>>,
}

impl Groups {
    /// Parse `group: user1 user2` lines (Apache's AuthGroupFile format).
    pub fn parse(text: &str) -> Result<Groups, FileError> {
        let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if skip(raw) {
                continue;
            }
            let (group, users) = raw.split_once(':').ok_or(FileError::Invalid {
                line,
                message: "expected `group: user1 user2`".to_owned(),
            })?;
            let group = group.trim();
            if group.is_empty() || group.contains(char::is_whitespace) {
                return Err(FileError::Invalid {
                    line,
                    message: "not a group name".to_owned(),
                });
            }
            members
                .entry(group.to_owned())
                .or_default()
                .extend(users.split_whitespace().map(str::to_owned));
        }
        Ok(Groups { members })
    }

    /// Add inline groups (`auth.groups`).
    pub fn merge(&mut self, inline: &BTreeMap<String, Vec<String>>) {
        for (g, users) in inline {
            self.members.entry(g.clone()).or_default().extend(users.iter().cloned());
        }
    }

    /// The groups `user` belongs to, sorted.
    pub fn of(&self, user: &str) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, users)| users.iter().any(|u| u == user))
            .map(|(g, _)| g.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bcrypt_entry(user: &str, password: &str, prefix: &str) -> String {
        let hash = bcrypt::hash(password, 4).expect("hash");
        // The crate writes $2b$; the other prefixes name the same algorithm.
        format!("{user}:{prefix}{}", &hash[4..])
    }

    #[test]
    fn bcrypt_variants_are_accepted_and_verified() {
        let text = format!(
            "# comment\n{}\n\n{}\n{}\n",
            bcrypt_entry("alice", "wonderland", "$2y$"),
            bcrypt_entry("bob", "builder", "$2b$"),
            bcrypt_entry("carol", "singer", "$2a$"),
        );
        let h = Htpasswd::parse(&text).expect("valid");
        assert_eq!(h.len(), 3);
        assert_eq!(h.verify("alice", "wonderland"), Ok(()));
        assert_eq!(h.verify("bob", "builder"), Ok(()));
        assert_eq!(h.verify("carol", "singer"), Ok(()));
        assert_eq!(h.verify("alice", "builder"), Err(AuthFailure::BadPassword));
        assert_eq!(h.verify("mallory", "x"), Err(AuthFailure::UnknownUser));
        assert!(!format!("{h:?}").contains("$2"), "Debug shows no hash");
    }

    #[test]
    fn other_schemes_are_refused_with_a_clear_error() {
        for (hash, scheme) in [
            ("$apr1$abc$def", "MD5 (apr1)"),
            ("{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1"),
            ("$6$salt$hash", "SHA-crypt"),
            ("plaintext", "crypt or plain-text"),
        ] {
            let err = Htpasswd::parse(&format!("alice:{hash}\n")).expect_err(hash);
            assert_eq!(
                err,
                FileError::NotBcrypt {
                    line: 1,
                    user: "alice".into(),
                    scheme
                }
            );
            assert!(err.to_string().contains("only bcrypt"), "{err}");
        }
        assert_eq!(
            Htpasswd::parse("alice\n").expect_err("no colon"),
            FileError::NoSeparator { line: 1 }
        );
        assert_eq!(
            Htpasswd::parse("alice:$2y$10$short\n").expect_err("bad hash"),
            FileError::BadBcrypt {
                line: 1,
                user: "alice".into()
            }
        );
        let entry = bcrypt_entry("a", "p", "$2y$");
        assert!(matches!(
            Htpasswd::parse(&format!("{entry}\n{entry}\n")),
            Err(FileError::Duplicate { line: 2, .. })
        ));
    }

    #[test]
    fn groups_file_and_inline_groups() {
        let mut g = Groups::parse("# ci robots\nci: robot1 alice\nadmins: alice\n").expect("groups");
        g.merge(&BTreeMap::from([("ops".to_owned(), vec!["bob".to_owned()])]));
        assert_eq!(g.of("alice"), ["admins", "ci"]);
        assert_eq!(g.of("bob"), ["ops"]);
        assert!(g.of("nobody").is_empty());
        assert!(Groups::parse("no colon here\n").is_err());
    }
}
