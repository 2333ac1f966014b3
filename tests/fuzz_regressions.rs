//! Inputs the fuzz targets (`fuzz/`) found, minimised, kept as tests.

use portcullis::oci::Digest;
use portcullis::proxy::ByteRange;
use portcullis::verify::signature::payload;

const IMAGE: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const OTHER: &str = "634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00";

/// `payloads` / `tests/json_differential`: an in-toto subject with `digest`
/// naming the image and a case variant `Digest` naming another artifact.
/// serde kept `digest` (the statement's `Subject` ignores unknown members)
/// and `statement_for` bound the statement to the image; Go clients
/// (cosign, in-toto-golang) read the later `Digest`.
#[test]
fn statement_subject_with_a_case_variant_digest_is_refused() {
    let image: Digest = IMAGE.parse().expect("digest");
    let hex = image.hex();
    let good = format!(
        r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"digest":{{"sha256":"{hex}"}}}}],"predicateType":"p"}}"#
    );
    assert!(payload::statement_for(good.as_bytes(), &image).is_ok());
    for variant in ["Digest", "DIGEST", "dige\u{017F}t"] {
        let doc = good.replace(r#"}}]"#, &format!(r#"}},"{variant}":{{"sha256":"{OTHER}"}}}}]"#));
        assert!(doc.contains(OTHER), "{doc}");
        assert!(payload::statement_for(doc.as_bytes(), &image).is_err(), "{doc}");
    }
}

/// `range`: `bytes=0-18446744073709551615` overflowed `b + 1` in
/// `ByteRange::resolve` (a panic with overflow checks, a wrapped empty
/// range without).
#[test]
fn range_to_u64_max_resolves_to_the_whole_blob() {
    // Compared through `Debug`, which shows `start` then `end` whether
    // `resolve` returns a tuple or a slice type.
    let shown = |r: &ByteRange, size: u64| format!("{:?}", r.resolve(size).map(|s| format!("{s:?}")));
    let digits = |s: String| -> Vec<String> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let r = ByteRange::parse("bytes=0-18446744073709551615").expect("one range");
    assert_eq!(digits(shown(&r, 10)), ["0", "10"]);
    assert_eq!(digits(shown(&r, u64::MAX)), ["0", "18446744073709551615"]);
    let r = ByteRange::parse("bytes=5-18446744073709551615").expect("one range");
    assert_eq!(shown(&r, 5), "None");
}
