//! Data for the embedded demo model (shared by the trainer and `webglide eval`).
pub mod shapes;
