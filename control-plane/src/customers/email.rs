//! Email addresses as customers type them: trimmed, lower-cased, checked, and masked for logs.

use std::str::FromStr;

/// RFC 5321's limit on a forward path.
pub const MAX_EMAIL_BYTES: usize = 254;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailProblem {
    #[error("Enter your email address.")]
    Empty,
    #[error("The email address is too long (at most {MAX_EMAIL_BYTES} characters).")]
    TooLong,
    #[error("This does not look like an email address (name@example.com).")]
    Malformed,
}

/// The address in the one form the store knows it by: trimmed and lower-cased (two spellings
/// of one mailbox are one user).
pub fn normalize_email(input: &str) -> Result<String, EmailProblem> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(EmailProblem::Empty);
    }
    if trimmed.len() > MAX_EMAIL_BYTES {
        return Err(EmailProblem::TooLong);
    }
    let lower = trimmed.to_lowercase();
    let valid = lower.chars().all(|c| !c.is_whitespace() && !c.is_control())
        && lower
            .split_once('@')
            .is_some_and(|(_, domain)| domain.contains('.'))
        && lettre::Address::from_str(&lower).is_ok();
    if valid {
        Ok(lower)
    } else {
        Err(EmailProblem::Malformed)
    }
}

/// `a…@example.com`: enough for a log line to tell mails apart, not to harvest addresses.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}…@{domain}")
        }
        None => "…".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_trimmed_lowered_and_checked() {
        assert_eq!(
            normalize_email("  Ann.Lee@Example.COM "),
            Ok("ann.lee@example.com".into())
        );
        assert_eq!(normalize_email("   "), Err(EmailProblem::Empty));
        for bad in [
            "ann",
            "ann@",
            "@example.com",
            "ann@localhost",
            "a b@example.com",
            "ann@exa mple.com",
            "ann\u{7}@example.com",
            "<ann@example.com>",
        ] {
            assert_eq!(
                normalize_email(bad),
                Err(EmailProblem::Malformed),
                "{bad:?}"
            );
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(normalize_email(&long), Err(EmailProblem::TooLong));
    }

    #[test]
    fn logs_see_a_masked_address() {
        assert_eq!(mask_email("ann.lee@example.com"), "a…@example.com");
        assert_eq!(mask_email("nonsense"), "…");
    }
}
