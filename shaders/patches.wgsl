// Non-overlapping P x P patches of [B, 3, S, S] images as rows of
// [B, G*G, 3*P*P] (G = S / P, columns in (channel, ky, kx) order: a stride-P
// patch conv becomes a linear layer), with a per-channel affine map on the
// way in (the noisy CLIP's (x + 1) * 127.5 then (. - mean_c) / std_c), and
// the reverse for gradients (scaled by the affine map's slope only).
struct Params { b: u32, s: u32, ps: u32, grid: u32,
                a0: f32, a1: f32, a2: f32, pad0: f32, c0: f32, c1: f32, c2: f32, pad1: f32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

fn slope(ch: u32) -> f32 { return select(select(p.a2, p.a1, ch == 1u), p.a0, ch == 0u); }
fn offset(ch: u32) -> f32 { return select(select(p.c2, p.c1, ch == 1u), p.c0, ch == 0u); }

// Image element (b, ch, y, x) <-> patch element (b, gy * G + gx, (ch * P + ky) * P + kx).
fn patch_index(e: u32) -> u32 {
    let x = e % p.s;
    let y = (e / p.s) % p.s;
    let ch = (e / (p.s * p.s)) % 3u;
    let b = e / (3u * p.s * p.s);
    let g = (y / p.ps) * p.grid + x / p.ps;
    let col = (ch * p.ps + y % p.ps) * p.ps + x % p.ps;
    return (b * p.grid * p.grid + g) * 3u * p.ps * p.ps + col;
}

@compute @workgroup_size(256)
fn to_patches(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let e = linear_group(wg, nwg) * 256u + li;
    if (e >= p.b * 3u * p.s * p.s) { return; }
    let ch = (e / (p.s * p.s)) % 3u;
    dst[patch_index(e)] = src[e] * slope(ch) + offset(ch);
}

@compute @workgroup_size(256)
fn from_patches(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) li: u32) {
    let e = linear_group(wg, nwg) * 256u + li;
    if (e >= p.b * 3u * p.s * p.s) { return; }
    let ch = (e / (p.s * p.s)) % 3u;
    dst[e] = src[patch_index(e)] * slope(ch);
}
