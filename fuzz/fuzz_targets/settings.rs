#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| webglide_cli::fuzz::settings(data));
