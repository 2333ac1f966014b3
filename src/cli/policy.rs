//! `portcullis policy check DIR`: validate the policies in a directory,
//! print their rules and warn about shadowed ones.

use std::path::Path;
use std::process::ExitCode;

use super::report;

/// Print what the policy in `dir` says (exit 1: invalid).
pub fn check(dir: &Path) -> ExitCode {
    report(describe(dir))
}

fn describe(dir: &Path) -> anyhow::Result<()> {
    let p = crate::policy::load_dir(dir)?;
    println!("policy in {}: valid, revision {}", dir.display(), p.revision);
    println!(
        "  authorities: {}",
        p.authorities.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    for r in &p.rules {
        let registry = r
            .registry
            .as_ref()
            .map_or("any registry".to_owned(), |g| g.as_str().to_owned());
        let repos: Vec<&str> = r.repositories.iter().map(|g| g.as_str()).collect();
        println!(
            "  rule {} ({:?}): {registry}, repositories {}",
            r.name,
            r.mode,
            repos.join(", ")
        );
    }
    println!("  no match: {:?}", p.no_match);
    if let Some(promoter) = &p.promoter {
        println!("  promotion: the promoter's authority {promoter} never satisfies a promoted source");
    }
    for w in &p.warnings {
        println!("warning: {w}");
    }
    Ok(())
}
