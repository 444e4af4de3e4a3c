//! The API keeps the contract its OpenAPI document states.
//!
//! - [`Body`] reads every JSON request body the same way: bounded in size, JSON as
//!   the document means it (a number with no fraction is an integer, `3.0` as `3`),
//!   an object where an object is documented, and an error that names the field.
//! - [`kept`] adds to every operation the answers any of them can give (400 for a
//!   request that is not valid, 401 and 403 where a token is needed, 413 and 415 where
//!   a body is read, 429 with `Retry-After` under the rates) and states in the
//!   document the rules that names follow, so that what the document calls valid the
//!   server accepts.

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, web};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use berth_api::ErrorCode;

use crate::{ApiError, MOST_BODY_BYTES};

/// Tenants, users and nodes: a DNS label in lower case.
pub(crate) const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9-]{0,62}$";
/// Topologies: as a Compose project name (see `berth_protocol::topology`).
pub(crate) const TOPOLOGY_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,62}$";

/// Services, networks and volumes: as Compose names them.
pub(crate) const SERVICE_PATTERN: &str = "^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$";

/// A JSON request body, read as [`parse`] reads it.
#[derive(Debug)]
pub(crate) struct Body<T>(pub T);

impl<T> std::ops::Deref for Body<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Body<T> {
    /// The body itself.
    pub(crate) fn into_inner(self) -> T {
        self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Body<T> {
    type Error = actix_web::Error;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let is_json = request
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .is_some_and(|v| v == "application/json" || v.ends_with("+json"));
        let bytes = web::Bytes::from_request(request, payload);
        Box::pin(async move {
            if !is_json {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    ErrorCode::UnsupportedMediaType,
                    "the request body must be JSON, sent as `Content-Type: application/json`",
                )
                .into());
            }
            let bytes = bytes.await.map_err(|e| {
                if e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        ErrorCode::TooLarge,
                        format!("the request body is larger than {MOST_BODY_BYTES} bytes"),
                    )
                } else {
                    ApiError::bad_request(format!("the request body cannot be read: {e}"))
                }
            })?;
            Ok(Self(parse(&bytes)?))
        })
    }
}

/// Reads `bytes` as a JSON object and `T` from it: a number with no fraction reads as
/// an integer, and an error names the field it is about.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = object(bytes)?;
    from_value(value).map_err(|e| ApiError::bad_request(format!("the request body {e}")))
}

/// Reads `bytes` as a JSON object, its integral numbers as integers.
pub(crate) fn object(bytes: &[u8]) -> Result<Value, ApiError> {
    let mut value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    integral(&mut value);
    Ok(value)
}

/// `T` from `value`, or what is wrong and at which field (`is not valid at
/// services.web.replicas: ...`).
pub(crate) fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("is not valid: {}", e.inner())
        } else {
            format!("is not valid at {path}: {}", e.inner())
        }
    })
}

/// Refuses a request under `/v1` whose path or query names a tenant, node or topology
/// no name can be, before anything is looked up.
pub(crate) fn valid_names(path: &str, query: &str) -> Result<(), ApiError> {
    valid_path(path)?;
    for (key, value) in url_pairs(query) {
        if matches!(key.as_ref(), "tenant" | "node")
            && !berth_allocator::identity::valid_node_name(&value)
        {
            return Err(ApiError::bad_request(format!(
                "{key}: {value:?} cannot name a {key}: a name matches {NAME_PATTERN}"
            )));
        }
    }
    Ok(())
}

/// The decoded `key=value` pairs of a query string.
fn url_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query.split('&').filter(|p| !p.is_empty()).map(move |pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key), decode(value))
    })
}

/// Refuses a path under `/v1` whose tenant, node or topology segment breaks the
/// rule of its name.
fn valid_path(path: &str) -> Result<(), ApiError> {
    let segments: Vec<std::borrow::Cow<'_, str>> = path
        .split('/')
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy())
        .collect();
    let names = |at: usize| segments.get(at).map(|s| s.as_ref());
    let mut checks = Vec::new();
    match (names(2), names(4)) {
        (Some("tenants"), topologies) => {
            checks.push(("tenant", names(3), NAME_PATTERN));
            if topologies == Some("topologies") {
                checks.push(("topology", names(5), TOPOLOGY_PATTERN));
            }
        }
        (Some("nodes"), _) => checks.push(("node", names(3), NAME_PATTERN)),
        _ => {}
    }
    for (what, name, pattern) in checks {
        let Some(name) = name else { continue };
        let valid = match what {
            "topology" => berth_protocol::topology::valid_topology_name(name),
            _ => berth_allocator::identity::valid_node_name(name),
        };
        if !valid {
            return Err(ApiError::bad_request(format!(
                "{name:?} cannot name a {what}: a name matches {pattern}"
            )));
        }
    }
    Ok(())
}

