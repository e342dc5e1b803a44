//! unCLIP in Kakao Brain's Karlo v1.0.alpha architecture
//! (../shared/docs/unclip-architecture.md): the CLIP tokenizer and towers, the
//! prior, decoder and super-resolution networks (checked against the official
//! fixtures) and the t2i / image-variation sampling loop.

pub mod check;
pub mod clip;
pub mod decoder;
pub mod pipeline;
pub mod prior;
pub mod sr;
pub mod tokenizer;
pub mod weights;
