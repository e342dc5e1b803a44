//! unCLIP in Kakao Brain's Karlo v1.0.alpha architecture
//! (../shared/docs/unclip-architecture.md). So far: the CLIP tokenizer, the CLIP text tower, the prior, decoder and super-resolution networks, checked against the official fixtures.

pub mod check;
pub mod clip;
pub mod decoder;
pub mod prior;
pub mod sr;
pub mod tokenizer;
