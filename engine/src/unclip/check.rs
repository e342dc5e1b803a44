//! Parity checks of unCLIP parts against the official fixtures
//! (`../shared/fixtures/unclip/`), shared by the tests and `webglide check-fixture`.

use crate::error::{Error, Result};
use crate::glide::check::{Report, Row, Tensors};
use crate::glide::schedule::Schedule;
use crate::glide::weights::{Loader, WeightSource};
use crate::gpu::{Gpu, Recorder};
use crate::kernels::sampler::{sampler_step, Step};
use crate::quant::WeightDType;
use crate::tensor::Tensor;
use crate::unclip::clip::{ClipText, ClipTextConfig, ClipVisual, ClipVisualConfig};
use crate::unclip::decoder::{Decoder, DecoderCond, DecoderConfig};
use crate::unclip::pipeline::{
    cfg_tokens, karlo_schedule, DecoderStage, Draws, Phase, PriorStage, SrStage, StageKind, Stages,
    UnclipParams, UnclipRun,
};
use crate::unclip::prior::{Prior, PriorConfig, PriorText};
use crate::unclip::sr::{SuperRes, SuperResConfig};
use crate::unclip::tokenizer::ClipTokenizer;

/// One tokenizer case: the text and what differs (None = exact).
pub struct TokenizerCase {
    pub text: String,
    pub mismatch: Option<String>,
}

