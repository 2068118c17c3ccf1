//! Request extractors that refuse in the API's error shape: JSON bodies
//! (with serde's position on a parse error), policy text (JSON or YAML),
//! raw bytes, query strings, UUID path parameters, the caller's identity.
//! axum's own extractors answer in plain text; these wrap them so every
//! refusal is `{"error": {...}}` with a stable code.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;
use crate::service::Actor;

/// Media types read as JSON.
pub const JSON_TYPES: &[&str] = &["application/json"];

/// Media types a policy body may have: JSON or YAML text.
pub const POLICY_TYPES: &[&str] = &[
    "application/json",
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
    "text/x-yaml",
];

/// A JSON body of type `T` (content type `application/json` or `*+json`).
#[derive(Debug)]
pub struct Json<T>(pub T);

/// A JSON body that may be absent: an empty body is `None`.
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

/// A policy body as text, JSON or YAML by its content type; the service
/// parses it (and reports positions in its own findings).
#[derive(Debug)]
pub struct PolicyText(pub String);

/// The body's bytes, whatever their type (webhooks verify a signature over
/// exactly these bytes).
#[derive(Debug)]
pub struct RawBody(pub Bytes);

/// A query string of type `T`; a bad one is 400 `request.bad_query`.
#[derive(Debug)]
pub struct Query<T>(pub T);

/// The route's single path parameter, parsed as a UUID; a bad one is 400
/// `request.bad_id` naming the parameter.
#[derive(Debug, Clone, Copy)]
pub struct PathId(pub Uuid);

/// The route's single path parameter as text (host ids, webhook names).
#[derive(Debug, Clone)]
pub struct PathText(pub String);

/// The media type of a request (lowercase, parameters dropped).
pub fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or("").trim();
    Some(essence.to_ascii_lowercase())
}

fn is_json(media: &str) -> bool {
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

fn is_policy_type(media: &str) -> bool {
    is_json(media) || POLICY_TYPES.contains(&media)
}

/// Refuses (415, naming `types`) a body whose media type `accepts` does
/// not take.
fn takes(
    headers: &HeaderMap,
    accepts: impl Fn(&str) -> bool,
    types: &[&str],
) -> Result<(), ApiError> {
    if media_type(headers).is_some_and(|m| accepts(&m)) {
        Ok(())
    } else {
        Err(ApiError::content_type(
            raw_content_type(headers).as_deref(),
            types,
        ))
    }
}

fn raw_content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn body_error(rejection: BytesRejection, limit: Option<usize>) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(limit.unwrap_or(super::DEFAULT_BODY_LIMIT))
    } else {
        ApiError::body_unreadable()
    }
}

/// Reads the whole body, within the body limit and the time the body has
/// to arrive in (SPEC §12: a body that stalls after its headers is
/// answered 408 `request.body_timeout`, not waited for).
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    let limits = req.extensions().get::<super::BodyLimit>().copied();
    let limit = limits.map(|l| l.0);
    let wait = limits.map_or(std::time::Duration::from_secs(30), |l| l.1);
    match tokio::time::timeout(wait, Bytes::from_request(req, state)).await {
        Ok(body) => body.map_err(|r| body_error(r, limit)),
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request.body_timeout",
            format!(
                "the request body did not arrive within {}s; send it whole, or raise api.body_read_timeout",
                wait.as_secs()
            ),
        )),
    }
}

/// A form body (`application/x-www-form-urlencoded`, what the console's
/// htmx posts send), read like [`Json`]: within the body limit and the time
/// the body has to arrive in, so a console post that stalls after its
/// headers is answered 408 like an API call, not waited for.
#[derive(Debug, Clone)]
pub struct Form<T>(pub T);

/// The media type a [`Form`] takes.
pub const FORM_TYPES: &[&str] = &["application/x-www-form-urlencoded"];

impl<T, S> FromRequest<S> for Form<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        takes(req.headers(), |m| FORM_TYPES.contains(&m), FORM_TYPES)?;
        let bytes = read_body(req, state).await?;
        serde_urlencoded::from_bytes(&bytes).map(Form).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "request.form",
                format!("the form cannot be read: {e}"),
            )
        })
    }
}

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        takes(req.headers(), is_json, JSON_TYPES)?;
        let bytes = read_body(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|e| ApiError::json_body(&e))
    }
}

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let media = media_type(req.headers());
        let content_type = raw_content_type(req.headers());
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        if !media.is_some_and(|m| is_json(&m)) {
            return Err(ApiError::content_type(content_type.as_deref(), JSON_TYPES));
        }
        serde_json::from_slice(&bytes)
            .map(|v| OptionalJson(Some(v)))
            .map_err(|e| ApiError::json_body(&e))
    }
}

impl<S: Send + Sync> FromRequest<S> for PolicyText {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        takes(req.headers(), is_policy_type, POLICY_TYPES)?;
        let bytes = read_body(req, state).await?;
        String::from_utf8(bytes.to_vec())
            .map(PolicyText)
            .map_err(|_| ApiError::not_utf8())
    }
}

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        read_body(req, state).await.map(RawBody)
    }
}

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Query(q.0))
            .map_err(|e| ApiError::bad_query(e.body_text()))
    }
}

async fn single_param<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<(String, String), ApiError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| ApiError::bad_query("a path parameter is not valid UTF-8"))?;
    params
        .iter()
        .next()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| ApiError::internal("route has no path parameter"))
}

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let (name, value) = single_param(parts, state).await?;
        Uuid::parse_str(&value)
            .map(PathId)
            .map_err(|_| ApiError::bad_id(&name, &value))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        single_param(parts, state).await.map(|(_, v)| PathText(v))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Actor>()
            .cloned()
            .ok_or_else(|| ApiError::internal("authenticated route without an actor"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(content_type: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        map
    }

    #[test]
    fn media_types_drop_parameters_and_case() {
        assert_eq!(
            media_type(&headers("Application/JSON; charset=utf-8")).as_deref(),
            Some("application/json")
        );
        assert_eq!(media_type(&HeaderMap::new()), None);
    }

    #[test]
    fn json_and_yaml_types_are_policy_types_and_others_are_not() {
        for ok in [
            "application/json",
            "application/yaml",
            "text/yaml",
            "application/problem+json",
        ] {
            assert!(is_policy_type(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            assert!(!is_policy_type(bad), "{bad}");
        }
        assert!(!is_json("text/yaml"));
    }
}
