//! kubeconfig files: parsing and resolving a context into client options
//! never panic. Paths resolve inside a fixture folder (inputs that could
//! name a file outside it are only parsed).
#![no_main]

use authproxy_fuzz::{confined, fixture_dir};
use libfuzzer_sys::fuzz_target;
use proxy_core::kubeconfig::Kubeconfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(kubeconfig) = Kubeconfig::parse(text, &fixture_dir().join("kubeconfig")) else {
        return;
    };
    if !confined(text) {
        return;
    }
    let _ = kubeconfig.upstream(None);
    let _ = kubeconfig.upstream(Some("one"));
});
