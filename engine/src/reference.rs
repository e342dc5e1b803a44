//! Plain CPU references (f64 accumulation) that the WGSL kernels are tested
//! against. Written for clarity, not speed; layouts match the kernels.

use crate::kernels::Act;

pub fn act(x: f64, a: Act) -> f64 {
    match a {
        Act::None => x,
        Act::Silu => x / (1.0 + (-x).exp()),
        Act::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Act::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        Act::Relu => x.max(0.0),
        Act::HardTanh => x.clamp(-1.0, 1.0),
    }
}

/// `y[m, n] = act(Σ_k x[m, k]·w[n, k] + bias[n] + res[m, n])`.
pub fn linear(
    x: &[f32],
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    res: Option<&[f32]>,
    a: Act,
) -> Vec<f32> {
    let k = w.len() / n;
    let m = x.len() / k;
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s: f64 = (0..k)
                .map(|l| x[i * k + l] as f64 * w[j * k + l] as f64)
                .sum();
            s += bias.map_or(0.0, |b| b[j] as f64);
            s += res.map_or(0.0, |r| r[i * n + j] as f64);
            y[i * n + j] = act(s, a) as f32;
        }
    }
    y
}

/// GroupNorm coefficients `[N, 3C]` (mean, A, B) as in `group_norm_coeffs.wgsl`.
#[allow(clippy::too_many_arguments)]
pub fn group_norm_coeffs(
    x: &[f32],
    n: usize,
    c: usize,
    groups: usize,
    eps: f64,
    gamma: &[f32],
    beta: &[f32],
    emb: Option<(&[f32], usize)>,
) -> Vec<f32> {
    let hw = x.len() / (n * c);
    let cg = c / groups;
    let mut out = vec![0f32; n * 3 * c];
    for b in 0..n {
        for g in 0..groups {
            let s = &x[(b * c + g * cg) * hw..(b * c + (g + 1) * cg) * hw];
            let mean = s.iter().map(|&v| v as f64).sum::<f64>() / s.len() as f64;
            let var = s.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / s.len() as f64;
            let rstd = 1.0 / (var + eps).sqrt();
            for ch in g * cg..(g + 1) * cg {
                let (mut a, mut bb) = (rstd * gamma[ch] as f64, beta[ch] as f64);
                if let Some((e, stride)) = emb {
                    let s1 = 1.0 + e[b * stride + ch] as f64;
                    a *= s1;
                    bb = bb * s1 + e[b * stride + c + ch] as f64;
                }
                out[b * 3 * c + ch] = mean as f32;
                out[b * 3 * c + c + ch] = a as f32;
                out[b * 3 * c + 2 * c + ch] = bb as f32;
            }
        }
    }
    out
}

/// `act((x - mean)·A + B)` per (n, c).
pub fn norm_apply(x: &[f32], n: usize, c: usize, coef: &[f32], a: Act) -> Vec<f32> {
    let hw = x.len() / (n * c);
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let (b, ch) = (i / (c * hw), (i / hw) % c);
            let o = b * 3 * c;
            act(
                (v as f64 - coef[o + ch] as f64) * coef[o + c + ch] as f64
                    + coef[o + 2 * c + ch] as f64,
                a,
            ) as f32
        })
        .collect()
}

/// Conv2d stride 1, padding ks/2; optional input normalisation (coef, silu) applied before zero padding.
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    x: &[f32],
    n: usize,
    cin: usize,
    h: usize,
    wd: usize,
    w: &[f32],
    cout: usize,
    ks: usize,
    bias: Option<&[f32]>,
    norm: Option<(&[f32], bool)>,
    res: Option<&[f32]>,
) -> Vec<f32> {
    let xin: Vec<f32> = match norm {
        Some((coef, silu)) => norm_apply(x, n, cin, coef, if silu { Act::Silu } else { Act::None }),
        None => x.to_vec(),
    };
    let pad = (ks / 2) as isize;
    let mut out = vec![0f32; n * cout * h * wd];
    for b in 0..n {
        for co in 0..cout {
            for y in 0..h {
                for xx in 0..wd {
                    let mut s = bias.map_or(0.0, |bb| bb[co] as f64);
                    for ci in 0..cin {
                        for ky in 0..ks {
                            for kx in 0..ks {
                                let iy = y as isize + ky as isize - pad;
                                let ix = xx as isize + kx as isize - pad;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let v = xin[((b * cin + ci) * h + iy as usize) * wd + ix as usize]
                                    as f64;
                                s += v * w[((co * cin + ci) * ks + ky) * ks + kx] as f64;
                            }
                        }
                    }
                    let o = ((b * cout + co) * h + y) * wd + xx;
                    s += res.map_or(0.0, |r| r[o] as f64);
                    out[o] = s as f32;
                }
            }
        }
    }
    out
}

