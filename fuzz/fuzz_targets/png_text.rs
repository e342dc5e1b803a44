#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| webglide_cli::fuzz::png_text(data));
