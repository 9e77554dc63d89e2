//! Subject and stream names, and their validation.
//!
//! Layout (with the default prefix `psl`):
//!
//! | subject | carries |
//! | --- | --- |
//! | `psl.<capsule-hex>.rec.<writer-hex>` | records of one writer, in the capsule's JetStream stream |
//! | `psl.<capsule-hex>.meta` | the capsule metadata (first message of the stream) |
//! | `psl.bus.<app>.records` | record multicast of one application (core NATS, not stored) |
//! | `psl.bus.<app>.<name>` | other application subjects (invocations, locks, ...) |
//!
//! The stream of a capsule is `PSL_<capsule-hex>`. Bus subjects live under `psl.bus.` and never
//! collide with stream subjects (a capsule id is 64 hex digits, never `bus`).

use psl_capsule::{CapsuleId, WriterId};

use crate::error::BusError;

/// Most bytes in one subject token.
pub const TOKEN_BYTES_MAX: usize = 128;
/// Most bytes in one subject.
pub const SUBJECT_BYTES_MAX: usize = 512;

/// Checks one subject token: 1..=128 bytes of `[A-Za-z0-9_-]`.
pub fn check_token(token: &str) -> Result<(), BusError> {
    let invalid = |reason| BusError::InvalidSubject {
        subject: token.to_string(),
        reason,
    };
    if token.is_empty() {
        return Err(invalid("empty token"));
    }
    if token.len() > TOKEN_BYTES_MAX {
        return Err(invalid("token longer than 128 bytes"));
    }
    if !token
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
    {
        return Err(invalid("tokens are made of A-Z a-z 0-9 _ -"));
    }
    Ok(())
}

/// Checks a subject: dot-separated tokens; `*` (one token) and a final `>` only if
/// `wildcards` (subscriptions).
pub fn check_subject(subject: &str, wildcards: bool) -> Result<(), BusError> {
    let invalid = |reason| BusError::InvalidSubject {
        subject: subject.chars().take(SUBJECT_BYTES_MAX).collect(),
        reason,
    };
    if subject.len() > SUBJECT_BYTES_MAX {
        return Err(invalid("subject longer than 512 bytes"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len().saturating_sub(1);
    for (index, token) in tokens.iter().enumerate() {
        match *token {
            "*" if wildcards => {}
            ">" if wildcards && index == last => {}
            "*" | ">" => return Err(invalid("wildcards are not allowed here")),
            _ => check_token(token).map_err(|_| invalid("bad token"))?,
        }
    }
    Ok(())
}

/// The subject of an application's record multicast.
pub fn app_records(prefix: &str, app: &str) -> Result<String, BusError> {
    app_subject(prefix, app, "records")
}

/// `<prefix>.bus.<app>.<name>`.
pub fn app_subject(prefix: &str, app: &str, name: &str) -> Result<String, BusError> {
    check_token(prefix)?;
    check_token(app)?;
    check_token(name)?;
    Ok(format!("{prefix}.bus.{app}.{name}"))
}

/// Names of one capsule's stream and subjects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSubjects {
    /// The stream name.
    pub stream: String,
    /// `<prefix>.<capsule>.rec.` (a writer's hex id follows).
    pub record_prefix: String,
    /// `<prefix>.<capsule>.rec.*`.
    pub records_wildcard: String,
    /// `<prefix>.<capsule>.meta`.
    pub meta: String,
}

impl StoreSubjects {
    /// Names for `capsule` under `prefix` (a valid token).
    pub fn new(prefix: &str, capsule: &CapsuleId) -> Result<Self, BusError> {
        check_token(prefix)?;
        let hex = capsule.to_hex();
        Ok(StoreSubjects {
            stream: format!("{}_{hex}", prefix.to_ascii_uppercase()),
            record_prefix: format!("{prefix}.{hex}.rec."),
            records_wildcard: format!("{prefix}.{hex}.rec.*"),
            meta: format!("{prefix}.{hex}.meta"),
        })
    }

    /// The subject of `writer`'s records.
    pub fn writer(&self, writer: &WriterId) -> String {
        format!("{}{}", self.record_prefix, writer.to_hex())
    }

    /// The writer a record subject names, if it is one (untrusted input: never panics).
    pub fn parse_writer(&self, subject: &str) -> Option<WriterId> {
        let hex = subject.strip_prefix(&self.record_prefix)?;
        if hex.len() != 32 {
            return None;
        }
        let bytes = hex::decode(hex).ok()?;
        Some(WriterId(bytes.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_validation() {
        let names = StoreSubjects::new("psl", &CapsuleId([0xab; 32])).unwrap();
        assert_eq!(names.stream, format!("PSL_{}", "ab".repeat(32)));
        let writer = WriterId([7; 16]);
        let subject = names.writer(&writer);
        assert_eq!(names.parse_writer(&subject), Some(writer));
        assert_eq!(names.parse_writer(&format!("{subject}0")), None);
        assert_eq!(names.parse_writer(&names.meta), None);
        assert_eq!(names.parse_writer("psl.x.rec.zz"), None);
        assert_eq!(app_records("psl", "bank").unwrap(), "psl.bus.bank.records");
        assert!(app_records("psl", "a.b").is_err());
        assert!(app_records("psl", "").is_err());
        assert!(app_records("psl", &"x".repeat(129)).is_err());
        assert!(check_subject("a.*.c", false).is_err());
        assert!(check_subject("a.*.>", true).is_ok());
        assert!(check_subject("a.>.c", true).is_err());
        assert!(check_subject("a..c", false).is_err());
        assert!(check_subject("a b", false).is_err());
    }
}
