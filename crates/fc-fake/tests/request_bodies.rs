//! Every request banger's Firecracker backend can send
//! (`banger_vmm::firecracker::api::Request::examples`, every optional field
//! set) is valid under Firecracker's API description, whose definitions
//! are closed here: a field the description does not have (a typo, a
//! rename) fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use banger_fc_fake::{ApiDescription, RequestError};
use banger_vmm::firecracker::api::Request;

fn description() -> Option<ApiDescription> {
    let path = ApiDescription::default_path();
    if !path.exists() {
        eprintln!(
            "skipped: no Firecracker API description at {} (set {})",
            path.display(),
            banger_fc_fake::DESCRIPTION_ENV
        );
        return None;
    }
    Some(ApiDescription::load(&path).unwrap())
}

#[test]
fn every_request_body_the_backend_sends_is_in_the_description() {
    let Some(api) = description() else { return };
    let mut failures = Vec::new();
    for request in Request::examples() {
        let body = request.body();
        if let Err(e) =
            api.validate_request(request.method().as_str(), &request.path(), body.as_ref())
        {
            failures.push(format!("{}: {e}", request.describe()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The check itself bites: each example with one of its fields renamed
/// fails, naming the field.
#[test]
fn a_renamed_field_fails() {
    let Some(api) = description() else { return };
    let mut checked = 0;
    for request in Request::examples() {
        let Some(serde_json::Value::Object(fields)) = request.body() else {
            continue;
        };
        for key in fields.keys() {
            let mut renamed = fields.clone();
            let value = renamed.remove(key).unwrap();
            let typo = format!("{key}s");
            renamed.insert(typo.clone(), value);
            let body = serde_json::Value::Object(renamed);
            match api.validate_request(request.method().as_str(), &request.path(), Some(&body)) {
                Err(RequestError::InvalidBody { violations, .. }) => {
                    assert!(
                        violations.to_string().contains(&typo),
                        "{}: {violations}",
                        request.describe()
                    );
                }
                other => panic!("{} with {typo}: {other:?}", request.describe()),
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} fields were tried");
}
