// Gradient of GLIDE's CLIP guidance score with respect to the raw image
// embedding, one workgroup per batch row:
//   score = scale * (t / (|t| + 1e-12)) . (z / (|z| + 1e-12))
//   dz = scale * (u / (n + 1e-12) - (u . z) * z / (n * (n + 1e-12)^2)),
// with u the normalised text embedding and n = |z|.
struct Params { rows: u32, dim: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> text: array<f32>;
@group(0) @binding(2) var<storage, read> image: array<f32>;
@group(0) @binding(3) var<storage, read_write> dz: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        lane: Lane) {
    let li = lane.li;
    let row = linear_group(wg, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.dim;
    var tt = 0.0;
    var zz = 0.0;
    var tz = 0.0;
    for (var i = li; i < p.dim; i = i + 256u) {
        let t = text[base + i];
        let z = image[base + i];
        tt = fma(t, t, tt);
        zz = fma(z, z, zz);
        tz = fma(t, z, tz);
    }
    let nt = sqrt(wg_sum(lane, tt)) + 1e-12;
    let n = sqrt(wg_sum(lane, zz));
    let uz = wg_sum(lane, tz) / nt;
    let ne = n + 1e-12;
    let k = uz / (max(n, 1e-30) * ne * ne);
    for (var i = li; i < p.dim; i = i + 256u) {
        dz[base + i] = p.scale * (text[base + i] / (nt * ne) - k * image[base + i]);
    }
}
