//! The path normaliser request rules match on: idempotent, and its normal form has one
//! meaning, the same to every server that decodes it once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxyd_fuzz::percent_decode;
use proxyd_policy::{PathPattern, normalize_path};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(path) = normalize_path(raw) else { return };
    assert_eq!(normalize_path(&path).as_ref(), Ok(&path), "{raw:?}: not idempotent");
    assert!(path.starts_with('/'), "{raw:?}: {path:?}");
    assert!(path.is_ascii(), "{raw:?}: {path:?}");
    for bad in ["//", "\\", ";", "?", "#", " "] {
        assert!(!path.contains(bad), "{raw:?}: {path:?} holds {bad:?}");
    }
    assert!(!path.bytes().any(|b| b.is_ascii_control()), "{raw:?}: {path:?} holds a control byte");
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let hex = &bytes[i + 1..i + 3];
        assert!(hex.iter().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()), "{path:?}");
        let value = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
        assert!(
            !value.is_ascii_alphanumeric() && !b"-._~/\\".contains(&value),
            "{path:?}: %{value:02X}"
        );
        assert!(!value.is_ascii_control(), "{path:?}: encoded control byte");
    }
    // Decoding once (what the origin does) keeps the segments: no encoded slash, no dot
    // segment, no second layer of encoding that would decode to something else.
    let segments: Vec<Vec<u8>> =
        path[1..].split('/').map(|s| percent_decode(s.as_bytes())).collect();
    let decoded = percent_decode(path.as_bytes());
    let whole: Vec<&[u8]> = decoded[1..].split(|&b| b == b'/').collect();
    assert_eq!(segments.len(), whole.len(), "{raw:?}: {path:?} changes segments when decoded");
    for (segment, again) in segments.iter().zip(&whole) {
        assert_eq!(segment.as_slice(), *again, "{path:?}");
        assert!(segment != b"." && segment != b"..", "{raw:?}: {path:?} has a dot segment");
        let twice = percent_decode(segment);
        assert!(twice == *segment || !twice.contains(&b'/'), "{path:?}: decodes twice to a slash");
        assert!(twice != b"." && twice != b"..", "{path:?}: decodes twice to a dot segment");
    }
    // A pattern without wildcards that is this path matches it.
    if !path.contains('*') {
        let pattern = PathPattern::parse(&path).expect("a normal path is a pattern");
        assert_eq!(pattern.as_str(), path);
        assert!(pattern.matches(&path), "{path:?} does not match itself");
    }
});
