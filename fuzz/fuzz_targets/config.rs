//! The plugin configuration as Envoy hands it over, configured as the filter configures it. A
//! configuration that compiles has every inline key set parsed, ready for the key store.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_oauth::compile;
use mesh_oauth::config::KeySource;
use mesh_oauth::keystore::KeyStore;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(compiled) = compile::configure(text) else {
        return;
    };
    for (i, provider) in compiled.providers.iter().enumerate() {
        let inline = matches!(provider.keys, KeySource::Inline(_));
        let parsed = compiled.inline_keys.get(i).is_some_and(Option::is_some);
        assert_eq!(
            inline, parsed,
            "providers[{i}]: inline keys and compiled key set disagree"
        );
    }
    KeyStore::new(&compiled, None, 1);
});
