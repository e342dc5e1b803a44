//! One error type for the whole engine: every failure a user can cause or meet
//! (bad shapes, limits, a lost device) is a value, never a panic.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no GPU adapter found (WebGPU/Vulkan/Metal/DX12): {0}")]
    NoAdapter(String),
    #[error("could not open the GPU device: {0}")]
    RequestDevice(String),
    #[error("shape error in {op}: {msg}")]
    Shape { op: &'static str, msg: String },
    #[error("{what} needs {bytes} bytes but the adapter allows at most {limit} bytes")]
    TooLarge {
        what: String,
        bytes: u64,
        limit: u64,
    },
    #[error("GPU read-back failed: {0}")]
    Readback(String),
    #[error("GPU device lost: {0}")]
    DeviceLost(String),
    #[error("GPU error: {0}")]
    Gpu(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for shape errors raised by kernel launchers before dispatch.
pub(crate) fn shape_err<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(Error::Shape {
        op,
        msg: msg.into(),
    })
}
