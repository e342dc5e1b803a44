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
    bicubic_aa_rows(planes, h, w, ho, wo, |p, y, line| {
        line.copy_from_slice(&x[(p * h + y) * w..(p * h + y + 1) * w])
    })
}

/// [`bicubic_aa`] reading the input a row at a time: `row(plane, y, line)`
/// fills `line` (`w` values), so a large image need not be held as f32
/// planes (a 16 MP photo is 192 MB of them).
pub fn bicubic_aa_rows(
    planes: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    mut row: impl FnMut(usize, usize, &mut [f32]),
) -> Vec<f32> {
    let wy = aa_weights(h, ho);
    let wx = aa_weights(w, wo);
    let mut out = Vec::with_capacity(planes * ho * wo);
    // The row pass likewise runs tap by tap over all output columns, so the
    // sums are independent (not one long chain of dependent adds): tap `c`
    // of every column as a table, padded with zero weights (adding 0·v
    // leaves a sum unchanged) at a clamped index.
    let taps = wx.iter().map(|(_, xs)| xs.len()).max().unwrap_or(0);
    let mut tap_w = vec![0f64; taps * wo];
    let mut tap_i = vec![0usize; taps * wo];
    for (o, (x0, xs)) in wx.iter().enumerate() {
        for c in 0..taps {
            tap_w[c * wo + o] = xs.get(c).copied().unwrap_or(0.0);
            tap_i[c * wo + o] = (x0 + c).min(w - 1);
        }
    }
    let mut rows = vec![0f64; h * wo];
    let mut line = vec![0f32; w];
    for p in 0..planes {
        for y in 0..h {
            row(p, y, &mut line);
            let row = &mut rows[y * wo..(y + 1) * wo];
            row.fill(0.0);
            for (ws, is) in tap_w.chunks_exact(wo).zip(tap_i.chunks_exact(wo)) {
                // Four columns a trip (the same sums): fewer loop trips, which
                // is what a fuzzing build's coverage counters cost.
                let (mut a4, mut w4, mut i4) = (
                    row.chunks_exact_mut(4),
                    ws.chunks_exact(4),
                    is.chunks_exact(4),
                );
                for ((a, w), i) in (&mut a4).zip(&mut w4).zip(&mut i4) {
                    let v = [line[i[0]], line[i[1]], line[i[2]], line[i[3]]];
                    for k in 0..4 {
                        a[k] += w[k] * v[k] as f64;
                    }
                }
                let tail = a4.into_remainder().iter_mut().zip(w4.remainder());
                for ((a, &wv), &i) in tail.zip(i4.remainder()) {
                    *a += wv * line[i] as f64;
                }
            }
        }
        // A whole output row at a time, taps outermost: each output's sum
        // still runs over the taps in order (the same result), and the inner
        // loop runs over contiguous columns, which vectorises.
        let mut acc = vec![0f64; wo];
        for (y0, ys) in &wy {
            acc.fill(0.0);
            for (r, wyv) in ys.iter().enumerate() {
                let row = &rows[(y0 + r) * wo..(y0 + r + 1) * wo];
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += wyv * v;
                }
            }
            out.extend(acc.iter().map(|&a| a as f32));
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

// ---- Backward passes (CLIP guidance) -------------------------------------

/// `dx[m, k] = Σ_n dy[m, n]·w[n, k] + res[m, k]` (the input gradient of [`linear`]).
pub fn linear_grad_input(dy: &[f32], w: &[f32], n: usize, res: Option<&[f32]>) -> Vec<f32> {
    let k = w.len() / n;
    let m = dy.len() / n;
    let mut dx = vec![0f32; m * k];
    for i in 0..m {
        for l in 0..k {
            let s: f64 = (0..n)
                .map(|j| dy[i * n + j] as f64 * w[j * k + l] as f64)
                .sum();
            dx[i * k + l] = (s + res.map_or(0.0, |r| r[i * k + l] as f64)) as f32;
        }
    }
    dx
}

/// The input gradient of [`layer_norm`] (affine gain `gamma`), plus `res`.
pub fn layer_norm_backward(
    x: &[f32],
    dim: usize,
    gamma: Option<&[f32]>,
    dy: &[f32],
    res: Option<&[f32]>,
    eps: f64,
) -> Vec<f32> {
    let mut dx = Vec::with_capacity(x.len());
    for (r, row) in x.chunks(dim).enumerate() {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / dim as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        let g: Vec<f64> = (0..dim)
            .map(|i| dy[r * dim + i] as f64 * gamma.map_or(1.0, |g| g[i] as f64))
            .collect();
        let xh: Vec<f64> = row.iter().map(|&v| (v as f64 - mean) * rstd).collect();
        let mg = g.iter().sum::<f64>() / dim as f64;
        let mgx = g.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / dim as f64;
        for i in 0..dim {
            let v = rstd * (g[i] - mg - xh[i] * mgx);
            dx.push((v + res.map_or(0.0, |r0| r0[r * dim + i] as f64)) as f32);
        }
    }
    dx
}

/// `dy · gelu′(x)` for the erf GELU.
pub fn gelu_grad(dy: &[f32], x: &[f32]) -> Vec<f32> {
    dy.iter()
        .zip(x)
        .map(|(&g, &v)| {
            let v = v as f64;
            let d = 0.5 * (1.0 + libm::erf(v / std::f64::consts::SQRT_2))
                + v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
            (g as f64 * d) as f32
        })
        .collect()
}

/// Multi-head attention over `[B, L, H·d]` q, k, v (scale on q and on k,
/// optionally causal) → `[B, L, H·d]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_blh(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    b: usize,
    l: usize,
    heads: usize,
    scale: f64,
    causal: bool,
) -> Vec<f32> {
    let w = q.len() / (b * l);
    let d = w / heads;
    let rows = |t: &[f32], bi: usize, h: usize| -> Vec<Vec<f64>> {
        (0..l)
            .map(|i| {
                (0..d)
                    .map(|c| t[(bi * l + i) * w + h * d + c] as f64)
                    .collect()
            })
            .collect()
    };
    let mut out = vec![0f32; q.len()];
    for bi in 0..b {
        for h in 0..heads {
            let o = attention_head(
                &rows(q, bi, h),
                &rows(k, bi, h),
                &rows(v, bi, h),
                scale,
                None,
                causal.then_some(0),
            );
            for (i, oi) in o.iter().enumerate() {
                for (c, &val) in oi.iter().enumerate() {
                    out[(bi * l + i) * w + h * d + c] = val as f32;
                }
            }
        }
    }
    out
}

/// `(dq, dk, dv)` of [`attention_blh`] given the output gradient `dout`.
#[allow(clippy::too_many_arguments)]
pub fn attention_blh_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    b: usize,
    l: usize,
    heads: usize,
    scale: f64,
    causal: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let w = q.len() / (b * l);
    let d = w / heads;
    let at = |bi: usize, t: usize, h: usize, c: usize| (bi * l + t) * w + h * d + c;
    let (mut dq, mut dk, mut dv) = (
        vec![0f64; q.len()],
        vec![0f64; q.len()],
        vec![0f64; q.len()],
    );
    let s2 = scale * scale;
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..l {
                let keys = if causal { i + 1 } else { l };
                let logits: Vec<f64> = (0..keys)
                    .map(|j| {
                        s2 * (0..d)
                            .map(|c| q[at(bi, i, h, c)] as f64 * k[at(bi, j, h, c)] as f64)
                            .sum::<f64>()
                    })
                    .collect();
                let mx = logits.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = logits.iter().map(|x| (x - mx).exp()).collect();
                let sum: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|x| x / sum).collect();
                let dp: Vec<f64> = (0..keys)
                    .map(|j| {
                        (0..d)
                            .map(|c| dout[at(bi, i, h, c)] as f64 * v[at(bi, j, h, c)] as f64)
                            .sum()
                    })
                    .collect();
                let dsum: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                for j in 0..keys {
                    let ds = p[j] * (dp[j] - dsum);
                    for c in 0..d {
                        dq[at(bi, i, h, c)] += s2 * ds * k[at(bi, j, h, c)] as f64;
                        dk[at(bi, j, h, c)] += s2 * ds * q[at(bi, i, h, c)] as f64;
                        dv[at(bi, j, h, c)] += p[j] * dout[at(bi, i, h, c)] as f64;
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (f(dq), f(dk), f(dv))
}

/// `[B, 3, S, S]` → `[B, (S/P)², 3·P·P]` of `x·slope_c + offset_c` (`patches.wgsl`).
pub fn to_patches(
    x: &[f32],
    s: usize,
    patch: usize,
    slope: [f32; 3],
    offset: [f32; 3],
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (e, &v) in x.iter().enumerate() {
        let ch = (e / (s * s)) % 3;
        out[patch_index(e, s, patch)] = (v as f64 * slope[ch] as f64 + offset[ch] as f64) as f32;
    }
    out
}

/// The gradient of [`to_patches`].
pub fn from_patches(dp: &[f32], s: usize, patch: usize, slope: [f32; 3]) -> Vec<f32> {
    (0..dp.len())
        .map(|e| dp[patch_index(e, s, patch)] * slope[(e / (s * s)) % 3])
        .collect()
}

fn patch_index(e: usize, s: usize, patch: usize) -> usize {
    let (x, y, ch, b) = (e % s, (e / s) % s, (e / (s * s)) % 3, e / (3 * s * s));
    let g = s / patch;
    let cell = (y / patch) * g + x / patch;
    let col = (ch * patch + y % patch) * patch + x % patch;
    (b * g * g + cell) * 3 * patch * patch + col
}

/// `scale · normalize(text_b) · normalize(image_b)` per row (GLIDE's CLIP
/// guidance score, normalisation `z / (‖z‖ + 1e-12)`).
pub fn clip_score(text: &[f32], image: &[f32], dim: usize) -> Vec<f64> {
    text.chunks(dim)
        .zip(image.chunks(dim))
        .map(|(t, z)| {
            let nt = t.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt() + 1e-12;
            let nz = z.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt() + 1e-12;
            t.iter()
                .zip(z)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>()
                / (nt * nz)
        })
        .collect()
}

/// `scale · ∂ clip_score / ∂ image`.
pub fn clip_score_grad(text: &[f32], image: &[f32], dim: usize, scale: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(image.len());
    for (t, z) in text.chunks(dim).zip(image.chunks(dim)) {
        let nt = t.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt() + 1e-12;
        let n = z.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let ne = n + 1e-12;
        let uz = t
            .iter()
            .zip(z)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum::<f64>()
            / nt;
        for (&a, &b) in t.iter().zip(z) {
            let g = a as f64 / (nt * ne) - uz * b as f64 / (n.max(1e-30) * ne * ne);
            out.push((scale * g) as f32);
        }
    }
    out
}

#[cfg(test)]
mod backward_tests {
    //! The backward references against central finite differences of the
    //! forward references (f64 accumulation; f32 inputs, so ε ≈ 1e-2).
    use super::*;

    fn rng(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Checks `grad` against ∂(Σ f(x)·dy)/∂x by central differences.
    fn fd_check(name: &str, x: &[f32], dy: &[f32], f: impl Fn(&[f32]) -> Vec<f32>, grad: &[f32]) {
        let eps = 1e-2f32;
        let mut worst = 0f64;
        let scale = grad
            .iter()
            .fold(0f64, |m, &g| m.max(g.abs() as f64))
            .max(1e-6);
        for i in 0..x.len() {
            let mut xp = x.to_vec();
            xp[i] += eps;
            let mut xm = x.to_vec();
            xm[i] -= eps;
            let dot = |v: Vec<f32>| {
                v.iter()
                    .zip(dy)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
            };
            let fd = (dot(f(&xp)) - dot(f(&xm))) / (2.0 * eps as f64);
            worst = worst.max((fd - grad[i] as f64).abs() / scale);
        }
        assert!(
            worst < 2e-3,
            "{name}: finite differences differ by {worst:.2e} (relative)"
        );
    }

    #[test]
    fn linear_grad_matches_finite_differences() {
        let (m, k, n) = (3, 5, 4);
        let (x, w, dy) = (rng(m * k, 1), rng(n * k, 2), rng(m * n, 3));
        let g = linear_grad_input(&dy, &w, n, None);
        fd_check(
            "linear",
            &x,
            &dy,
            |x| linear(x, &w, n, None, None, Act::None),
            &g,
        );
    }

    #[test]
    fn layer_norm_grad_matches_finite_differences() {
        let dim = 7;
        let (x, gamma, beta, dy) = (rng(3 * dim, 4), rng(dim, 5), rng(dim, 6), rng(3 * dim, 7));
        let g = layer_norm_backward(&x, dim, Some(&gamma), &dy, None, 1e-5);
        let f = |x: &[f32]| layer_norm(x, dim, Some(&gamma), Some(&beta), 1e-5);
        fd_check("layer_norm", &x, &dy, f, &g);
    }

    #[test]
    fn gelu_grad_matches_finite_differences() {
        let (x, dy) = (
            rng(11, 8).iter().map(|v| v * 3.0).collect::<Vec<_>>(),
            rng(11, 9),
        );
        let g = gelu_grad(&dy, &x);
        let f = |x: &[f32]| x.iter().map(|&v| act(v as f64, Act::Gelu) as f32).collect();
        fd_check("gelu", &x, &dy, f, &g);
    }

    #[test]
    fn attention_grads_match_finite_differences() {
        let (b, l, heads, d) = (2, 5, 2, 3);
        let w = heads * d;
        let n = b * l * w;
        let (q, k, v, dy) = (rng(n, 10), rng(n, 11), rng(n, 12), rng(n, 13));
        for causal in [false, true] {
            let s = 0.8;
            let (dq, dk, dv) = attention_blh_backward(&q, &k, &v, &dy, b, l, heads, s, causal);
            let att =
                |q: &[f32], k: &[f32], v: &[f32]| attention_blh(q, k, v, b, l, heads, s, causal);
            fd_check("attention dq", &q, &dy, |x| att(x, &k, &v), &dq);
            fd_check("attention dk", &k, &dy, |x| att(&q, x, &v), &dk);
            fd_check("attention dv", &v, &dy, |x| att(&q, &k, x), &dv);
        }
    }

    #[test]
    fn patch_and_score_grads_match_finite_differences() {
        let (s, p) = (8, 4);
        let (slope, offset) = ([1.5, -0.5, 2.0], [0.1, 0.2, -0.3]);
        let (x, dy) = (rng(2 * 3 * s * s, 14), rng(2 * 3 * s * s, 15));
        let g = from_patches(&dy, s, p, slope);
        fd_check(
            "patches",
            &x,
            &dy,
            |x| to_patches(x, s, p, slope, offset),
            &g,
        );
        let (t, z) = (rng(2 * 6, 16), rng(2 * 6, 17));
        let g = clip_score_grad(&t, &z, 6, 100.0);
        let ones = [1f32];
        let f = |z: &[f32]| vec![(100.0 * clip_score(&t, z, 6).iter().sum::<f64>()) as f32];
        fd_check("clip score", &z, &ones, f, &g);
    }
}

#[cfg(test)]
mod resize_tests {
    use super::*;

    /// The separable, row-at-a-time resize equals the plain per-pixel sum
    /// (rows filtered first, then the taps in order) bit for bit, down and
    /// up, at odd sizes.
    #[test]
    fn bicubic_aa_equals_the_per_pixel_sum() {
        for (planes, h, w, ho, wo) in [
            (3, 37, 19, 8, 11),
            (1, 5, 7, 64, 33),
            (2, 1, 1, 9, 4),
            (1, 301, 517, 7, 9),
            (1, 3, 200, 2, 64),
        ] {
            let x = crate::rng::randn(planes * h * w, 7, h as u32);
            let (wy, wx) = (aa_weights(h, ho), aa_weights(w, wo));
            let mut want = Vec::new();
            for p in 0..planes {
                for (y0, ys) in &wy {
                    for (x0, xs) in &wx {
                        let mut acc = 0f64;
                        for (r, wyv) in ys.iter().enumerate() {
                            let line = &x[(p * h + y0 + r) * w..];
                            let row: f64 = xs
                                .iter()
                                .enumerate()
                                .map(|(c, v)| v * line[x0 + c] as f64)
                                .sum();
                            acc += wyv * row;
                        }
                        want.push(acc as f32);
                    }
                }
            }
            assert_eq!(
                bicubic_aa(&x, planes, h, w, ho, wo),
                want,
                "{h}x{w} → {ho}x{wo}"
            );
        }
    }
}
