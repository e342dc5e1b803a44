// Row softmax of scale * x (+ optional additive mask row), in f32.
struct Params { rows: u32, dim: u32, scale: f32, has_mask: u32, mask_rows: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<f32>;   // [mask_rows, dim], row = row % mask_rows
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, 256>;

fn logit(row: u32, i: u32) -> f32 {
    var v = p.scale * x[row * p.dim + i];
    if (p.has_mask != 0u) { v = v + mask[(row % p.mask_rows) * p.dim + i]; }
    return max(v, -1e30);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row = linear_group(wg, nwg);
    if (row >= p.rows) { return; }
    var m = -1e30;
    for (var i = li; i < p.dim; i = i + 256u) { m = max(m, logit(row, i)); }
    red[li] = m;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (li < s) { red[li] = max(red[li], red[li + s]); }
        workgroupBarrier();
    }
    m = red[0];
    workgroupBarrier();
    var sum = 0.0;
    for (var i = li; i < p.dim; i = i + 256u) { sum = sum + exp(logit(row, i) - m); }
    red[li] = sum;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if (li < s) { red[li] = red[li] + red[li + s]; }
        workgroupBarrier();
    }
    let inv = 1.0 / red[0];
    for (var i = li; i < p.dim; i = i + 256u) {
        out[row * p.dim + i] = exp(logit(row, i) - m) * inv;
    }
}
