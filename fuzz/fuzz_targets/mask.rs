#![no_main]
// Allocations over the target's bound abort (see webglide_cli::fuzz::BoundedAlloc).
#[global_allocator]
static ALLOC: webglide_cli::fuzz::BoundedAlloc = webglide_cli::fuzz::BoundedAlloc::new();
libfuzzer_sys::fuzz_target!(init: webglide_cli::fuzz::init(&ALLOC, "mask"), |data: &[u8]| {
    webglide_cli::fuzz::mask(data)
});
