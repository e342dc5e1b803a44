//! The demo model's trainer (burn): GLIDE architectures in small
//! configurations, trained on Twemoji (`emoji`) and synthetic shapes. See `main.rs`.
pub mod bench;
pub mod checkpoint;
pub mod clip;
pub mod emoji;
pub mod eval;
pub mod model;
pub mod reuse_alloc;
pub mod text_aux;
pub mod train;

/// Keeps freed activation-sized blocks for the next step (see `reuse_alloc`).
#[global_allocator]
pub static ALLOCATOR: reuse_alloc::ReuseLarge = reuse_alloc::ReuseLarge::new(4 << 30);
