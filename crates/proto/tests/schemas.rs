//! `docs/schemas/rpc.json` is generated from the types: this test
//! regenerates it and fails when the checked-in copy differs. After a
//! deliberate change, rewrite it with
//! `BANGER_UPDATE_SCHEMAS=1 cargo test -p banger-proto --test schemas`
//! and review the diff.

#![allow(clippy::unwrap_used)] // test code

use std::path::PathBuf;

use banger_proto::methods;
use banger_proto::schema::rpc_schema;

fn schema_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/schemas/rpc.json")
}

#[test]
fn checked_in_schemas_match_the_types() {
    let fresh = serde_json::to_string_pretty(&rpc_schema()).unwrap() + "\n";
    let path = schema_file();
    if std::env::var_os("BANGER_UPDATE_SCHEMAS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == fresh,
        "{} is out of date: rerun with BANGER_UPDATE_SCHEMAS=1 and review the diff",
        path.display()
    );
}

#[test]
fn every_method_has_a_params_and_a_result_schema() {
    let schema = rpc_schema();
    let listed = schema["methods"].as_object().unwrap();
    assert_eq!(listed.len(), methods::ALL.len());
    for name in methods::ALL {
        let m = &listed[*name];
        assert!(m["params"].is_object(), "{name} params");
        assert!(m["result"].is_object(), "{name} result");
        assert!(!m["description"].as_str().unwrap().is_empty(), "{name}");
    }
    // Wire enums are string enums of their wire values.
    let defs = &schema["$defs"];
    assert_eq!(
        defs["DiskStrategy"]["enum"],
        serde_json::json!(["qcow2", "reflink", "dm-snapshot", "copy"])
    );
    assert_eq!(defs["PublishSpec"]["type"], "string");
}
