//! OpenAI's filtered GLIDE: tokenizer, diffusion schedules and (next) the models.

pub mod check;
pub mod clip;
pub mod model;
pub mod pipeline;
pub mod schedule;
pub mod tokenizer;
pub mod weights;
