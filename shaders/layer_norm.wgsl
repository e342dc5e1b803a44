// LayerNorm over the last dimension: one workgroup per row, two-pass in f32.
struct Params { rows: u32, dim: u32, eps: f32, has_affine: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        lane: Lane) {
    let li = lane.li;
    let row = linear_group(wg, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.dim;
    var s = 0.0;
    for (var i = li; i < p.dim; i = i + 256u) { s = s + x[base + i]; }
    let mean = wg_sum(lane, s) / f32(p.dim);
    var q = 0.0;
    for (var i = li; i < p.dim; i = i + 256u) { let d = x[base + i] - mean; q = q + d * d; }
    let rstd = 1.0 / sqrt(wg_sum(lane, q) / f32(p.dim) + p.eps);
    for (var i = li; i < p.dim; i = i + 256u) {
        var v = (x[base + i] - mean) * rstd;
        if (p.has_affine != 0u) { v = v * gamma[i] + beta[i]; }
        out[base + i] = v;
    }
}
