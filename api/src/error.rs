//! Errors as the API answers them: a stable code, a message, and for policy refusals
//! each refused setting.

use berth_protocol::topology::Refusal;
use serde::{Deserialize, Serialize};

/// What went wrong, in a word a client can branch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed: a field, a path or a query says what.
    BadRequest,
    /// The topology breaks a rule of the format.
    InvalidTopology,
    /// The tenant's policy refuses settings of the topology.
    RefusedByPolicy,
    /// The topology is larger than the tenant's limits allow.
    TooLarge,
    /// No valid token.
    Unauthenticated,
    /// The token does not allow this.
    Forbidden,
    /// No such tenant, topology, node, key or entry.
    NotFound,
    /// The resource does not answer this method.
    MethodNotAllowed,
    /// The body is not JSON.
    UnsupportedMediaType,
    /// The change would exceed the tenant's quota.
    QuotaExceeded,
    /// The pool has no room for the change.
    NoCapacity,
    /// The change conflicts with another, or with what exists.
    Conflict,
    /// Too many failed logins: wait as `Retry-After` says.
    Throttled,
    /// The tenant's rate is spent: wait as `Retry-After` says.
    RateLimited,
    /// Too much work at once: wait as `Retry-After` says.
    Busy,
    /// The audit ledger cannot be written or read, so nothing was done.
    LedgerUnavailable,
    /// The server that can answer (the leader) cannot be reached now: try again.
    Unavailable,
    /// The server's witness file cannot be read, so the ledger cannot be checked
    /// against it.
    WitnessUnreadable,
    /// The bytes sent are not the digest they were sent as (corrupt or tampered with).
    DigestMismatch,
    /// The server failed; the message says where.
    Internal,
}

impl ErrorCode {
    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::InvalidTopology => "invalid_topology",
            Self::RefusedByPolicy => "refused_by_policy",
            Self::TooLarge => "too_large",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::QuotaExceeded => "quota_exceeded",
            Self::NoCapacity => "no_capacity",
            Self::Conflict => "conflict",
            Self::Throttled => "throttled",
            Self::RateLimited => "rate_limited",
            Self::Busy => "busy",
            Self::LedgerUnavailable => "ledger_unavailable",
            Self::Unavailable => "unavailable",
            Self::WitnessUnreadable => "witness_unreadable",
            Self::DigestMismatch => "digest_mismatch",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every error.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable code.
    pub code: ErrorCode,
    /// What is wrong, in words a user can act on.
    pub message: String,
    /// With `refused_by_policy`: each refused setting, by field path, so that a client
    /// can name the line of its own file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refusals: Vec<Refusal>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_words_on_the_wire() {
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::RefusedByPolicy,
            ErrorCode::MethodNotAllowed,
            ErrorCode::LedgerUnavailable,
            ErrorCode::DigestMismatch,
        ] {
            let json = serde_json::to_string(&code).expect("a code serialises");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
