//! The one error shape of the API: `{"error": {"code", "message", ...}}`
//! with a stable dotted code (SPEC §9). Service refusals keep their code,
//! status and details; the HTTP layer's own refusals (malformed bodies,
//! content types, sizes, unknown routes, auth, CSRF, the rate limit) use the
//! same shape, and a 500 never carries internals: those go to the log.

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::auth::AuthError;
use crate::service::ServiceError;

/// An error answer of the API.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Map<String, Value>,
    retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with `status`, `code` and `message` and no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Map::new(),
            retry_after_s: None,
        }
    }

    /// Adds one field beside `code` and `message`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ApiError {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// A body that is not JSON: 400 `request.malformed_json` with serde's
    /// line and column; a body that is JSON of the wrong shape: 400
    /// `request.invalid_body`, also positioned.
    pub fn json_body(err: &serde_json::Error) -> ApiError {
        let code = match err.classify() {
            serde_json::error::Category::Data => "request.invalid_body",
            _ => "request.malformed_json",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, err.to_string())
            .with("line", err.line())
            .with("column", err.column())
    }

    /// 415 `request.content_type`: the body's media type is not one the
    /// route reads.
    pub fn content_type(got: Option<&str>, expected: &[&str]) -> ApiError {
        let got_text = got.unwrap_or("none");
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "request.content_type",
            format!(
                "content type {got_text} is not accepted here; send {}",
                expected.join(" or ")
            ),
        )
        .with("expected", expected.to_vec())
    }

    /// 413 `request.too_large`.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request.too_large",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
        .with("limit_bytes", limit)
    }

    /// 400 `request.body_unreadable`: the body could not be read (the
    /// client stopped sending, a bad chunk).
    pub fn body_unreadable() -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "request.body_unreadable",
            "the request body could not be read",
        )
    }

    /// 400 `request.not_utf8`: a text body that is not UTF-8.
    pub fn not_utf8() -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "request.not_utf8",
            "the request body is not UTF-8 text",
        )
    }

    /// 400 `request.bad_id`: a path parameter that should be a UUID is not.
    pub fn bad_id(param: &str, value: &str) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "request.bad_id",
            format!("path parameter `{param}` must be a UUID, got {value:?}"),
        )
        .with("param", param)
    }

    /// 400 `request.bad_query`: a query parameter that does not parse or is
    /// out of range.
    pub fn bad_query(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "request.bad_query", message)
    }

    /// 400 `request.bad_header`: a header that does not parse.
    pub fn bad_header(name: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "request.bad_header", message).with("header", name)
    }

    /// 404 `route.not_found`.
    pub fn route_not_found(method: &str, path: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "route.not_found",
            format!("no route {method} {path}; see /api/openapi.json"),
        )
    }

    /// 405 `route.method_not_allowed`.
    pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "route.method_not_allowed",
            format!("{path} does not accept {method}; see /api/openapi.json"),
        )
    }

    /// 429 `rate_limited` with a `Retry-After` header.
    pub fn rate_limited(retry_after_s: u64) -> ApiError {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; retry in {retry_after_s} s"),
        )
        .with("retry_after_s", retry_after_s);
        err.retry_after_s = Some(retry_after_s);
        err
    }

    /// 500 `internal` with a generic message; the cause is logged, never sent.
    pub fn internal(context: &str) -> ApiError {
        tracing::error!(context, "internal error in the API layer");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the agent's log",
        )
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> ApiError {
        let status =
            StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(code = err.code(), error = %ErrorChain(&err), "service error");
            return ApiError::new(status, err.code(), "internal error; see the agent's log");
        }
        ApiError {
            status,
            code: err.code(),
            message: err.to_string(),
            details: err.details(),
            retry_after_s: matches!(err, ServiceError::Busy { .. }).then_some(1),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> ApiError {
        let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let mut out = ApiError::new(status, err.code(), err.to_string());
        if let AuthError::Forbidden { have, need } = err {
            out = out.with("role", have).with("required_role", need);
        }
        out
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = Map::with_capacity(self.details.len() + 2);
        error.insert("code".into(), Value::String(self.code.into()));
        error.insert("message".into(), Value::String(self.message));
        for (key, value) in self.details {
            if key != "code" && key != "message" {
                error.insert(key, value);
            }
        }
        let body =
            serde_json::to_vec(&serde_json::json!({ "error": error })).unwrap_or_else(|_| {
                br#"{"error":{"code":"internal","message":"internal error"}}"#.to_vec()
            });
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                HeaderName::from_static("www-authenticate"),
                HeaderValue::from_static("Bearer realm=\"hazel\""),
            );
        }
        response
    }
}

/// Displays an error with its `source` chain, for logs only.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    async fn body_of(err: ApiError) -> (StatusCode, axum::http::HeaderMap, Value) {
        let response = err.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn an_error_answers_with_code_message_and_details_under_error() {
        let err = ApiError::from(ServiceError::DuplicateHash {
            existing_id: uuid::Uuid::nil(),
        });
        let (status, headers, body) = body_of(err).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(body["error"]["code"], "policy.duplicate_hash");
        assert_eq!(
            body["error"]["existing_id"],
            "00000000-0000-0000-0000-000000000000"
        );
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("identical"));
    }

    #[tokio::test]
    async fn a_server_error_never_carries_its_internals() {
        let err = ApiError::from(ServiceError::Internal {
            message: "secret path /var/lib/hazel/db: disk full".into(),
        });
        let (status, _, body) = body_of(err).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal");
        let text = body.to_string();
        assert!(
            !text.contains("disk full") && !text.contains("/var/lib"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_unavailable_engine_answers_503_with_its_message() {
        let (status, _, body) = body_of(ApiError::from(ServiceError::Unavailable)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "engine.unavailable");
    }

    #[tokio::test]
    async fn malformed_json_reports_its_line_and_column() {
        let err = serde_json::from_str::<Value>("{\n  \"a\": ,\n}").unwrap_err();
        let (status, _, body) = body_of(ApiError::json_body(&err)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "request.malformed_json");
        assert_eq!(body["error"]["line"], 2);
        assert_eq!(body["error"]["column"], 8);
    }

    #[tokio::test]
    async fn json_of_the_wrong_shape_is_an_invalid_body() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Body {
            paused: bool,
        }
        let err = serde_json::from_str::<Body>(r#"{"paused": "yes"}"#).unwrap_err();
        let (_, _, body) = body_of(ApiError::json_body(&err)).await;
        assert_eq!(body["error"]["code"], "request.invalid_body");
        assert_eq!(body["error"]["line"], 1);
    }

    #[tokio::test]
    async fn the_rate_limit_answer_carries_retry_after() {
        let (status, headers, body) = body_of(ApiError::rate_limited(2)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "2");
        assert_eq!(body["error"]["code"], "rate_limited");
    }

    #[tokio::test]
    async fn auth_refusals_keep_their_codes_and_a_401_names_the_scheme() {
        let (status, headers, body) = body_of(AuthError::Missing.into()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"]["code"], "auth.missing");
        assert!(headers.contains_key("www-authenticate"));
        let forbidden = AuthError::Forbidden {
            have: "viewer",
            need: "admin",
        };
        let (status, _, body) = body_of(forbidden.into()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"]["required_role"], "admin");
    }

    #[tokio::test]
    async fn details_never_overwrite_code_or_message() {
        let err = ApiError::new(StatusCode::BAD_REQUEST, "x.y", "text").with("code", "z");
        let (_, _, body) = body_of(err).await;
        assert_eq!(body["error"]["code"], "x.y");
    }
}
