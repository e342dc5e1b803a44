// Row softmax of scale * x (+ optional additive mask row), in f32.
struct Params { rows: u32, dim: u32, scale: f32, has_mask: u32, mask_rows: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<f32>;   // [mask_rows, dim], row = row % mask_rows
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn logit(row: u32, i: u32) -> f32 {
    var v = p.scale * x[row * p.dim + i];
    if (p.has_mask != 0u) { v = v + mask[(row % p.mask_rows) * p.dim + i]; }
    return max(v, -1e30);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        lane: Lane) {
    let li = lane.li;
    let row = linear_group(wg, nwg);
    if (row >= p.rows) { return; }
    var m = -1e30;
    for (var i = li; i < p.dim; i = i + 256u) { m = max(m, logit(row, i)); }
    m = wg_max(lane, m);
    var sum = 0.0;
    for (var i = li; i < p.dim; i = i + 256u) { sum = sum + exp(logit(row, i) - m); }
    let inv = 1.0 / wg_sum(lane, sum);
    for (var i = li; i < p.dim; i = i + 256u) {
        out[row * p.dim + i] = exp(logit(row, i) - m) * inv;
    }
}
