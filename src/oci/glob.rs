//! Globs for registry hosts, repositories and tags.
//!
//! Repositories match segment by segment: `*` is exactly one path segment,
//! `**` any number of segments (including none), and `*` inside a segment
//! matches any characters of that segment (`app-*`). Hosts and tags are
//! single segments, so `*` there matches any characters.

use std::fmt;

/// A compiled glob.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// `**`: any number of segments.
    Any,
    /// A pattern for one segment; `*` matches any run of characters.
    One(Vec<Piece>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Star,
}

/// Why a glob is malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GlobError {
    #[error("empty glob")]
    Empty,
    #[error("`**` must be a whole path segment in `{0}`")]
    DoubleStarInSegment(String),
    #[error("glob `{0}` has an empty path segment")]
    EmptySegment(String),
}

impl Glob {
    /// A path glob (`/`-separated segments).
    pub fn path(pattern: &str) -> Result<Glob, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        let segments = pattern
            .split('/')
            .map(|seg| {
                if seg == "**" {
                    Ok(Segment::Any)
                } else if seg.is_empty() {
                    Err(GlobError::EmptySegment(pattern.to_owned()))
                } else if seg.contains("**") {
                    Err(GlobError::DoubleStarInSegment(pattern.to_owned()))
                } else {
                    Ok(Segment::One(pieces(seg)))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Glob {
            source: pattern.to_owned(),
            segments,
        })
    }

    /// A single-segment glob (hosts, tags): `/` has no special meaning.
    pub fn single(pattern: &str) -> Result<Glob, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        Ok(Glob {
            source: pattern.to_owned(),
            segments: vec![Segment::One(pieces(pattern))],
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `text` matches. For path globs `text` is split on `/`.
    pub fn matches(&self, text: &str) -> bool {
        if self.segments.len() == 1
            && let Segment::One(p) = &self.segments[0]
            && !self.source.contains('/')
            && !text.contains('/')
        {
            return segment_matches(p, text);
        }
        let parts: Vec<&str> = text.split('/').collect();
        path_matches(&self.segments, &parts)
    }

    /// For single-segment globs, whether `text` matches with `/` an
    /// ordinary character (certificate names, identities); path globs
    /// match as [`matches`](Self::matches).
    pub fn matches_text(&self, text: &str) -> bool {
        match self.segments.as_slice() {
            [Segment::One(p)] => segment_matches(p, text),
            _ => self.matches(text),
        }
    }

    /// Whether every string this glob matches is also matched by `other`
    /// (conservative: `true` only when certain). Used to warn about
    /// shadowed rules.
    pub fn is_covered_by(&self, other: &Glob) -> bool {
        if other.segments == [Segment::Any] {
            return true;
        }
        if !self.source.contains('*') {
            return other.matches(&self.source);
        }
        self.source == other.source
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({})", self.source)
    }
}

fn pieces(seg: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    for (i, lit) in seg.split('*').enumerate() {
        if i > 0 {
            out.push(Piece::Star);
        }
        if !lit.is_empty() {
            out.push(Piece::Literal(lit.to_owned()));
        }
    }
    out
}

fn segment_matches(pieces: &[Piece], text: &str) -> bool {
    match pieces.split_first() {
        None => text.is_empty(),
        Some((Piece::Literal(l), rest)) => text.strip_prefix(l.as_str()).is_some_and(|t| segment_matches(rest, t)),
        Some((Piece::Star, rest)) => (0..=text.len())
            .filter(|i| text.is_char_boundary(*i))
            .any(|i| segment_matches(rest, &text[i..])),
    }
}

fn path_matches(globs: &[Segment], parts: &[&str]) -> bool {
    match globs.split_first() {
        None => parts.is_empty(),
        Some((Segment::Any, rest)) => (0..=parts.len()).any(|i| path_matches(rest, &parts[i..])),
        Some((Segment::One(p), rest)) => parts
            .split_first()
            .is_some_and(|(first, tail)| segment_matches(p, first) && path_matches(rest, tail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Glob {
        Glob::path(s).expect("valid glob")
    }

    #[test]
    fn path_globs() {
        assert!(p("apps/*").matches("apps/web"));
        assert!(!p("apps/*").matches("apps/web/api"));
        assert!(!p("apps/*").matches("apps"));
        assert!(p("acme/prod/**").matches("acme/prod/a/b/c"));
        assert!(p("acme/prod/**").matches("acme/prod"));
        assert!(p("**").matches("anything/at/all"));
        assert!(p("**/base").matches("x/y/base"));
        assert!(p("library/app-*").matches("library/app-1"));
        assert!(!p("library/app-*").matches("library/web-1"));
        assert!(p("platform/base").matches("platform/base"));
        assert!(!p("platform/base").matches("platform/base2"));
    }

    #[test]
    fn single_globs() {
        let g = Glob::single("v*").expect("glob");
        assert!(g.matches("v1.2.3"));
        assert!(!g.matches("latest"));
        assert!(Glob::single("*.k8s.io").expect("glob").matches("registry.k8s.io"));
    }

    #[test]
    fn malformed() {
        assert_eq!(Glob::path(""), Err(GlobError::Empty));
        assert!(matches!(Glob::path("a/**b"), Err(GlobError::DoubleStarInSegment(_))));
        assert!(matches!(Glob::path("a//b"), Err(GlobError::EmptySegment(_))));
    }

    #[test]
    fn coverage_for_shadow_warnings() {
        assert!(p("apps/web").is_covered_by(&p("apps/*")));
        assert!(p("apps/*").is_covered_by(&p("**")));
        assert!(!p("apps/*").is_covered_by(&p("apps/web")));
    }
}
