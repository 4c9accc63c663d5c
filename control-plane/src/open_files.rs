//! Every held watch is an open connection: a keygatectl serving thousands of Envoys needs
//! more open files than the usual soft limit (1024). The soft limit is raised to the hard
//! one, which needs no privilege (as Go's runtime and many servers do).

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Where an unlimited hard limit is taken as (Linux's default `fs.nr_open`).
const UNLIMITED_AS: u64 = 1 << 20;

/// Raises the soft limit on open files to the hard limit. Returns the limit now in force;
/// on failure, the reason with the limit kept.
pub fn raise_limit() -> Result<u64, (u64, std::io::Error)> {
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(UNLIMITED_AS);
    let maximum = limit.maximum.unwrap_or(UNLIMITED_AS);
    if current >= maximum {
        return Ok(current);
    }
    let raised = Rlimit {
        current: Some(maximum),
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => Ok(maximum),
        Err(e) => Err((current, e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let limit = raise_limit().expect("raised");
        let now = getrlimit(Resource::Nofile);
        assert_eq!(now.current, Some(limit));
        assert_eq!(now.current, now.maximum.or(Some(UNLIMITED_AS)));
    }
}
