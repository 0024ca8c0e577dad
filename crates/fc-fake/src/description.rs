//! Firecracker's API description (swagger 2.0) turned into request and
//! response checks.
//!
//! Swagger 2.0 schemas are nearly draft-4 JSON schemas, so every definition
//! goes under `definitions` of one root document (the `#/definitions/X`
//! references then resolve as they are) and the `jsonschema` crate checks
//! bodies against it. One change is made on the way: every object schema
//! that does not say otherwise gets `additionalProperties: false`, so a body
//! with a field the description does not have fails. Firecracker rejects
//! most unknown fields too, and a field it silently ignored would be a
//! setting banger believes it made.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The environment variable naming another API description file than
/// [`ApiDescription::default_path`].
pub const DESCRIPTION_ENV: &str = "BANGER_FC_API_DESCRIPTION";

/// Firecracker's API description: its operations, each with its body and
/// response schemas compiled.
#[derive(Debug)]
pub struct ApiDescription {
    version: String,
    operations: Vec<Operation>,
}

#[derive(Debug)]
struct Operation {
    id: String,
    /// Upper case, as HTTP spells it.
    method: String,
    template: String,
    body: Option<BodySchema>,
    /// Documented status codes (`None` for `default`), each with its schema
    /// if the answer has a body.
    responses: Vec<(Option<u16>, Option<jsonschema::Validator>)>,
}

#[derive(Debug)]
struct BodySchema {
    required: bool,
    validator: jsonschema::Validator,
}

/// The API description could not be read or made into schemas.
#[derive(Debug, thiserror::Error)]
pub enum DescriptionError {
    #[error("cannot read the API description {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API description {} is not YAML", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_norway::Error,
    },
    #[error("the API description {} has no {what}", path.display())]
    Shape { path: PathBuf, what: String },
    #[error("the {what} schema of {operation} does not compile")]
    Schema {
        operation: String,
        what: &'static str,
        #[source]
        source: Box<jsonschema::ValidationError<'static>>,
    },
}

/// One way a body differs from its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer to the offending value (`""` is the whole body).
    pub pointer: String,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "(body)"
        } else {
            &self.pointer
        };
        write!(f, "{pointer}: {}", self.message)
    }
}

/// Shown as `a; b; c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations(pub Vec<Violation>);

impl std::fmt::Display for Violations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// A request the description does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("no operation {method} {path} in the API description")]
    UnknownOperation { method: String, path: String },
    #[error("{operation} ({method} {path}) needs a body")]
    MissingBody {
        operation: String,
        method: String,
        path: String,
    },
    #[error("{operation} ({method} {path}) takes no body")]
    UnexpectedBody {
        operation: String,
        method: String,
        path: String,
    },
    #[error("{operation} ({method} {path}): {violations}")]
    InvalidBody {
        operation: String,
        method: String,
        path: String,
        violations: Violations,
    },
}

/// An answer the description does not document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("no operation {method} {path} in the API description")]
    UnknownOperation { method: String, path: String },
    #[error("{operation} ({method} {path}) documents no status {status}")]
    UndocumentedStatus {
        operation: String,
        method: String,
        path: String,
        status: u16,
    },
    #[error("{operation} ({method} {path}) answers {status} with a body")]
    MissingBody {
        operation: String,
        method: String,
        path: String,
        status: u16,
    },
    #[error("{operation} ({method} {path}) answers {status} without a body")]
    UnexpectedBody {
        operation: String,
        method: String,
        path: String,
        status: u16,
    },
    #[error("{operation} ({method} {path}) {status}: {violations}")]
    InvalidBody {
        operation: String,
        method: String,
        path: String,
        status: u16,
        violations: Violations,
    },
}

