//! OpenAI's filtered GLIDE: tokenizer, diffusion schedules and (next) the models.

pub mod schedule;
pub mod tokenizer;