pub fn layer_norm(
    x: &[f32],
    dim: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f64,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(dim) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
        for (i, &v) in row.iter().enumerate() {
            let mut y = (v as f64 - mean) / (var + eps).sqrt();
            if let (Some(g), Some(b)) = (gamma, beta) {
                y = y * g[i] as f64 + b[i] as f64;
            }
            out.push(y as f32);
        }
    }
    out
}

pub fn softmax(x: &[f32], dim: usize, scale: f64, mask: Option<&[f32]>) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for (r, row) in x.chunks(dim).enumerate() {
        let logits: Vec<f64> = (0..dim)
            .map(|i| {
                let m = mask.map_or(0.0, |m| m[(r % (m.len() / dim)) * dim + i] as f64);
                (scale * row[i] as f64 + m).max(-1e30)
            })
            .collect();
        let mx = logits.iter().cloned().fold(f64::MIN, f64::max);
        let sum: f64 = logits.iter().map(|l| (l - mx).exp()).sum();
        out.extend(logits.iter().map(|l| ((l - mx).exp() / sum) as f32));
    }
    out
}

/// Attention for one (batch, head): q `[tq][d]`, keys/values `[tk][d]` (encoder
/// tokens already prepended), additive mask per key, causal over the last
/// `tk - s_enc` keys. Logits = (q·s)(k·s).
pub fn attention_head(
    q: &[Vec<f64>],
    k: &[Vec<f64>],
    v: &[Vec<f64>],
    scale: f64,
    mask: Option<&[f32]>,
    causal_from: Option<usize>,
) -> Vec<Vec<f64>> {
    q.iter()
        .enumerate()
        .map(|(i, qi)| {
            let logits: Vec<f64> = k
                .iter()
                .enumerate()
                .map(|(j, kj)| {
                    let mut l: f64 = qi.iter().zip(kj).map(|(a, b)| a * scale * b * scale).sum();
                    l += mask.map_or(0.0, |m| m[j] as f64);
                    if let Some(s) = causal_from {
                        if j >= s && j - s > i {
                            l = -1e30;
                        }
                    }
                    l.max(-1e30)
                })
                .collect();
            let mx = logits.iter().cloned().fold(f64::MIN, f64::max);
            let p: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
            let sum: f64 = p.iter().sum();
            (0..v[0].len())
                .map(|c| p.iter().zip(v).map(|(pj, vj)| pj * vj[c]).sum::<f64>() / sum)
                .collect()
        })
        .collect()
}

/// GLIDE legacy QKV attention: qkv `[N, H·3d, T]`, ekv `[N, H·2d, S]` -> `[N, H·d, T]`.
pub fn legacy_qkv(
    qkv: &[f32],
    n: usize,
    heads: usize,
    t: usize,
    ekv: Option<(&[f32], usize)>,
) -> Vec<f32> {
    let d = qkv.len() / (n * heads * 3 * t);
    let mut out = vec![0f32; n * heads * d * t];
    for b in 0..n {
        for h in 0..heads {
            let get = |j: usize| -> Vec<Vec<f64>> {
                (0..t)
                    .map(|ti| {
                        (0..d)
                            .map(|c| qkv[((b * heads + h) * 3 * d + j * d + c) * t + ti] as f64)
                            .collect()
                    })
                    .collect()
            };
            let (q, mut k, mut v) = (get(0), get(1), get(2));
            if let Some((e, s)) = ekv {
                let eg = |j: usize| -> Vec<Vec<f64>> {
                    (0..s)
                        .map(|si| {
                            (0..d)
                                .map(|c| e[((b * heads + h) * 2 * d + j * d + c) * s + si] as f64)
                                .collect()
                        })
                        .collect()
                };
                let (mut ek, mut ev) = (eg(0), eg(1));
                ek.append(&mut k);
                ev.append(&mut v);
                k = ek;
                v = ev;
            }
            let o = attention_head(&q, &k, &v, 1.0 / (d as f64).sqrt().sqrt(), None, None);
            for (ti, row) in o.iter().enumerate() {
                for c in 0..d {
                    out[((b * heads + h) * d + c) * t + ti] = row[c] as f32;
                }
            }
        }
    }
    out
}

/// Per-head-split QKV `[N, L, H·3d]` -> `[N, L, H·d]` with optional causal mask
/// and additive key mask `[N, L]`.
pub fn per_head_qkv(
    qkv: &[f32],
    n: usize,
    l: usize,
    heads: usize,
    causal: bool,
    mask: Option<&[f32]>,
) -> Vec<f32> {
    let c3 = qkv.len() / (n * l);
    let d = c3 / (3 * heads);
    let mut out = vec![0f32; n * l * heads * d];
    for b in 0..n {
        for h in 0..heads {
            let get = |j: usize| -> Vec<Vec<f64>> {
                (0..l)
                    .map(|t| {
                        (0..d)
                            .map(|c| qkv[(b * l + t) * c3 + h * 3 * d + j * d + c] as f64)
                            .collect()
                    })
                    .collect()
            };
            let m = mask.map(|m| &m[b * l..(b + 1) * l]);
            let o = attention_head(
                &get(0),
                &get(1),
                &get(2),
                1.0 / (d as f64).sqrt().sqrt(),
                m,
                causal.then_some(0),
            );
            for (t, row) in o.iter().enumerate() {
                for c in 0..d {
                    out[(b * l + t) * heads * d + h * d + c] = row[c] as f32;
                }
            }
        }
    }
    out
}