/// Refuses a query parameter `name` outside `least..=most`, as the document bounds it.
pub(crate) fn within(
    name: &str,
    value: Option<u64>,
    least: u64,
    most: u64,
) -> Result<(), ApiError> {
    match value {
        Some(v) if !(least..=most).contains(&v) => Err(ApiError::bad_request(format!(
            "{name}: {v} is out of range; it lies between {least} and {most}"
        ))),
        _ => Ok(()),
    }
}

/// Numbers with no fraction, written as `3.0`, become the integers JSON Schema says
/// they are.
fn integral(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Exactly representable as an integer, and so as the number it is.
            if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 {
                *value = if f < 0.0 {
                    Value::from(f as i64)
                } else {
                    Value::from(f as u64)
                };
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral),
        Value::Object(fields) => fields.values_mut().for_each(integral),
        _ => {}
    }
}

/// The generated document with what [`keep`] adds.
pub(crate) fn kept(mut document: Value) -> Value {
    keep(&mut document);
    document
}

/// The answers every operation under `/v1` may give, and the rules of names, written
/// into `document`.
fn keep(document: &mut Value) {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
        })
    };
    let retry_after = json!({
        "Retry-After": {
            "description": "Seconds to wait before trying again",
            "schema": { "type": "integer", "minimum": 1 },
        }
    });
    schemas(document);
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for operation in item.values_mut().filter_map(Value::as_object_mut) {
            let secured = operation
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|s| !s.is_empty());
            let has_body = operation.contains_key("requestBody");
            let mut shared = Vec::new();
            if path.starts_with("/v1") {
                shared.push((
                    "400",
                    error("The request is not valid: its path, query or body"),
                ));
                let mut throttled = error(
                    "Over a rate (the tenant's requests, deploys or new tokens, or logins): wait as `Retry-After` says",
                );
                throttled["headers"] = retry_after.clone();
                shared.push(("429", throttled));
            }
            if secured {
                shared.push(("401", error("No valid token")));
                shared.push(("403", error("The token does not allow this")));
            }
            if has_body {
                shared.push(("413", error("The body is larger than the API reads")));
                shared.push(("415", error("The body is not sent as JSON")));
            }
            if let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            {
                for (status, response) in shared {
                    let entry = responses.entry(status).or_insert_with(|| response.clone());
                    if status == "429" {
                        entry["headers"] = retry_after.clone();
                    }
                }
            }
            for parameter in operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                // A parameter left out is absent, never null.
                if let Some(types) = parameter["schema"]["type"].as_array() {
                    let present: Vec<Value> =
                        types.iter().filter(|t| *t != "null").cloned().collect();
                    if let [one] = present.as_slice() {
                        parameter["schema"]["type"] = one.clone();
                    }
                }
                let pattern = match parameter["name"].as_str() {
                    Some("tenant" | "node") => NAME_PATTERN,
                    Some("name") if path.contains("/topologies/") => TOPOLOGY_PATTERN,
                    _ => continue,
                };
                if parameter["schema"]["type"] == "string" {
                    parameter["schema"]["pattern"] = pattern.into();
                }
            }
        }
    }
}