/// Every entry of `tokenizer/tokens.json`: the raw BPE ids and the padded
/// tokens and mask at the file's context length must equal the official ones.
pub fn check_tokenizer(tok: &ClipTokenizer, tokens_json: &[u8]) -> Result<Vec<TokenizerCase>> {
    let bad = |m: &str| Error::Invalid(format!("tokens.json: {m}"));
    let v: serde_json::Value =
        serde_json::from_slice(tokens_json).map_err(|e| bad(&e.to_string()))?;
    let ctx = v["text_ctx"].as_u64().ok_or_else(|| bad("no text_ctx"))? as usize;
    if !(2..=4096).contains(&ctx) {
        return Err(bad("text_ctx out of range"));
    }
    let ids = |x: &serde_json::Value, what: &str| -> Result<Vec<u32>> {
        x.as_array()
            .ok_or_else(|| bad(what))?
            .iter()
            .map(|n| {
                // Masks are booleans, ids numbers.
                n.as_bool()
                    .map(u64::from)
                    .or_else(|| n.as_u64())
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| bad(what))
            })
            .collect()
    };
    let entries = v["entries"].as_array().ok_or_else(|| bad("no entries"))?;
    entries
        .iter()
        .map(|e| {
            let text = e["text"]
                .as_str()
                .ok_or_else(|| bad("entry without text"))?;
            let (want_bpe, want_tokens, want_mask) = (
                ids(&e["bpe_ids"], "bpe_ids")?,
                ids(&e["tokens"], "tokens")?,
                ids(&e["mask"], "mask")?,
            );
            let got_bpe = tok.encode(text);
            let (tokens, mask) = tok.padded(text, ctx);
            let mismatch = if got_bpe != want_bpe {
                Some(format!("bpe ids {got_bpe:?}, expected {want_bpe:?}"))
            } else if tokens != want_tokens || mask != want_mask {
                Some(format!("padded tokens/mask differ: {tokens:?} {mask:?}"))
            } else {
                None
            };
            Ok(TokenizerCase {
                text: text.to_string(),
                mismatch,
            })
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct ClipCase {
    ctor_args_in_order: ClipTextConfig,
}

#[derive(serde::Deserialize)]
struct ClipVisualCase {
    ctor_args_in_order: ClipVisualConfig,
}

/// `clip_text/`: both towers built from `config.json` alone — the text
/// tower on the recorded tokens, the visual tower on the recorded images —
/// every recorded intermediate compared.
pub async fn check_clip_text(
    gpu: &Gpu,
    config_json: &[u8],
    weights: &WeightSource<'_>,
    io: &[u8],
    tol: f64,
    dtype: WeightDType,
) -> Result<Report> {
    let case: ClipCase = parse_config(config_json, "config.json")?;
    let loader = Loader::new(gpu, weights, dtype)?;
    let clip = ClipText::load(gpu, case.ctor_args_in_order, &loader)?;
    let visual_case: ClipVisualCase = parse_config(config_json, "config.json")?;
    let visual = ClipVisual::load(gpu, visual_case.ctor_args_in_order, &loader)?;
    // logit_scale only scales CLIP's contrastive logits, which unCLIP never forms.
    loader.finish_except(&["logit_scale"])?;
    let io = Tensors::new(io, "io.safetensors")?;
    let (_, tokens) = io.get("text.tokens")?;
    let tokens: Vec<u32> = tokens.iter().map(|&t| t as u32).collect();
    let mut cap = Vec::new();
    let mut rec = gpu.recorder();
    let feats = clip.encode(&mut rec, &tokens, Some(&mut cap))?;
    rec.submit()?;
    cap.push(("txt_feat_seq".into(), feats.txt_feat_seq));
    let mut report = Report::default();
    for (name, t) in cap {
        let want = io.get(&format!("text.{name}"))?.1;
        report.push(format!("text.{name}"), &gpu.read(&t).await?, &want, tol);
    }
    // The visual tower on the recorded images.
    let (pix_shape, pixels) = io.get("image.pixels")?;
    let mut cap = Vec::new();
    let mut rec = gpu.recorder();
    visual.encode(&mut rec, &pixels, pix_shape[0], Some(&mut cap))?;
    rec.submit()?;
    for (name, t) in cap {
        let mut got = gpu.read(&t).await?;
        let want_name = if name == "conv1_tokens" {
            // The fixture records the patch conv's output channels-first [N, W, G, G].
            got = channels_first(&got, &t);
            "image.conv1".to_string()
        } else {
            format!("image.{name}")
        };
        report.push(&want_name, &got, &io.get(&want_name)?.1, tol);
    }
    Ok(report)
}

#[derive(serde::Deserialize)]
struct PriorCase {
    module_kwargs: PriorConfig,
    #[serde(default)]
    state_dict_prefix: String,
}

/// `prior/`: the prior network built from `config.json` alone, one forward
/// on the recorded inputs, every recorded intermediate compared.
pub async fn check_prior(
    gpu: &Gpu,
    config_json: &[u8],
    weights: &WeightSource<'_>,
    io: &[u8],
    tol: f64,
    dtype: WeightDType,
) -> Result<Report> {
    let case: PriorCase = parse_config(config_json, "config.json")?;
    let loader = Loader::new(gpu, weights, dtype)?;
    let prior = Prior::load(case.module_kwargs, &loader, &case.state_dict_prefix)?;
    loader.finish()?;
    let io = Tensors::new(io, "io.safetensors")?;
    let upload = |name: &str| io.upload(gpu, name);
    let (x, t, text_emb, text_enc) = (
        upload("in.x")?,
        upload("in.timesteps")?,
        upload("in.text_emb")?,
        upload("in.text_enc")?,
    );
    let mask: Vec<u32> = io.get("in.mask")?.1.iter().map(|&m| m as u32).collect();
    let text = PriorText {
        text_emb: &text_emb,
        text_enc: &text_enc,
        mask: &mask,
    };
    let mut cap = Vec::new();
    let mut rec = gpu.recorder();
    prior.forward(&mut rec, &x, &t, &text, Some(&mut cap))?;
    rec.submit()?;
    let mut report = Report::default();
    for (name, t) in cap {
        let want = io.get(&name)?.1;
        report.push(name, &gpu.read(&t).await?, &want, tol);
    }
    Ok(report)
}

/// `schedules/`: every respaced schedule of `schedules.json` rebuilt from
/// its respacing string (Karlo's are all the 1000-step cosine one), its
/// timestep map exact and every float64 table within `tol` (relative).
pub fn check_schedules(json: &[u8], tables: &[u8], tol: f64) -> Result<Report> {
    let bad = |m: String| Error::Invalid(format!("schedules.json: {m}"));
    let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(e.to_string()))?;
    let cases = v.as_object().ok_or_else(|| bad("not an object".into()))?;
    let tables = Tensors::new(tables, "schedules.safetensors")?;
    let mut report = Report::default();
    for (name, case) in cases {
        let steps = case["num_steps"]
            .as_u64()
            .ok_or_else(|| bad(format!("{name}: no num_steps")))? as usize;
        let sched = karlo_schedule(&steps.to_string())?;
        let want_map = tables.f64s_or_ints(&format!("{name}.timestep_map"))?;
        let map_ok = want_map.len() == sched.timestep_map.len()
            && want_map
                .iter()
                .zip(&sched.timestep_map)
                .all(|(&a, &b)| a == b as f64);
        report.rows.push(Row {
            name: format!("{name}.timestep_map"),
            max_abs: if map_ok { 0.0 } else { f64::INFINITY },
            rel: if map_ok { 0.0 } else { f64::INFINITY },
            ok: map_ok,
        });
        let ac = &sched.alphas_cumprod;
        let derived: [(&str, Vec<f64>); 9] = [
            ("alphas_cumprod", ac.clone()),
            ("alphas_cumprod_prev", sched.alphas_cumprod_prev.clone()),
            ("betas", sched.betas.clone()),
            (
                "posterior_log_variance_clipped",
                sched.posterior_log_variance_clipped.clone(),
            ),
            ("posterior_mean_coef1", sched.posterior_mean_coef1.clone()),
            ("posterior_mean_coef2", sched.posterior_mean_coef2.clone()),
            ("posterior_variance", sched.posterior_variance.clone()),
            (
                "sqrt_recip_alphas_cumprod",
                ac.iter().map(|a| (1.0 / a).sqrt()).collect(),
            ),
            (
                "sqrt_recipm1_alphas_cumprod",
                ac.iter().map(|a| (1.0 / a - 1.0).sqrt()).collect(),
            ),
        ];
        for (q, got) in derived {
            let want = tables.f64s(&format!("{name}.{q}"))?;
            let scale = want.iter().fold(1e-300f64, |m, w| m.max(w.abs()));
            let max_abs = if got.len() == want.len() {
                got.iter().zip(&want).fold(0f64, |m, (g, w)| {
                    if (g - w).is_nan() {
                        f64::INFINITY
                    } else {
                        m.max((g - w).abs())
                    }
                })
            } else {
                f64::INFINITY
            };
            report.rows.push(Row {
                name: format!("{name}.{q}"),
                max_abs,
                rel: max_abs / scale,
                ok: max_abs / scale <= tol,
            });
        }
    }
    Ok(report)
}

#[derive(serde::Deserialize)]
struct T2iCase {
    prompts: Vec<String>,
    sampling: T2iSampling,
    weights: std::collections::HashMap<String, String>,
    configs: std::collections::HashMap<String, String>,
}

#[derive(serde::Deserialize)]
struct T2iSampling {
    prior_sm: String,
    prior_cf_scale: f32,
    decoder_sm: String,
    decoder_cf_scale: f32,
    sr_sm: String,
    sr_size: usize,
}

/// `t2i/`, the whole text-to-image run stage by stage: the prompts
/// tokenized and encoded by CLIP (cond rows, then empty-prompt rows); every
/// prior step replayed from the recorded x_t and noise (CFG on x0, clamp
/// ±10, fixed-small variance) and the de-standardised image embedding; every
/// decoder step (y = [image embedding; cf_param], CFG on eps, learned-range
/// variance, clamp ±1); the antialiased bicubic resize; every SR step (the
/// first-steps network, then the last-step one; fixed-small variance) and
/// the final image. `read` opens files relative to the t2i folder (the case
/// names the other folders' weights and configs).
pub async fn check_t2i(
    gpu: &Gpu,
    tok: &ClipTokenizer,
    read: &dyn Fn(&str) -> Result<Vec<u8>>,
    tol: f64,
    dtype: WeightDType,
) -> Result<Report> {
    let m = load_t2i(gpu, read, dtype)?;
    let case = &m.case;
    let trace_bytes = read("trace.safetensors")?;
    let trace = Tensors::new(&trace_bytes, "trace.safetensors")?;
    let mut report = Report::default();
    let b = case.prompts.len();

    // Tokens: B prompts, then B empty prompts.
    let prompts: Vec<&str> = case.prompts.iter().map(String::as_str).collect();
    let (tokens, mask) = cfg_tokens(tok, &prompts, crate::unclip::tokenizer::TEXT_CTX);
    let as_f32 = |v: &[u32]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    report.push(
        "text.tokens",
        &as_f32(&tokens),
        &trace.get("text.tokens")?.1,
        0.0,
    );
    report.push("text.mask", &as_f32(&mask), &trace.get("text.mask")?.1, 0.0);

    // CLIP text features.
    let mut rec = gpu.recorder();
    let feats = m.clip.encode(&mut rec, &tokens, None)?;
    rec.submit()?;
    for (name, t) in [
        ("text.txt_feat", &feats.txt_feat),
        ("text.txt_feat_seq", &feats.txt_feat_seq),
    ] {
        report.push(name, &gpu.read(t).await?, &trace.get(name)?.1, tol);
    }

    // Prior: every step from the recorded x_t and noise.
    let prior = &m.prior.model;
    let d = prior.config.clip_dim;
    let sched = karlo_schedule(&case.sampling.prior_sm)?;
    let text = PriorText {
        text_emb: &feats.txt_feat,
        text_enc: &feats.txt_feat_seq,
        mask: &mask,
    };
    let net = |rec: &mut Recorder, x: &Tensor, t: &Tensor, _i: usize| {
        prior.forward(rec, x, t, &text, None)
    };
    let prior_kind = StageKind::prior(case.sampling.prior_cf_scale);
    let last = replay_stage(
        gpu,
        &trace,
        &mut report,
        "prior",
        &sched,
        &prior_kind,
        b,
        tol,
        &net,
    )
    .await?;
    // De-standardised image embedding of the final (own) sample.
    let (mean, std) = (
        gpu.read(&m.prior.clip_mean).await?,
        gpu.read(&m.prior.clip_std).await?,
    );
    let img_feat: Vec<f32> = last
        .iter()
        .enumerate()
        .map(|(j, v)| v * std[j % d] + mean[j % d])
        .collect();
    report.push(
        "prior.img_feat",
        &img_feat,
        &trace.get("prior.img_feat")?.1,
        tol,
    );

    // Decoder: y = [image embedding (recorded); cf_param], every step from the recorded x_t.
    let decoder = &m.decoder.model;
    let cf_param = gpu.read(&decoder.cf_param).await?;
    let mut y = trace.get("prior.img_feat")?.1;
    for _ in 0..b {
        y.extend_from_slice(&cf_param);
    }
    report.push("decoder.y", &y, &trace.get("decoder.y")?.1, tol);
    let y = gpu.upload(&[2 * b, d], &y)?;
    let mut rec = gpu.recorder();
    let dec_text = decoder.condition(
        &mut rec,
        &DecoderCond {
            y: &y,
            txt_feat: &feats.txt_feat,
            txt_feat_seq: &feats.txt_feat_seq,
            mask: &mask,
        },
        None,
    )?;
    rec.submit()?;
    let sched = karlo_schedule(&case.sampling.decoder_sm)?;
    let net = |rec: &mut Recorder, x: &Tensor, t: &Tensor, _i: usize| {
        decoder.forward(rec, x, t, &dec_text, None)
    };
    let decoder_kind = StageKind::decoder(case.sampling.decoder_cf_scale);
    let last_sample = replay_stage(
        gpu,
        &trace,
        &mut report,
        "decoder",
        &sched,
        &decoder_kind,
        b,
        tol,
        &net,
    )
    .await?;
    let x_shape = trace.get("decoder.noise_init")?.0;
    let img_shape = |rows: usize| [vec![rows], x_shape[1..].to_vec()].concat();
    let recorded_images = trace.get("decoder.images_64")?.1;
    report.push("decoder.images_64", &last_sample, &recorded_images, tol);

    // Resize (clamped, antialiased bicubic) of the recorded decoder images.
    let images: Vec<f32> = recorded_images.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
    let images = gpu.upload(&img_shape(b), &images)?;
    let size = case.sampling.sr_size;
    let mut rec = gpu.recorder();
    let low_res = crate::kernels::resample::bicubic_aa(&mut rec, &images, size, size)?;
    rec.submit()?;
    let (low_shape, recorded_low) = trace.get("sr.low_res")?;
    report.push("sr.low_res", &gpu.read(&low_res).await?, &recorded_low, tol);
    // SR is fed the recorded resize, like every stage its recorded inputs.
    let low_res = gpu.upload(&low_shape, &recorded_low)?;

    // SR: the first-steps network, then the last-step one at i = 0.
    let sched = karlo_schedule(&case.sampling.sr_sm)?;
    let net = |rec: &mut Recorder, x: &Tensor, t: &Tensor, i: usize| {
        m.sr.for_step(i)?.forward(rec, x, &low_res, t, None)
    };
    let sr_kind = StageKind::SR;
    let final_sample = replay_stage(
        gpu,
        &trace,
        &mut report,
        "sr",
        &sched,
        &sr_kind,
        b,
        tol,
        &net,
    )
    .await?;
    report.push(
        "output.images_256",
        &final_sample,
        &trace.get("output.images_256")?.1,
        tol,
    );
    let image: Vec<f32> = final_sample
        .iter()
        .map(|v| (v * 0.5 + 0.5).clamp(0.0, 1.0))
        .collect();
    report.push("output.image", &image, &trace.get("output.image")?.1, tol);
    Ok(report)
}

/// Every network of a `t2i/` case, loaded from the files its config names.
struct T2iModels {
    case: T2iCase,
    clip: ClipText,
    prior: PriorStage,
    decoder: DecoderStage,
    sr: SrStage,
}

fn load_t2i(
    gpu: &Gpu,
    read: &dyn Fn(&str) -> Result<Vec<u8>>,
    dtype: WeightDType,
) -> Result<T2iModels> {
    let case: T2iCase = parse_config(&read("config.json")?, "t2i config.json")?;
    if case.prompts.is_empty() {
        return Err(Error::Invalid("t2i config.json: no prompts".into()));
    }
    let file = |map: &std::collections::HashMap<String, String>, k: &str| {
        map.get(k)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("t2i config.json names no {k} file")))
    };
    let config = |k: &str| -> Result<Vec<u8>> { read(&file(&case.configs, k)?) };
    let weights = |k: &str| -> Result<Vec<u8>> { read(&file(&case.weights, k)?) };

    // Each network from its file; `load` must use every key but those under `rest`.
    fn with_loader<T>(
        gpu: &Gpu,
        bytes: &[u8],
        dtype: WeightDType,
        rest: &[&str],
        load: impl FnOnce(&Loader) -> Result<T>,
    ) -> Result<T> {
        let src = WeightSource::single(bytes)?;
        let loader = Loader::new(gpu, &src, dtype)?;
        let net = load(&loader)?;
        loader.finish_except(rest)?;
        Ok(net)
    }
    let clip_cfg: ClipCase = parse_config(&config("clip")?, "clip config")?;
    // The CLIP file also holds the visual tower and logit_scale.
    let clip = with_loader(
        gpu,
        &weights("clip")?,
        dtype,
        &["visual.", "logit_scale"],
        |l| ClipText::load(gpu, clip_cfg.ctor_args_in_order, l),
    )?;
    let prior_case: PriorCase = parse_config(&config("prior")?, "prior config")?;
    let prior = with_loader(gpu, &weights("prior")?, dtype, &[], |l| {
        Prior::load(prior_case.module_kwargs, l, &prior_case.state_dict_prefix)
    })?;
    let stats_bytes = weights("clip_stats")?;
    let stats = Tensors::new(&stats_bytes, "clip_stats.safetensors")?;
    let prior = PriorStage::new(
        gpu,
        prior,
        &stats.get("clip_mean")?.1,
        &stats.get("clip_std")?.1,
    )?;
    let dec_case: DecoderCase = parse_config(&config("decoder")?, "decoder config")?;
    let decoder = DecoderStage {
        model: with_loader(gpu, &weights("decoder")?, dtype, &[], |l| {
            Decoder::load(gpu, dec_case.module_kwargs, l, &dec_case.state_dict_prefix)
        })?,
        image_size: dec_case.yaml_config.model.hparams.image_size,
    };

    let sr_case: SuperResCase = parse_config(&config("sr")?, "sr config")?;
    let [first_prefix, last_prefix] = sr_case.state_dict_prefixes.as_slice() else {
        return Err(Error::Invalid(
            "sr config: two state_dict_prefixes expected".into(),
        ));
    };
    let sr = with_loader(gpu, &weights("sr")?, dtype, &[], |l| {
        Ok(SrStage {
            first_steps: Some(SuperRes::load(
                sr_case.module_kwargs_model_first_steps,
                l,
                first_prefix,
            )?),
            last_step: Some(SuperRes::load(
                sr_case.module_kwargs_model_last_step,
                l,
                last_prefix,
            )?),
            image_size: case.sampling.sr_size,
        })
    })?;
    Ok(T2iModels {
        case,
        clip,
        prior,
        decoder,
        sr,
    })
}