impl ApiDescription {
    /// The description beside the repository clone
    /// (`<repo>/../shared/reference/firecracker-api.yaml`), or the file
    /// named by `BANGER_FC_API_DESCRIPTION`.
    pub fn default_path() -> PathBuf {
        if let Some(path) = std::env::var_os(DESCRIPTION_ENV) {
            return PathBuf::from(path);
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/reference/firecracker-api.yaml");
        path.canonicalize().unwrap_or(path)
    }

    /// Reads and compiles the description at `path`.
    pub fn load(path: &Path) -> Result<Self, DescriptionError> {
        let text = std::fs::read_to_string(path).map_err(|source| DescriptionError::Read {
            path: path.to_owned(),
            source,
        })?;
        let doc: Value =
            serde_norway::from_str(&text).map_err(|source| DescriptionError::Parse {
                path: path.to_owned(),
                source,
            })?;
        Self::from_document(path, &doc)
    }

    fn from_document(path: &Path, doc: &Value) -> Result<Self, DescriptionError> {
        let shape = |what: &str| DescriptionError::Shape {
            path: path.to_owned(),
            what: what.to_owned(),
        };
        let version = doc
            .pointer("/info/version")
            .and_then(Value::as_str)
            .ok_or_else(|| shape("info.version"))?
            .to_owned();
        let mut definitions = doc
            .get("definitions")
            .and_then(Value::as_object)
            .ok_or_else(|| shape("definitions map"))?
            .clone();
        for schema in definitions.values_mut() {
            close_objects(schema);
        }
        let definitions = Value::Object(definitions);
        let paths = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or_else(|| shape("paths map"))?;

        let mut operations = Vec::new();
        for (template, item) in paths {
            let Some(item) = item.as_object() else {
                return Err(shape(&format!("operations under {template}")));
            };
            for (method, op) in item {
                if !matches!(method.as_str(), "get" | "put" | "patch" | "post" | "delete") {
                    continue;
                }
                let id = op
                    .get("operationId")
                    .and_then(Value::as_str)
                    .unwrap_or(template)
                    .to_owned();
                let compile = |schema: &Value, what: &'static str| {
                    compile(&definitions, schema).map_err(|source| DescriptionError::Schema {
                        operation: id.clone(),
                        what,
                        source: Box::new(source),
                    })
                };
                let body = op
                    .get("parameters")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|p| p.get("in").and_then(Value::as_str) == Some("body"));
                let body = match body {
                    Some(param) => Some(BodySchema {
                        required: param.get("required").and_then(Value::as_bool) == Some(true),
                        validator: compile(
                            param
                                .get("schema")
                                .ok_or_else(|| shape(&format!("schema for the body of {id}")))?,
                            "body",
                        )?,
                    }),
                    None => None,
                };
                let mut responses = Vec::new();
                for (status, response) in op
                    .get("responses")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    let status = match status.as_str() {
                        "default" => None,
                        code => Some(code.parse::<u16>().map_err(|_| {
                            shape(&format!("valid status code in {id} (`{code}`)"))
                        })?),
                    };
                    let schema = match response.get("schema") {
                        Some(schema) => Some(compile(schema, "response")?),
                        None => None,
                    };
                    responses.push((status, schema));
                }
                operations.push(Operation {
                    id,
                    method: method.to_ascii_uppercase(),
                    template: template.clone(),
                    body,
                    responses,
                });
            }
        }
        Ok(Self {
            version,
            operations,
        })
    }

    /// `info.version` of the description, e.g. `1.16.1`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The `operationId` of the operation serving `method path`, e.g.
    /// `putGuestDriveByID` for `PUT /drives/root`.
    pub fn operation_id(&self, method: &str, path: &str) -> Option<&str> {
        self.find(method, path).map(|op| op.id.as_str())
    }

    /// Checks a request: the operation exists, a required body is there,
    /// and the body matches the operation's schema.
    pub fn validate_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(), RequestError> {
        let Some(op) = self.find(method, path) else {
            return Err(RequestError::UnknownOperation {
                method: method.to_owned(),
                path: path.to_owned(),
            });
        };
        let names = || (op.id.clone(), op.method.clone(), path.to_owned());
        match (&op.body, body) {
            (None, None) => Ok(()),
            (Some(schema), None) if !schema.required => Ok(()),
            (Some(_), None) => {
                let (operation, method, path) = names();
                Err(RequestError::MissingBody {
                    operation,
                    method,
                    path,
                })
            }
            (None, Some(_)) => {
                let (operation, method, path) = names();
                Err(RequestError::UnexpectedBody {
                    operation,
                    method,
                    path,
                })
            }
            (Some(schema), Some(body)) => match violations(&schema.validator, body) {
                None => Ok(()),
                Some(violations) => {
                    let (operation, method, path) = names();
                    Err(RequestError::InvalidBody {
                        operation,
                        method,
                        path,
                        violations,
                    })
                }
            },
        }
    }

    /// Checks an answer: its status is documented for the operation (or
    /// the operation has a `default` answer) and its body matches that
    /// answer's schema.
    pub fn validate_response(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: Option<&Value>,
    ) -> Result<(), ResponseError> {
        let Some(op) = self.find(method, path) else {
            return Err(ResponseError::UnknownOperation {
                method: method.to_owned(),
                path: path.to_owned(),
            });
        };
        let names = || (op.id.clone(), op.method.clone(), path.to_owned());
        let documented = op
            .responses
            .iter()
            .find(|(code, _)| *code == Some(status))
            .or_else(|| op.responses.iter().find(|(code, _)| code.is_none()));
        let Some((_, schema)) = documented else {
            let (operation, method, path) = names();
            return Err(ResponseError::UndocumentedStatus {
                operation,
                method,
                path,
                status,
            });
        };
        match (schema, body) {
            (None, None) => Ok(()),
            (Some(_), None) => {
                let (operation, method, path) = names();
                Err(ResponseError::MissingBody {
                    operation,
                    method,
                    path,
                    status,
                })
            }
            (None, Some(_)) => {
                let (operation, method, path) = names();
                Err(ResponseError::UnexpectedBody {
                    operation,
                    method,
                    path,
                    status,
                })
            }
            (Some(validator), Some(body)) => match violations(validator, body) {
                None => Ok(()),
                Some(violations) => {
                    let (operation, method, path) = names();
                    Err(ResponseError::InvalidBody {
                        operation,
                        method,
                        path,
                        status,
                        violations,
                    })
                }
            },
        }
    }

    fn find(&self, method: &str, path: &str) -> Option<&Operation> {
        self.operations.iter().find(|op| {
            op.method.eq_ignore_ascii_case(method) && template_matches(&op.template, path)
        })
    }
}

