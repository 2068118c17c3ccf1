//! The OpenAPI 3.1 document, generated from the route table
//! ([`super::ROUTES`]) the router is built from, so every registered route
//! is documented with its role, parameters, body and answers, and nothing
//! is documented that is not registered.

use serde_json::{json, Map, Value};

use super::{Access, BodyDoc, RouteDoc, CSRF_HEADER};
use crate::api::extract::{JSON_TYPES, POLICY_TYPES};

/// The document for `routes`.
pub fn document(routes: &[RouteDoc]) -> Value {
    let mut paths = Map::new();
    for route in routes {
        let item = paths
            .entry(route.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(item) = item {
            item.insert(route.method.to_ascii_lowercase(), operation(route));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Hazel API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Event-driven infrastructure automation with driver preflight. \
                Every error answers {\"error\": {\"code\", \"message\", ...}}. \
                Token routes need `Authorization: Bearer <JWT HS256>` (mint one with `hazel token`); \
                every mutating request except webhooks also needs `X-Hazel-CSRF: 1`.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string", "description": "stable dotted code"},
                                "message": {"type": "string"}
                            },
                            "additionalProperties": true
                        }
                    }
                }
            }
        },
        "paths": paths,
    })
}

/// The name a route's access rule goes by in the document (`x-hazel-role`).
pub fn access_name(access: Access) -> &'static str {
    match access {
        Access::Public => "public",
        Access::Webhook => "webhook",
        Access::Role(role) => role.as_str(),
    }
}

fn operation(route: &RouteDoc) -> Value {
    let mut op = Map::new();
    op.insert("operationId".into(), json!(route.operation));
    op.insert("summary".into(), json!(route.summary));
    op.insert("x-hazel-role".into(), json!(access_name(route.access)));
    let security = match route.access {
        Access::Role(_) => json!([{"bearer": []}]),
        _ => json!([]),
    };
    op.insert("security".into(), security);
    op.insert("parameters".into(), Value::Array(parameters(route)));
    if let Some(body) = request_body(route.body) {
        op.insert("requestBody".into(), body);
    }
    let mut responses = Map::new();
    for (code, description) in route.responses() {
        let mut answer = Map::new();
        answer.insert("description".into(), json!(description));
        if code >= 400 {
            answer.insert(
                "content".into(),
                json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}),
            );
        }
        responses.insert(code.to_string(), Value::Object(answer));
    }
    op.insert("responses".into(), Value::Object(responses));
    Value::Object(op)
}

/// The names of a path's `{parameters}`.
pub fn path_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

fn parameters(route: &RouteDoc) -> Vec<Value> {
    let mut out = Vec::new();
    for name in path_params(route.path) {
        let schema = if name == "id" {
            json!({"type": "string", "format": "uuid"})
        } else {
            json!({"type": "string"})
        };
        out.push(json!({"name": name, "in": "path", "required": true, "schema": schema}));
    }
    for param in route.query {
        out.push(json!({
            "name": param.name, "in": "query", "required": false,
            "schema": {"type": param.ty}, "description": param.description,
        }));
    }
    for param in route.headers {
        out.push(json!({
            "name": param.name, "in": "header", "required": false,
            "schema": {"type": param.ty}, "description": param.description,
        }));
    }
    if route.mutating() && matches!(route.access, Access::Role(_)) {
        out.push(json!({
            "name": "X-Hazel-CSRF", "in": "header", "required": true,
            "schema": {"type": "string", "const": "1"},
            "description": format!("required on every mutating request ({CSRF_HEADER}: 1)"),
        }));
    }
    out
}

fn request_body(body: BodyDoc) -> Option<Value> {
    let content = |types: &[&str], schema: Value| {
        let mut map = Map::new();
        for ty in types {
            map.insert((*ty).to_string(), json!({"schema": schema.clone()}));
        }
        Value::Object(map)
    };
    match body {
        BodyDoc::None => None,
        BodyDoc::Json(description) => Some(json!({
            "required": true, "description": description,
            "content": content(JSON_TYPES, json!({"type": "object"})),
        })),
        BodyDoc::OptionalJson(description) => Some(json!({
            "required": false, "description": description,
            "content": content(JSON_TYPES, json!({"type": "object"})),
        })),
        BodyDoc::Policy => Some(json!({
            "required": true,
            "description": "a policy spec v1 (SPEC §2) as JSON or YAML text",
            "content": content(POLICY_TYPES, json!({"type": "string"})),
        })),
        BodyDoc::Raw(description) => Some(json!({
            "required": false, "description": description,
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ROUTES;

    #[test]
    fn every_route_is_documented_with_its_role_body_parameters_and_answers() {
        let doc = document(ROUTES);
        assert_eq!(doc["openapi"], "3.1.0");
        for route in ROUTES {
            let op = &doc["paths"][route.path][route.method.to_ascii_lowercase()];
            let name = format!("{} {}", route.method, route.path);
            assert!(op.is_object(), "{name} is not documented");
            assert_eq!(op["operationId"], route.operation, "{name}");
            assert_eq!(op["x-hazel-role"], access_name(route.access), "{name}");
            assert_eq!(
                op.get("requestBody").is_some(),
                route.body != BodyDoc::None,
                "{name}: request body"
            );
            let params = op["parameters"].as_array().unwrap();
            for path_param in path_params(route.path) {
                assert!(
                    params
                        .iter()
                        .any(|p| p["name"] == path_param && p["in"] == "path"),
                    "{name}: path parameter {path_param}"
                );
            }
            for q in route.query {
                assert!(
                    params
                        .iter()
                        .any(|p| p["name"] == q.name && p["in"] == "query"),
                    "{name}"
                );
            }
            let csrf = params.iter().any(|p| p["name"] == "X-Hazel-CSRF");
            assert_eq!(
                csrf,
                route.mutating() && route.access != Access::Webhook,
                "{name}: CSRF header"
            );
            let responses = op["responses"].as_object().unwrap();
            for (code, _) in route.responses() {
                assert!(responses.contains_key(&code.to_string()), "{name}: {code}");
            }
            if matches!(route.access, Access::Role(_)) {
                assert_eq!(op["security"], json!([{"bearer": []}]), "{name}");
                for code in ["401", "403", "429"] {
                    assert!(responses.contains_key(code), "{name}: {code}");
                }
            } else {
                assert_eq!(op["security"], json!([]), "{name}");
            }
        }
    }

    #[test]
    fn the_document_holds_exactly_the_declared_routes() {
        let doc = document(ROUTES);
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(documented, ROUTES.len());
    }

    #[test]
    fn policy_bodies_accept_json_and_yaml() {
        let doc = document(ROUTES);
        let content = &doc["paths"]["/api/policies"]["post"]["requestBody"]["content"];
        assert!(content.get("application/json").is_some());
        assert!(content.get("application/yaml").is_some());
        assert!(content.get("text/yaml").is_some());
    }

    #[test]
    fn path_parameters_are_read_from_the_template() {
        assert_eq!(path_params("/api/policies/{id}/enable"), ["id"]);
        assert_eq!(path_params("/api/hosts"), Vec::<&str>::new());
    }
}
