//! The plugin configuration as Envoy hands it over. A configuration the parser accepts must
//! also be one the key store can start from (its inline key sets parse).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_oauth::config;
use mesh_oauth::keystore::KeyStore;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = config::parse(text) else {
        return;
    };
    match KeyStore::new(&config, None, 1) {
        Ok(_) => {}
        Err(problem) => panic!("accepted config the key store refuses: {problem}"),
    }
});
