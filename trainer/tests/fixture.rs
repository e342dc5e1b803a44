//! The burn model against the official implementation's golden forward pass
//! (../shared/fixtures/glide/text2im_base): text encoder and UNet output.

use burn::tensor::{Device, Int, Tensor, TensorData};
use engine::glide::model::GlideConfig;
use webglide_trainer::model::{Cond, Glide, Init};
use webglide_trainer::train::read_safetensors;

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

#[test]
fn burn_model_matches_the_official_text2im_forward() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/glide/text2im_base");
    let cfg_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let cfg: GlideConfig =
        serde_json::from_value(cfg_json["create_model_and_diffusion_kwargs"].clone()).unwrap();
    let weights = read_safetensors(&dir.join("weights.safetensors")).unwrap();
    let dev = Device::flex();
    let model = Glide::new(&cfg, &Init::From(&weights), &dev).unwrap();
    let io_bytes = std::fs::read(dir.join("io.safetensors")).unwrap();
    let io = safetensors::SafeTensors::deserialize(&io_bytes).unwrap();
    let f32s = |k: &str| engine::glide::weights::to_f32(k, &io.tensor(k).unwrap()).unwrap();
    let i64s = |k: &str| -> Vec<i64> {
        io.tensor(k)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (b, ctx, s) = (3, cfg.text_ctx, cfg.image_size);
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(i64s("fwd.tokens"), [b, ctx]), &dev);
    let mask: Vec<f32> = io
        .tensor("fwd.mask")
        .unwrap()
        .data()
        .iter()
        .map(|&v| v as f32)
        .collect();
    let mask = Tensor::<2>::from_data(TensorData::new(mask, [b, ctx]), &dev);
    let (xf_proj, xf_out) = model.encode_text(tokens.clone(), mask.clone());
    let e = max_rel(&vec(xf_proj), &f32s("fwd.int.xf_proj"));
    assert!(e < 1e-4, "xf_proj differs: {e}");
    let e = max_rel(
        &vec(xf_out.reshape([b * cfg.xf_width, ctx])),
        &f32s("fwd.int.xf_out"),
    );
    assert!(e < 1e-4, "xf_out differs: {e}");
    let x = Tensor::<4>::from_data(TensorData::new(f32s("fwd.x_t"), [b, 3, s, s]), &dev);
    let t: Vec<f32> = i64s("fwd.timesteps").iter().map(|&v| v as f32).collect();
    let t = Tensor::<1>::from_data(TensorData::new(t, [b]), &dev);
    let out = model.forward(
        x,
        t,
        &Cond {
            tokens,
            mask,
            low_res: None,
            inpaint: None,
            pooled_keep: None,
        },
    );
    let e = max_rel(&vec(out.reshape([b * 6, s * s])), &f32s("fwd.out"));
    assert!(e < 1e-4, "UNet output differs: {e}");
}