/// `t2i/` free-running: the whole pipeline ([`UnclipRun`]) fed only the
/// trace's random draws, its stage results compared with the official run's
/// (errors accumulate over the steps, so `tol` is looser than the replay's).
pub async fn check_t2i_pipeline(
    gpu: &Gpu,
    tok: &ClipTokenizer,
    read: &dyn Fn(&str) -> Result<Vec<u8>>,
    tol: f64,
    dtype: WeightDType,
) -> Result<Report> {
    let m = load_t2i(gpu, read, dtype)?;
    let trace_bytes = read("trace.safetensors")?;
    let trace = Tensors::new(&trace_bytes, "trace.safetensors")?;
    let b = m.case.prompts.len();
    // Every draw, its first B rows (the engine samples B rows, as the official
    // code uses only x_t[:B] of its CFG batch).
    let mut draws = std::collections::HashMap::new();
    for name in trace.names() {
        if name.ends_with("noise_init") || name.ends_with(".noise") {
            let (shape, v) = trace.get(&name)?;
            let rows = shape[0].max(1);
            let per = v.len() / rows;
            let shape = [vec![b], shape[1..].to_vec()].concat();
            draws.insert(name, gpu.upload(&shape, &v[..b * per])?);
        }
    }
    let s = &m.case.sampling;
    let params = UnclipParams {
        prior_guidance: s.prior_cf_scale,
        decoder_guidance: s.decoder_cf_scale,
        prior_steps: s.prior_sm.clone(),
        decoder_steps: s.decoder_sm.clone(),
        sr_steps: s.sr_sm.clone(),
    };
    let prompts: Vec<&str> = m.case.prompts.iter().map(String::as_str).collect();
    let mut run =
        UnclipRun::text_to_image(gpu, &m.clip, tok, &prompts, params, Draws::Recorded(draws))?;
    let stages = Stages {
        prior: Some(&m.prior),
        decoder: Some(&m.decoder),
        sr: Some(&m.sr),
    };
    let mut report = Report::default();
    loop {
        let before = run.phase();
        let more = run.step(gpu, &stages)?;
        match (before, run.phase()) {
            (Phase::Prior, Phase::Decoder) => {
                let feat = run.image_embedding().expect("after the prior");
                report.push(
                    "prior.img_feat",
                    &gpu.read(feat).await?,
                    &trace.get("prior.img_feat")?.1,
                    tol,
                );
            }
            (Phase::Decoder, Phase::SuperRes) => {
                // The clamped images; the recorded ones are clamped to compare.
                let want: Vec<f32> = trace
                    .get("decoder.images_64")?
                    .1
                    .iter()
                    .map(|v| v.clamp(-1.0, 1.0))
                    .collect();
                let got = run.decoded().expect("after the decoder");
                report.push("decoder.images_64", &gpu.read(got).await?, &want, tol);
            }
            _ => {}
        }
        if !more {
            break;
        }
    }
    if run.steps_done() != run.total_steps() {
        return Err(Error::Invalid(format!(
            "{} of {} steps run",
            run.steps_done(),
            run.total_steps()
        )));
    }
    let images = run.images().expect("finished");
    report.push(
        "output.images_256",
        &gpu.read(images).await?,
        &trace.get("output.images_256")?.1,
        tol,
    );
    Ok(report)
}

