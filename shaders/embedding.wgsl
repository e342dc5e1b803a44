// Embedding gather: out[r, :] = table[ids[r], :] (+ pos[r % len, :]).
// With a padding table (GLIDE xf_padding), rows whose mask is 0 take
// pad[r % len, :] instead (no positional term there).
struct Params { rows: u32, dim: u32, len: u32, row_words: u32, has_pos: u32, has_pad: u32, vocab: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> w: array<WWord>;
@group(0) @binding(3) var<storage, read> pos: array<f32>;
@group(0) @binding(4) var<storage, read> pad: array<f32>;
@group(0) @binding(5) var<storage, read> mask: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let e = linear_group(wg, nwg) * 256u + li;
    if (e >= p.rows * p.dim) { return; }
    let r = e / p.dim;
    let c = e % p.dim;
    let t = r % p.len;
    if (p.has_pad != 0u && mask[r] == 0u) {
        out[e] = pad[t * p.dim + c];
        return;
    }
    // Out-of-range ids were rejected on the host; clamp anyway so a bad id can't read out of bounds.
    let id = min(ids[r], p.vocab - 1u);
    var v = f32(load_w(id * p.row_words, c));
    if (p.has_pos != 0u) { v = v + pos[t * p.dim + c]; }
    out[e] = v;
}
