//! Karlo's 64→256 super-resolution (`SuperResUNetModel`, two of them:
//! `model_first_steps` for all but the last step, `model_last_step` for the
//! last): the shared UNet on `[x_t, low_res]` (6 channels; the low-res image
//! already resized to x's size), no text, no attention, ResBlocks that add
//! the timestep embedding instead of scale-shift norm, eps output.

use crate::error::{Error, Result};
use crate::glide::model::{Capture, UNet, UNetSpec};
use crate::glide::weights::Loader;
use crate::gpu::Recorder;
use crate::kernels;
use crate::tensor::Tensor;

/// `SuperResUNetModel` kwargs.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct SuperResConfig {
    pub in_channels: usize,
    pub model_channels: usize,
    pub out_channels: usize,
    pub num_res_blocks: usize,
    pub attention_resolutions: Vec<usize>,
    pub channel_mult: Vec<usize>,
    pub resblock_updown: bool,
    pub use_middle_attention: bool,
}

impl SuperResConfig {
    pub(crate) fn unet_spec(&self) -> UNetSpec {
        UNetSpec {
            model_channels: self.model_channels,
            // x_t and the low-res image, concatenated.
            in_channels: 2 * self.in_channels,
            out_channels: self.out_channels,
            num_res_blocks: self.num_res_blocks,
            channel_mult: self.channel_mult.clone(),
            attention_ds: Vec::new(),
            head_channels: None,
            num_heads: 1,
            encoder_channels: 0,
            scale_shift: false,
            middle_attention: false,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let ok = self.in_channels == 3
            && self.out_channels == 3
            && self.resblock_updown
            && self.attention_resolutions.is_empty()
            && !self.use_middle_attention
            && self.model_channels.is_multiple_of(32)
            && (1..=8).contains(&self.channel_mult.len());
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "unsupported super-resolution config (the released SR networks have 3 image \
                 channels, no attention, resampling ResBlocks): {self:?}"
            )))
        }
    }
}

pub struct SuperRes {
    pub config: SuperResConfig,
    pub unet: UNet,
}

impl SuperRes {
    /// `prefix`: `model_first_steps.` or `model_last_step.` in Karlo's checkpoint.
    pub fn load(config: SuperResConfig, l: &Loader, prefix: &str) -> Result<Self> {
        config.validate()?;
        let spec = config.unet_spec();
        Ok(SuperRes {
            unet: UNet::load(l, prefix, spec)?,
            config,
        })
    }

    /// eps `[N, 3, H, W]` for `x` and `low_res` (both `[N, 3, H, W]`).
    pub fn forward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        low_res: &Tensor,
        timesteps: &Tensor,
        cap: Option<&mut Capture>,
    ) -> Result<Tensor> {
        if x.shape() != low_res.shape() {
            return Err(Error::Invalid(format!(
                "SR: x {:?} and low_res {:?} must have the same shape",
                x.shape(),
                low_res.shape()
            )));
        }
        let input = kernels::copy::concat_channels(rec, &[x, low_res])?;
        self.unet
            .forward(rec, &input, timesteps, None, &[], None, cap)
    }
}