#[derive(serde::Deserialize)]
struct DecoderCase {
    module_kwargs: DecoderConfig,
    #[serde(default)]
    state_dict_prefix: String,
    yaml_config: DecoderYaml,
}

/// The decoder's image size lives only in the yaml config's hparams.
#[derive(serde::Deserialize)]
struct DecoderYaml {
    model: DecoderYamlModel,
}

#[derive(serde::Deserialize)]
struct DecoderYamlModel {
    hparams: DecoderHparams,
}

#[derive(serde::Deserialize)]
struct DecoderHparams {
    image_size: usize,
}

/// `decoder/`: the decoder built from `config.json` alone, one forward on
/// the recorded inputs, every recorded intermediate compared.
pub async fn check_decoder(
    gpu: &Gpu,
    config_json: &[u8],
    weights: &WeightSource<'_>,
    io: &[u8],
    tol: f64,
    dtype: WeightDType,
) -> Result<Report> {
    let case: DecoderCase = parse_config(config_json, "config.json")?;
    let loader = Loader::new(gpu, weights, dtype)?;
    let decoder = Decoder::load(gpu, case.module_kwargs, &loader, &case.state_dict_prefix)?;
    loader.finish()?;
    let io = Tensors::new(io, "io.safetensors")?;
    let upload = |name: &str| io.upload(gpu, name);
    let (x, t, y, txt_feat, txt_feat_seq) = (
        upload("in.x")?,
        upload("in.timesteps")?,
        upload("in.y")?,
        upload("in.txt_feat")?,
        upload("in.txt_feat_seq")?,
    );
    let mask: Vec<u32> = io.get("in.mask")?.1.iter().map(|&m| m as u32).collect();
    let mut cap = Vec::new();
    let mut rec = gpu.recorder();
    let text = decoder.condition(
        &mut rec,
        &DecoderCond {
            y: &y,
            txt_feat: &txt_feat,
            txt_feat_seq: &txt_feat_seq,
            mask: &mask,
        },
        Some(&mut cap),
    )?;
    let out = decoder.forward(&mut rec, &x, &t, &text, Some(&mut cap))?;
    rec.submit()?;
    cap.push(("out".into(), out));
    let mut report = Report::default();
    for (name, t) in cap {
        let mut got = gpu.read(&t).await?;
        let want_name = match name.as_str() {
            "time_embed_out" => "time_emb",
            "xf_out_tokens" => "xf_out",
            n => n,
        };
        if !io.has(want_name) {
            continue; // an engine intermediate the fixture does not record
        }
        if name == "xf_out_tokens" {
            // The fixture records it channels-first [N, W, S].
            got = channels_first(&got, &t);
        }
        report.push(want_name, &got, &io.get(want_name)?.1, tol);
    }
    Ok(report)
}