/// `/drives/{drive_id}` matches `/drives/root`: a `{name}` segment matches
/// one non-empty segment, any other segment only itself.
pub fn template_matches(template: &str, path: &str) -> bool {
    let mut template = template.split('/');
    let mut path = path.split('/');
    loop {
        match (template.next(), path.next()) {
            (None, None) => return true,
            (Some(t), Some(p)) => {
                let is_param = t.starts_with('{') && t.ends_with('}');
                if !(t == p || is_param && !p.is_empty()) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Gives every object schema under `schema` that does not say otherwise
/// `additionalProperties: false`. Walks the schema keywords only, so a
/// property that happens to be named `properties` or `type` is left alone.
fn close_objects(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        props.values_mut().for_each(close_objects);
    }
    match obj.get_mut("items") {
        Some(Value::Array(items)) => items.iter_mut().for_each(close_objects),
        Some(items) => close_objects(items),
        None => {}
    }
    if let Some(extra @ Value::Object(_)) = obj.get_mut("additionalProperties") {
        close_objects(extra);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(list)) = obj.get_mut(key) {
            list.iter_mut().for_each(close_objects);
        }
    }
    if let Some(not) = obj.get_mut("not") {
        close_objects(not);
    }
    let is_object =
        obj.get("type").and_then(Value::as_str) == Some("object") || obj.contains_key("properties");
    if is_object && !obj.contains_key("$ref") && !obj.contains_key("additionalProperties") {
        obj.insert("additionalProperties".to_owned(), Value::Bool(false));
    }
}

/// One validator for `schema` with the description's definitions beside it,
/// so `#/definitions/X` resolves.
fn compile(
    definitions: &Value,
    schema: &Value,
) -> Result<jsonschema::Validator, jsonschema::ValidationError<'static>> {
    let mut schema = schema.clone();
    close_objects(&mut schema);
    let mut root = Map::new();
    root.insert("definitions".to_owned(), definitions.clone());
    root.insert("allOf".to_owned(), Value::Array(vec![schema]));
    jsonschema::draft4::options().build(&Value::Object(root))
}

fn violations(validator: &jsonschema::Validator, body: &Value) -> Option<Violations> {
    let mut found = Vec::new();
    for error in validator.iter_errors(body) {
        let pointer = error.instance_path().as_str().to_owned();
        match error.kind() {
            jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                for field in unexpected {
                    found.push(Violation {
                        pointer: format!("{pointer}/{}", escape_pointer(field)),
                        message: "unknown field".to_owned(),
                    });
                }
            }
            _ => found.push(Violation {
                pointer,
                message: error.to_string(),
            }),
        }
    }
    (!found.is_empty()).then_some(Violations(found))
}

