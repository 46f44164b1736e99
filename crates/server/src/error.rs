//! `ApiError`: every error the API returns, rendered in OpenAI's JSON shape:
//!
//! ```json
//! {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": "invalid_value"}}
//! ```
//!
//! `type` is the broad class an OpenAI client switches on; `code` names the exact cause (both
//! listed in docs/SERVER.md). Client errors say what was wrong with the request; internal errors
//! are logged in full and answered with a generic message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The `code` of an error response, left in the response's extensions for the request log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub &'static str);

/// One error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's error class: `invalid_request_error`, `authentication_error`, `not_found_error`,
    /// `server_overloaded` or `server_error`.
    pub kind: &'static str,
    /// The exact cause, e.g. `context_length_exceeded`.
    pub code: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, code, param: None, message: message.into() }
    }

    fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }

    /// Names the request field at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The body is not JSON at all.
    pub fn invalid_json(detail: impl std::fmt::Display) -> Self {
        Self::invalid("invalid_json", format!("the request body is not valid JSON: {detail}"))
    }

    /// A field has the wrong type or a value out of range.
    pub fn invalid_value(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::invalid("invalid_value", message).with_param(param)
    }

    pub fn missing(param: &str) -> Self {
        Self::invalid("missing_required_parameter", format!("missing required parameter: `{param}`")).with_param(param)
    }

    /// A field this server understands but does not implement (`n` > 1, `tools`, ...).
    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        Self::invalid("unsupported_parameter", message).with_param(param)
    }

    pub fn context_length_exceeded(message: impl Into<String>) -> Self {
        Self::invalid("context_length_exceeded", message)
    }

    pub fn model_not_found(model: &str, served: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("the model `{model}` does not exist; this server serves `{served}`"),
        )
        .with_param("model")
    }

    pub fn invalid_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            "a valid API key is required: send `Authorization: Bearer <key>`",
        )
    }

    pub fn body_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("the request body is larger than the server's limit of {limit_bytes} bytes"),
        )
    }

    pub fn unknown_route(method: &str, path: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", "unknown_url", format!("no route for {method} {path}"))
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            format!("{method} is not allowed on {path}"),
        )
    }

    /// Admission control: the waiting queue is at its bound.
    pub fn queue_full(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_overloaded", "queue_full", message)
    }

    /// The engine thread is gone (it failed or the server is shutting down).
    pub fn engine_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "engine_unavailable",
            "the inference engine is not running",
        )
    }

    /// A failure of ours: logged with its detail, answered generically.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        eprintln!("infinihip: internal error: {detail}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            "the server failed to process the request",
        )
    }

    /// The JSON body, also used for errors inside an event stream.
    pub fn to_json(&self) -> String {
        let body = Body {
            error: Detail { message: &self.message, kind: self.kind, param: self.param.as_deref(), code: self.code },
        };
        serde_json::to_string(&body).unwrap_or_else(|_| String::from(r#"{"error":{"message":"unserialisable error"}}"#))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.to_json()).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openai_shape() {
        let json: serde_json::Value =
            serde_json::from_str(&ApiError::invalid_value("top_p", "bad").to_json()).expect("valid JSON");
        assert_eq!(
            json,
            serde_json::json!({"error": {"message": "bad", "type": "invalid_request_error", "param": "top_p", "code": "invalid_value"}})
        );
        let json: serde_json::Value = serde_json::from_str(&ApiError::invalid_api_key().to_json()).expect("valid JSON");
        assert_eq!(json["error"]["param"], serde_json::Value::Null);
    }
}