/// The rules of bodies that the types alone do not state.
fn schemas(document: &mut Value) {
    let Some(schemas) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    // Exactly one of revocation ids, a node, a tenant.
    if let Some(revoke) = schemas.get_mut("Revoke") {
        let ids = json!({ "type": "string", "pattern": "^[0-9a-fA-F]{1,256}$" });
        let reason = json!({ "type": "string", "description": "Why, for the ledger." });
        let none = json!({ "type": "null" });
        let no_ids = json!({ "type": "array", "maxItems": 0, "items": { "type": "string" } });
        let name = json!({ "type": "string", "pattern": NAME_PATTERN });
        let branch = |description: &str, chosen: &str, properties: Value| {
            json!({
                "type": "object",
                "description": description,
                "required": [chosen],
                "properties": properties,
                "additionalProperties": false,
            })
        };
        *revoke = json!({
            "description": "`POST /v1/audit/revocations`: exactly one of revocation ids, a node or a tenant.",
            "oneOf": [
                branch(
                    "Revocation ids, hex: a token's first id revokes it and every token attenuated from it; a later block's id revokes only the tokens that carry that block.",
                    "ids",
                    json!({ "ids": { "type": "array", "minItems": 1, "items": ids }, "node": none, "tenant": none, "reason": reason }),
                ),
                branch(
                    "Every delegation in force that this node calls with or is called under.",
                    "node",
                    json!({ "node": name, "ids": no_ids, "tenant": none, "reason": reason }),
                ),
                branch(
                    "Every token minted for this tenant that may still be valid (sessions and delegations).",
                    "tenant",
                    json!({ "tenant": name, "ids": no_ids, "node": none, "reason": reason }),
                ),
            ],
        });
    }
    // An allowance names a setting a policy governs, and perhaps one value of it.
    if let Some(policy) = schemas.get_mut("PolicyBody") {
        let keys = berth_protocol::topology::policy::GOVERNED.join("|");
        policy["properties"]["allow"]["items"] =
            json!({ "type": "string", "pattern": format!("^({keys})(:[!-~][ -~]*)?$") });
    }
    // Services are named as in a topology file.
    if let Some(scale) = schemas.get_mut("Scale") {
        scale["properties"]["replicas"]["propertyNames"] =
            json!({ "type": "string", "pattern": SERVICE_PATTERN });
    }
    // A topology: its name and services; what each holds is judged as a file is (422).
    schemas.insert(
        "TopologyBody".to_owned(),
        json!({
            "type": "object",
            "description": "A topology in Berth's normalised form, as `berth config --model` prints it: `name`, `services`, `networks`, `volumes`. What it holds is checked by the same rules as a topology file, and refused with 422 `invalid_topology`.",
            "required": ["name", "services"],
            "properties": {
                "name": { "type": "string", "pattern": TOPOLOGY_PATTERN },
                "services": { "type": "object", "minProperties": 1 },
            },
        }),
    );
}

/// The longest password a login or a new user may offer.
pub(crate) const MOST_PASSWORD_BYTES: usize = 1024;

/// Refuses a name that cannot name a tenant, before anything is looked up.
pub(crate) fn valid_tenant(name: &str) -> Result<(), ApiError> {
    if berth_allocator::identity::valid_node_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "{name:?} cannot name a tenant: use lower-case letters, digits and '-', starting with a letter or digit (at most 63)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_checked_before_anything_is_looked_up() {
        for good in ["acme", "a", "team-7", &"x".repeat(63)] {
            assert!(valid_tenant(good).is_ok(), "{good}");
        }
        for bad in ["", "Acme", "-acme", "a.b", "a/b", "a b", &"x".repeat(64)] {
            let e = valid_tenant(bad).expect_err("refused");
            assert!(e.to_string().contains("cannot name a tenant"), "{bad}: {e}");
        }
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Quota {
        containers: Option<u32>,
        #[allow(dead_code)]
        nested: Option<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    struct Inner {
        #[allow(dead_code)]
        count: u8,
    }

    #[test]
    fn integral_numbers_read_as_integers_and_errors_name_the_field() {
        let quota: Quota = parse(br#"{"containers": 53.0}"#).expect("an integer");
        assert_eq!(quota.containers, Some(53));
        let e = parse::<Quota>(br#"{"containers": 5.5}"#).unwrap_err();
        assert!(e.to_string().contains("at containers"), "{e}");
        let e = parse::<Quota>(br#"{"nested": {"count": 300}}"#).unwrap_err();
        assert!(e.to_string().contains("at nested.count"), "{e}");
        for not_an_object in ["[null, null]", "0", "\"x\"", "null"] {
            let e = parse::<Quota>(not_an_object.as_bytes()).unwrap_err();
            assert!(
                e.to_string().contains("JSON object"),
                "{not_an_object}: {e}"
            );
        }
        let e = parse::<Quota>(b"{").unwrap_err();
        assert!(e.to_string().contains("not JSON"), "{e}");
    }

    #[test]
    fn a_path_names_only_what_a_name_can_be() {
        for fine in [
            "/v1/tenants/acme/topologies/web_1/spec",
            "/v1/tenants/acme/users",
            "/v1/nodes/n-1/drain",
            "/v1/tenants",
            "/v1/audit/entries",
            "/v1/tenants/%61cme/limits",
        ] {
            assert!(valid_names(fine, "tenant=acme&limit=3").is_ok(), "{fine}");
        }
        for bad in [
            "/v1/tenants/%C2%84/topologies",
            "/v1/tenants/Acme/quota",
            "/v1/tenants/acme/topologies/a.b",
            "/v1/nodes/-n/cordon",
            "/v1/tenants//users",
        ] {
            let e = valid_names(bad, "").unwrap_err();
            assert!(e.to_string().contains("cannot name a"), "{bad}: {e}");
        }
        let e = valid_names("/v1/audit/entries", "limit=3&tenant=%C2%84").unwrap_err();
        assert!(e.to_string().contains("tenant"), "{e}");
    }
}
