// Input gradient of LayerNorm over the last dimension (one workgroup per row):
//   xh = (x - mean) * rstd, gy = dy * gamma,
//   dx = rstd * (gy - mean(gy) - xh * mean(gy * xh)) + res.
// The row statistics are recomputed from x (two-pass, as the forward).
struct Params { rows: u32, dim: u32, eps: f32, has_affine: u32, has_res: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read> res: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        lane: Lane) {
    let li = lane.li;
    let row = linear_group(wg, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.dim;
    let inv_dim = 1.0 / f32(p.dim);
    var s = 0.0;
    for (var i = li; i < p.dim; i = i + 256u) { s = s + x[base + i]; }
    let mean = wg_sum(lane, s) * inv_dim;
    var q = 0.0;
    for (var i = li; i < p.dim; i = i + 256u) { let d = x[base + i] - mean; q = q + d * d; }
    let rstd = 1.0 / sqrt(wg_sum(lane, q) * inv_dim + p.eps);
    var sg = 0.0;
    var sgx = 0.0;
    for (var i = li; i < p.dim; i = i + 256u) {
        var g = dy[base + i];
        if (p.has_affine != 0u) { g = g * gamma[i]; }
        sg = sg + g;
        sgx = sgx + g * (x[base + i] - mean) * rstd;
    }
    let mg = wg_sum(lane, sg) * inv_dim;
    let mgx = wg_sum(lane, sgx) * inv_dim;
    for (var i = li; i < p.dim; i = i + 256u) {
        var g = dy[base + i];
        if (p.has_affine != 0u) { g = g * gamma[i]; }
        let xh = (x[base + i] - mean) * rstd;
        var v = rstd * (g - mg - xh * mgx);
        if (p.has_res != 0u) { v = v + res[base + i]; }
        dx[base + i] = v;
    }
}