/// RFC 6901 escaping of one pointer segment.
fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn description() -> Option<ApiDescription> {
        let path = ApiDescription::default_path();
        if !path.exists() {
            eprintln!(
                "skipped: no API description at {} (set {DESCRIPTION_ENV})",
                path.display()
            );
            return None;
        }
        Some(ApiDescription::load(&path).expect("the description loads"))
    }

    #[test]
    fn templates_match_segments() {
        assert!(template_matches("/drives/{drive_id}", "/drives/root"));
        assert!(template_matches("/", "/"));
        assert!(template_matches("/actions", "/actions"));
        assert!(!template_matches("/drives/{drive_id}", "/drives/"));
        assert!(!template_matches("/drives/{drive_id}", "/drives"));
        assert!(!template_matches("/drives/{drive_id}", "/drives/a/b"));
        assert!(!template_matches("/vm", "/vm/config"));
        assert!(!template_matches("/", "/actions"));
    }

    #[test]
    fn closing_leaves_a_property_named_properties_alone() {
        let mut schema = json!({
            "type": "object",
            "properties": {"properties": {"type": "object", "additionalProperties": true}},
        });
        close_objects(&mut schema);
        assert_eq!(
            schema,
            json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {"properties": {"type": "object", "additionalProperties": true}},
            })
        );
    }

    #[test]
    fn a_valid_machine_configuration_passes() {
        let Some(d) = description() else { return };
        let body =
            json!({"vcpu_count": 2, "mem_size_mib": 1024, "smt": false, "track_dirty_pages": true});
        d.validate_request("PUT", "/machine-config", Some(&body))
            .expect("valid");
        assert_eq!(
            d.operation_id("put", "/machine-config"),
            Some("putMachineConfiguration")
        );
    }

    #[test]
    fn an_unknown_field_fails_with_its_pointer() {
        let Some(d) = description() else { return };
        let body = json!({"drive_id": "root", "is_root_devic": true, "is_root_device": true});
        let err = d
            .validate_request("PUT", "/drives/root", Some(&body))
            .expect_err("unknown field");
        let RequestError::InvalidBody {
            operation,
            violations,
            ..
        } = &err
        else {
            panic!("unexpected error {err:?}")
        };
        assert_eq!(operation, "putGuestDriveByID");
        assert_eq!(
            violations.0,
            vec![Violation {
                pointer: "/is_root_devic".into(),
                message: "unknown field".into()
            }]
        );
        assert!(
            err.to_string().contains("/is_root_devic: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn nested_unknown_fields_fail_too() {
        let Some(d) = description() else { return };
        let body = json!({
            "drive_id": "root", "is_root_device": true, "path_on_host": "/x",
            "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1, "burst": 3}},
        });
        let err = d
            .validate_request("PUT", "/drives/root", Some(&body))
            .expect_err("nested unknown field");
        assert!(
            err.to_string()
                .contains("/rate_limiter/bandwidth/burst: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn a_renamed_required_field_fails() {
        let Some(d) = description() else { return };
        let body = json!({"vcpus": 2, "mem_size_mib": 1024});
        let err = d
            .validate_request("PUT", "/machine-config", Some(&body))
            .expect_err("renamed field");
        let text = err.to_string();
        assert!(
            text.contains("\"vcpu_count\" is a required property"),
            "{text}"
        );
        assert!(text.contains("/vcpus: unknown field"), "{text}");
    }

    #[test]
    fn a_wrong_type_fails() {
        let Some(d) = description() else { return };
        let body = json!({"vcpu_count": "2", "mem_size_mib": 1024});
        let err = d
            .validate_request("PUT", "/machine-config", Some(&body))
            .expect_err("wrong type");
        assert!(err.to_string().contains("/vcpu_count: "), "{err}");
        let body = json!({"action_type": "Reboot"});
        let err = d
            .validate_request("PUT", "/actions", Some(&body))
            .expect_err("not in the enum");
        assert!(err.to_string().contains("/action_type: "), "{err}");
    }

    #[test]
    fn bodies_and_operations_are_checked() {
        let Some(d) = description() else { return };
        assert!(matches!(
            d.validate_request("PUT", "/nope", None),
            Err(RequestError::UnknownOperation { .. })
        ));
        assert!(matches!(
            d.validate_request("DELETE", "/drives/root", None),
            Err(RequestError::UnknownOperation { .. })
        ));
        assert!(matches!(
            d.validate_request("PUT", "/actions", None),
            Err(RequestError::MissingBody { .. })
        ));
        assert!(matches!(
            d.validate_request("GET", "/", Some(&json!({}))),
            Err(RequestError::UnexpectedBody { .. })
        ));
        // The body of PUT /cpu-config is optional.
        d.validate_request("PUT", "/cpu-config", None)
            .expect("optional body");
        // MMDS contents are free-form.
        d.validate_request("PUT", "/mmds", Some(&json!({"any": {"thing": 1}})))
            .expect("free-form object");
    }

    #[test]
    fn responses_are_checked() {
        let Some(d) = description() else { return };
        let info =
            json!({"app_name": "Firecracker", "id": "a", "state": "Running", "vmm_version": "1"});
        d.validate_response("GET", "/", 200, Some(&info))
            .expect("valid");
        let bad =
            json!({"app_name": "Firecracker", "id": "a", "state": "Booting", "vmm_version": "1"});
        assert!(matches!(
            d.validate_response("GET", "/", 200, Some(&bad)),
            Err(ResponseError::InvalidBody { .. })
        ));
        d.validate_response("PUT", "/actions", 204, None)
            .expect("204");
        d.validate_response("PUT", "/actions", 400, Some(&json!({"fault_message": "x"})))
            .expect("400");
        assert!(matches!(
            d.validate_response("PUT", "/actions", 204, Some(&json!({}))),
            Err(ResponseError::UnexpectedBody { .. })
        ));
    }
}
