// One whole diffusion sampling step on the GPU, per element of x_t [B, C, S]:
//   1. classifier-free guidance on the first C model channels (cond rows
//      0..B-1, uncond rows B..2B-1): g = u + scale * (c - u); the variance
//      channels are not guided (each row keeps its own);
//   2. x0 prediction (from eps or directly), pinning of known pixels
//      x0 = x0 * (1 - m) + img * m (inpainting), then clamp to [-bound, bound];
//   3. ancestral: posterior mean + learned-range / fixed variance, optional
//      mean += var * grad (CLIP guidance), + sigma * noise unless last step;
//      DDIM: re-derived eps, x = x0 sqrt(ab_prev) + c * eps + sigma * noise.
// x_next is written to out_rows = B or 2B rows (the next model batch [x, x]).
struct Params {
    b: u32, c: u32, s: u32, model_c: u32,
    cfg: u32, ddim: u32, predict_x0: u32, var_kind: u32,
    clip: u32, has_pin: u32, has_grad: u32, last: u32,
    out_rows: u32, guidance: f32, sqrt_recip_ac: f32, sqrt_recipm1_ac: f32,
    coef1: f32, coef2: f32, max_log: f32, min_log: f32,
    sqrt_ac_prev: f32, ddim_eps_coef: f32, ddim_sigma: f32, fixed_log_var: f32,
    clip_bound: f32,
}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> model_out: array<f32>;  // [B or 2B, model_c, S]
@group(0) @binding(2) var<storage, read> x_t: array<f32>;        // [>=B, C, S]
@group(0) @binding(3) var<storage, read> noise: array<f32>;      // [B, C, S]
@group(0) @binding(4) var<storage, read> pin_img: array<f32>;    // [B, C, S]
@group(0) @binding(5) var<storage, read> pin_mask: array<f32>;   // [B, 1, S], 1 = keep
@group(0) @binding(6) var<storage, read> grad: array<f32>;       // [B, C, S]
@group(0) @binding(7) var<storage, read_write> x_next: array<f32>;  // [out_rows, C, S]
@group(0) @binding(8) var<storage, read_write> pred_x0: array<f32>; // [B, C, S]

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let e = linear_group(wg, nwg) * 256u + li;
    let per = p.c * p.s;
    if (e >= p.b * per) { return; }
    let bi = e / per;
    let ci = (e / p.s) % p.c;
    let si = e % p.s;
    let row = bi * p.model_c * p.s;
    var out = model_out[row + ci * p.s + si];
    if (p.cfg != 0u) {
        let u = model_out[(bi + p.b) * p.model_c * p.s + ci * p.s + si];
        out = u + p.guidance * (out - u);
    }
    let x = x_t[e];
    var x0 = out;
    if (p.predict_x0 == 0u) { x0 = p.sqrt_recip_ac * x - p.sqrt_recipm1_ac * out; }
    if (p.has_pin != 0u) {
        let m = pin_mask[bi * p.s + si];
        x0 = x0 * (1.0 - m) + pin_img[e] * m;
    }
    if (p.clip != 0u) { x0 = clamp(x0, -p.clip_bound, p.clip_bound); }
    pred_x0[e] = x0;
    let nz = select(noise[e], 0.0, p.last != 0u);
    var xn: f32;
    if (p.ddim != 0u) {
        let eps = (p.sqrt_recip_ac * x - x0) / p.sqrt_recipm1_ac;
        xn = x0 * p.sqrt_ac_prev + p.ddim_eps_coef * eps + p.ddim_sigma * nz;
    } else {
        var log_var = p.fixed_log_var;
        if (p.var_kind == 0u) {
            let v = model_out[row + (p.c + ci) * p.s + si];
            let frac = (v + 1.0) * 0.5;
            log_var = frac * p.max_log + (1.0 - frac) * p.min_log;
        }
        var mean = p.coef1 * x0 + p.coef2 * x;
        if (p.has_grad != 0u) { mean = mean + exp(log_var) * grad[e]; }
        xn = mean + exp(0.5 * log_var) * nz;
    }
    x_next[e] = xn;
    if (p.out_rows > p.b) { x_next[e + p.b * per] = xn; }
}
