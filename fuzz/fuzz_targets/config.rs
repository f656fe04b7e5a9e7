//! The `authproxy` configuration file: YAML parsing and `validate()` never
//! panic, and every problem names a field. Paths resolve inside a fixture
//! folder (inputs that could name a file outside it are only parsed).
#![no_main]

use authproxy::config::FileConfig;
use authproxy_fuzz::{confined, fixture_dir};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match FileConfig::parse(text) {
        Ok(config) => config,
        Err((field, _)) => {
            assert!(!field.is_empty());
            return;
        }
    };
    if !confined(text) {
        return;
    }
    for problem in config.validate(fixture_dir()) {
        assert!(!problem.field.is_empty(), "{problem:?}");
    }
});