#[derive(serde::Deserialize)]
struct SuperResCase {
    module_kwargs_model_first_steps: SuperResConfig,
    module_kwargs_model_last_step: SuperResConfig,
    state_dict_prefixes: Vec<String>,
}

/// `sr/`: both SR networks built from `config.json`, one forward each on the
/// recorded inputs; every recorded intermediate of the first compared, and
/// the output of the last.
pub async fn check_sr(
    gpu: &Gpu,
    config_json: &[u8],
    weights: &WeightSource<'_>,
    io: &[u8],
    tol: f64,
    dtype: WeightDType,
) -> Result<Report> {
    let case: SuperResCase = parse_config(config_json, "config.json")?;
    let [first_prefix, last_prefix] = case.state_dict_prefixes.as_slice() else {
        return Err(Error::Invalid(
            "config.json: state_dict_prefixes must name the two SR networks".into(),
        ));
    };
    let loader = Loader::new(gpu, weights, dtype)?;
    let first = SuperRes::load(case.module_kwargs_model_first_steps, &loader, first_prefix)?;
    let last = SuperRes::load(case.module_kwargs_model_last_step, &loader, last_prefix)?;
    loader.finish()?;
    let io = Tensors::new(io, "io.safetensors")?;
    let upload = |name: &str| io.upload(gpu, name);
    let (x, low_res) = (upload("in.x")?, upload("in.low_res")?);
    let (t_first, t_last) = (upload("in.timesteps")?, upload("in.timesteps_last")?);
    let mut cap = Vec::new();
    let mut rec = gpu.recorder();
    let out_first = first.forward(&mut rec, &x, &low_res, &t_first, Some(&mut cap))?;
    let out_last = last.forward(&mut rec, &x, &low_res, &t_last, None)?;
    rec.submit()?;
    cap.push(("out".into(), out_first));
    let mut report = Report::default();
    for (name, t) in cap {
        let name = match name.as_str() {
            "time_embed_out" => "first.time_emb".to_string(),
            n => format!("first.{n}"),
        };
        if io.has(&name) {
            report.push(&name, &gpu.read(&t).await?, &io.get(&name)?.1, tol);
        }
    }
    report.push(
        "last.out",
        &gpu.read(&out_last).await?,
        &io.get("last.out")?.1,
        tol,
    );
    Ok(report)
}

