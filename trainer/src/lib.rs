//! The demo model's trainer (burn): GLIDE architectures in small
//! configurations, trained on Twemoji (`emoji`) and synthetic shapes. See `main.rs`.
pub mod bench;
pub mod checkpoint;
pub mod clip;
pub mod emoji;
pub mod eval;
pub mod model;
pub mod train;
