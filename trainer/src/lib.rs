//! The demo model's trainer (burn): GLIDE architectures in small
//! configurations, trained on the synthetic shapes data. See `main.rs`.
pub mod model;
pub mod train;
