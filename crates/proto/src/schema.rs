//! Machine-readable JSON schemas of every method's params and result,
//! generated from the types; `docs/schemas/rpc.json` is their checked-in
//! copy (`tests/schemas.rs` keeps it current), for SDK generators.

use schemars::SchemaGenerator;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::methods::Method;

/// `{"$schema", "title", "protocol_version", "methods": {NAME: {description,
/// params, result}}, "streams": {NAME: {description, frame}}, "$defs"}`: each method's params and result schema
/// (JSON Schema 2020-12, as a reader accepts them), with shared
/// definitions under `$defs`.
pub fn rpc_schema() -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let mut methods = Map::new();
    macro_rules! add_all {
        ($($(#[doc = $doc:literal])* $ty:ident = $name:literal: $p:ty => $r:ty,)*) => {
            $(
                add::<crate::methods::$ty>(
                    &mut generator,
                    &mut methods,
                    &[$($doc),*],
                );
            )*
        };
    }
    crate::for_each_method!(add_all);
    let event_frame = generator.subschema_for::<crate::events::EventFrame>();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "banger RPC methods",
        "description": "Params and result of every bangerd method (docs/rpc.md). A request is {version, method, params, op_id?}; a response is {result} or {error: ErrorBody}.",
        "protocol_version": crate::PROTOCOL_VERSION,
        "methods": methods,
        "streams": {
            "events.subscribe": {
                "description": "After the events.subscribe answer, each line of the connection is one of these.",
                "frame": event_frame,
            },
        },
        "$defs": generator.take_definitions(true),
    })
}

fn add<M: Method>(generator: &mut SchemaGenerator, methods: &mut Map<String, Value>, doc: &[&str]) {
    let description = doc.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
    methods.insert(
        M::NAME.to_owned(),
        json!({
            "description": description,
            "params": generator.subschema_for::<M::Params>(),
            "result": generator.subschema_for::<M::Result>(),
        }),
    );
}
