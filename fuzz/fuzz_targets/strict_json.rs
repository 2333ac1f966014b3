//! The differential on every schema: on every document `oci::json::check`
//! accepts, the serde reading, `json::go_reading` and the independent Go
//! reference reading agree. Each input is read twice: as raw JSON (mutated
//! from the seed corpus and the dictionary) and as choices for the
//! structure-aware generator (case variants, duplicates, nesting).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::oci::json;
use portcullis_fuzz::reference::{self, ByteChoices};
use portcullis_fuzz::{SCHEMAS, split};

fuzz_target!(|data: &[u8]| {
    let Some((selector, input)) = split(data) else {
        return;
    };
    let schema = SCHEMAS[selector % SCHEMAS.len()];
    reference::assert_one_reading(input, schema);
    let generated = reference::document(&mut ByteChoices::new(input), schema);
    reference::assert_one_reading(generated.as_bytes(), schema);
    if std::ptr::eq(schema, &json::IMAGE_DOCUMENT) {
        let ct = reference::CONTENT_TYPES[(selector / SCHEMAS.len()) % reference::CONTENT_TYPES.len()];
        reference::assert_manifest_agrees(input, ct);
        reference::assert_manifest_agrees(generated.as_bytes(), ct);
    }
});