/// `bicubic/`: Karlo's antialiased bicubic resize (x2 and x4 cases).
pub async fn check_bicubic(gpu: &Gpu, resize: &[u8], tol: f64) -> Result<Report> {
    let io = Tensors::new(resize, "resize.safetensors")?;
    let mut report = Report::default();
    for key in ["x2", "x4"] {
        let (s, x) = io.get(&format!("{key}.in"))?;
        let (os, want) = io.get(&format!("{key}.out"))?;
        if s.len() != 4 || os.len() != 4 {
            return Err(Error::Invalid(format!("{key}: NCHW tensors expected")));
        }
        let xt = gpu.upload(&s, &x)?;
        let mut rec = gpu.recorder();
        let y = crate::kernels::resample::bicubic_aa(&mut rec, &xt, os[2], os[3])?;
        rec.submit()?;
        report.push(format!("{key}.out"), &gpu.read(&y).await?, &want, tol);
    }
    Ok(report)
}

/// Replays every step of `stage` in a trace from the recorded x_t and noise:
/// `net` (recorder, model input, timesteps, respaced index) runs the network
/// (a CFG stage feeds `cat([x_t[:B], x_t[:B]])`), the engine's sampler kernel
/// takes the step; the model output, x0 and the sample (first B rows) are
/// compared. Returns the last sample.
#[allow(clippy::too_many_arguments)]
async fn replay_stage(
    gpu: &Gpu,
    trace: &Tensors<'_>,
    report: &mut Report,
    stage: &str,
    sched: &Schedule,
    kind: &StageKind,
    b: usize,
    tol: f64,
    net: &dyn Fn(&mut Recorder, &Tensor, &Tensor, usize) -> Result<Tensor>,
) -> Result<Vec<f32>> {
    let (shape, mut x_t) = trace.get(&format!("{stage}.noise_init"))?;
    let rows = shape.first().copied().unwrap_or(0);
    let per = x_t.len() / rows.max(1);
    if rows < b || (kind.guidance.is_some() && rows != 2 * b) {
        return Err(Error::Invalid(format!(
            "{stage}.noise_init: {rows} rows for {b} prompts"
        )));
    }
    let with_rows = |n: usize| [vec![n], shape[1..].to_vec()].concat();
    let first = |v: Vec<f32>| v[..(b * per).min(v.len())].to_vec();
    let mut last = Vec::new();
    for k in 0..sched.len() {
        let i = sched.len() - 1 - k;
        let key = |q: &str| format!("{stage}.step{k:02}.{q}");
        if x_t.len() != rows * per {
            return Err(Error::Invalid(format!(
                "{stage} step {k}: recorded x_t of {} values, expected {}",
                x_t.len(),
                rows * per
            )));
        }
        let model_rows = if kind.guidance.is_some() { 2 * b } else { b };
        let cond = &x_t[..b * per];
        let model_in = if kind.guidance.is_some() {
            [cond, cond].concat()
        } else {
            cond.to_vec()
        };
        let model_in = gpu.upload(&with_rows(model_rows), &model_in)?;
        let t = gpu.upload(
            &[model_rows],
            &vec![sched.timestep_map[i] as f32; model_rows],
        )?;
        let x = gpu.upload(&shape, &x_t)?;
        let noise = gpu.upload(&with_rows(b), &first(trace.get(&key("noise"))?.1))?;
        let mut rec = gpu.recorder();
        let out = net(&mut rec, &model_in, &t, i)?;
        let (next, x0) = sampler_step(
            &mut rec,
            &Step {
                model_out: &out,
                x_t: &x,
                noise: &noise,
                guidance: kind.guidance,
                ddim: false,
                predict_x0: kind.predict_x0,
                learned_variance: kind.learned_variance,
                clamp_x0: Some(kind.clamp),
                pin: None,
                grad: None,
                last: i == 0,
                replicate: false,
                coeffs: sched.coeffs(i, 0.0),
            },
        )?;
        rec.submit()?;
        report.push(
            key("model_out"),
            &gpu.read(&out).await?,
            &trace.get(&key("model_out"))?.1,
            tol,
        );
        report.push(
            key("pred_xstart"),
            &gpu.read(&x0).await?,
            &first(trace.get(&key("pred_xstart"))?.1),
            tol,
        );
        last = gpu.read(&next).await?;
        let recorded = trace.get(&key("sample"))?.1;
        report.push(key("sample"), &last, &first(recorded.clone()), tol);
        // The next step starts from the recorded sample (the run is chaotic over steps).
        x_t = recorded;
    }
    Ok(last)
}

/// A fixture folder's `config.json` (`what` names it in errors) as the case
/// type it describes.
fn parse_config<T: serde::de::DeserializeOwned>(json: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(json).map_err(|e| Error::Invalid(format!("{what}: {e}")))
}

/// Token-major `[N, L, W]` values (of tensor `t`) reordered channels-first
/// `[N, W, L]`, the layout the fixtures record sequences in.
fn channels_first(values: &[f32], t: &Tensor) -> Vec<f32> {
    let (l, w) = (t.shape()[1], t.shape()[2]);
    (0..values.len())
        .map(|i| {
            let (b, c, j) = (i / (w * l), (i / l) % w, i % l);
            values[(b * l + j) * w + c]
        })
        .collect()
}
