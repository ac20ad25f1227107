//! The config loader, from TOML text (SPEC §2): every problem is an error naming where it is,
//! and a config that loads renders without surprises.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxyd_config::{Config, Location};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lines = text.lines().count().max(1);
    match Config::from_toml_str(text, "fuzz.toml") {
        Ok(config) => {
            let _ = config.render();
        }
        Err(errors) => {
            let mut any = false;
            for error in errors.iter() {
                any = true;
                let shown = error.to_string();
                assert!(!shown.is_empty() && !shown.ends_with('.'), "{text:?}: message {shown:?}");
                if let Location::Line(_, line) = error.location {
                    assert!((1..=lines + 1).contains(&line), "{text:?}: line {line} of {lines}");
                }
            }
            assert!(any, "{text:?}: refused without an error");
        }
    }
});
