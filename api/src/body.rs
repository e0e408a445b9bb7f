//! JSON bodies: unknown fields, wrong types and oversize bodies become clear
//! errors that name the field, before anything happens.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest request body accepted (orders and registrations are tiny).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large(format!(
                        "request body is larger than {MAX_BODY_BYTES} bytes"
                    ))
                } else {
                    ApiError::bad_request("body", rejection.body_text())
                }
            })?;
        if bytes.is_empty() {
            return Err(ApiError::bad_request("body", "a JSON body is required"));
        }
        let deserializer = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(deserializer)
            .map(JsonBody)
            .map_err(|error| {
                let path = error.path().to_string();
                let inner = error.inner().to_string();
                let field = named_field(&inner).unwrap_or(if path == "." {
                    "body".to_owned()
                } else {
                    path
                });
                // Well-formed, but not one of the values the field takes.
                if inner.starts_with("unknown variant") {
                    return ApiError::invalid(&field, format!("invalid value: {inner}"));
                }
                ApiError::bad_request(&field, format!("invalid request body: {inner}"))
            })
    }
}

/// The field serde complains about in "unknown field `x`" / "missing field `x`".
fn named_field(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    Some(rest.split('`').next()?.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_extracted() {
        assert_eq!(
            named_field("unknown field `gpu`, expected one of `name`"),
            Some("gpu".into())
        );
        assert_eq!(
            named_field("missing field `plan` at line 1 column 2"),
            Some("plan".into())
        );
        assert_eq!(named_field("invalid type: integer"), None);
    }
}