pub fn nearest2x(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(planes * 4 * h * w);
    for p in 0..planes {
        for y in 0..2 * h {
            for xx in 0..2 * w {
                out.push(x[(p * h + y / 2) * w + xx / 2]);
            }
        }
    }
    out
}

pub fn avgpool2(x: &[f32], planes: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for p in 0..planes {
        for y in 0..h / 2 {
            for xx in 0..w / 2 {
                let b = (p * h + 2 * y) * w + 2 * xx;
                out.push(
                    ((x[b] as f64 + x[b + 1] as f64 + x[b + w] as f64 + x[b + w + 1] as f64) / 4.0)
                        as f32,
                );
            }
        }
    }
    out
}

pub fn bilinear(x: &[f32], planes: usize, h: usize, w: usize, ho: usize, wo: usize) -> Vec<f32> {
    let src = |o: usize, insz: usize, outsz: usize| -> (usize, usize, f64) {
        let s = ((o as f64 + 0.5) * (insz as f32 / outsz as f32) as f64 - 0.5).max(0.0);
        let i0 = (s as usize).min(insz - 1);
        (i0, (i0 + 1).min(insz - 1), s - i0 as f64)
    };
    let mut out = Vec::new();
    for p in 0..planes {
        for y in 0..ho {
            let (y0, y1, ly) = src(y, h, ho);
            for xx in 0..wo {
                let (x0, x1, lx) = src(xx, w, wo);
                let g = |yy: usize, xq: usize| x[(p * h + yy) * w + xq] as f64;
                let top = (1.0 - lx) * g(y0, x0) + lx * g(y0, x1);
                let bot = (1.0 - lx) * g(y1, x0) + lx * g(y1, x1);
                out.push(((1.0 - ly) * top + ly * bot) as f32);
            }
        }
    }
    out
}

/// Antialiased bicubic weights (a = -0.5) for one axis, torch `_upsample_bicubic2d_aa`.
fn aa_weights(insz: usize, outsz: usize) -> Vec<(usize, Vec<f64>)> {
    let cubic = |t: f64| {
        let a = -0.5;
        let x = t.abs();
        if x < 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * a
        } else {
            0.0
        }
    };
    let scale = insz as f64 / outsz as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..outsz)
        .map(|o| {
            let center = scale * (o as f64 + 0.5);
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(insz as i64) as usize;
            let ws: Vec<f64> = (lo..hi)
                .map(|j| cubic((j as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = ws.iter().sum();
            (lo, ws.iter().map(|w| w / total).collect())
        })
        .collect()
}

/// Separable: each input row is filtered once (rows × output columns), then
/// the columns — the same sums, in the same order, as filtering every output
/// pixel in 2-D, but linear in the input's size rather than in its square
/// (a large photo squashed to 64 px took seconds).
pub fn bicubic_aa(x: &[f32], planes: usize, h: usize, w: usize, ho: usize, wo: usize) -> Vec<f32> {
    let wy = aa_weights(h, ho);
    let wx = aa_weights(w, wo);
    let mut out = Vec::with_capacity(planes * ho * wo);
    let mut rows = vec![0f64; h * wo];
    for p in 0..planes {
        for y in 0..h {
            let line = &x[(p * h + y) * w..(p * h + y + 1) * w];
            for (o, (x0, xs)) in wx.iter().enumerate() {
                rows[y * wo + o] = xs
                    .iter()
                    .enumerate()
                    .map(|(c, wxv)| wxv * line[x0 + c] as f64)
                    .sum();
            }
        }
        for (y0, ys) in &wy {
            for o in 0..wo {
                let mut acc = 0.0;
                for (r, wyv) in ys.iter().enumerate() {
                    acc += wyv * rows[(y0 + r) * wo + o];
                }
                out.push(acc as f32);
            }
        }
    }
    out
}

/// `[cos(t·f) | sin(t·f)]` with f computed in f32 as torch does.
pub fn timestep_embedding(t: &[f32], dim: usize, sin_first: bool) -> Vec<f32> {
    let half = dim / 2;
    let mut out = Vec::new();
    for &tv in t {
        for j in 0..dim {
            if j >= 2 * half {
                out.push(0.0);
                continue;
            }
            let i = j % half;
            let freq = crate::kernels::timestep::frequencies(dim)[i];
            let arg = (tv * freq) as f64;
            let cos_part = (j < half) != sin_first;
            out.push(if cos_part { arg.cos() } else { arg.sin() } as f32);
        }
    }
    out
}
