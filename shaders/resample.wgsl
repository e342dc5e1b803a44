// Image resampling over planes [P = N*C, H, W], one thread per output pixel.
//   nearest2x:  out[y, x] = in[y/2, x/2]                (ResBlock up path)
//   avgpool2:   2x2 mean, stride 2                      (ResBlock down path)
//   bilinear:   align_corners=False, no antialias       (GLIDE super-res input)
//   bicubic_aa: antialiased bicubic, a = -0.5, PIL/torchvision weights
//               normalised per output pixel             (Karlo 64->256)
struct Params { planes: u32, hin: u32, win: u32, hout: u32, wout: u32 }
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inp: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

fn out_index(wg: vec3<u32>, nwg: vec3<u32>, li: u32) -> u32 {
    return linear_group(wg, nwg) * 256u + li;
}

@compute @workgroup_size(256)
fn nearest2x(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let i = out_index(wg, nwg, li);
    if (i >= p.planes * p.hout * p.wout) { return; }
    let x = i % p.wout;
    let y = (i / p.wout) % p.hout;
    let pl = i / (p.wout * p.hout);
    out[i] = inp[(pl * p.hin + y / 2u) * p.win + x / 2u];
}

@compute @workgroup_size(256)
fn avgpool2(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let i = out_index(wg, nwg, li);
    if (i >= p.planes * p.hout * p.wout) { return; }
    let x = i % p.wout;
    let y = (i / p.wout) % p.hout;
    let pl = i / (p.wout * p.hout);
    let b = (pl * p.hin + 2u * y) * p.win + 2u * x;
    out[i] = (inp[b] + inp[b + 1u] + inp[b + p.win] + inp[b + p.win + 1u]) * 0.25;
}

fn src_coord(o: u32, scale: f32) -> f32 {
    return max((f32(o) + 0.5) * scale - 0.5, 0.0);
}

@compute @workgroup_size(256)
fn bilinear(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let i = out_index(wg, nwg, li);
    if (i >= p.planes * p.hout * p.wout) { return; }
    let x = i % p.wout;
    let y = (i / p.wout) % p.hout;
    let pl = i / (p.wout * p.hout);
    let sy = src_coord(y, f32(p.hin) / f32(p.hout));
    let sx = src_coord(x, f32(p.win) / f32(p.wout));
    let y0 = min(u32(sy), p.hin - 1u);
    let x0 = min(u32(sx), p.win - 1u);
    let y1 = min(y0 + 1u, p.hin - 1u);
    let x1 = min(x0 + 1u, p.win - 1u);
    let ly = sy - f32(y0);
    let lx = sx - f32(x0);
    let base = pl * p.hin * p.win;
    let top = (1.0 - lx) * inp[base + y0 * p.win + x0] + lx * inp[base + y0 * p.win + x1];
    let bot = (1.0 - lx) * inp[base + y1 * p.win + x0] + lx * inp[base + y1 * p.win + x1];
    out[i] = (1.0 - ly) * top + ly * bot;
}

fn cubic_a05(t: f32) -> f32 {
    let a = -0.5;
    let x = abs(t);
    if (x < 1.0) { return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0; }
    if (x < 2.0) { return (((x - 5.0) * x + 8.0) * x - 4.0) * a; }
    return 0.0;
}

// Window [lo, lo + len) and support for output index o (torch's _aa weights).
fn aa_window(o: u32, in_size: u32, out_size: u32) -> vec4<f32> {
    let scale = f32(in_size) / f32(out_size);
    let support = select(2.0, 2.0 * scale, scale >= 1.0);
    let center = scale * (f32(o) + 0.5);
    let lo = max(i32(center - support + 0.5), 0);
    let hi = min(i32(center + support + 0.5), i32(in_size));
    let inv = select(1.0, 1.0 / scale, scale >= 1.0);
    return vec4<f32>(f32(lo), f32(hi - lo), center, inv);
}

@compute @workgroup_size(256)
fn bicubic_aa(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let i = out_index(wg, nwg, li);
    if (i >= p.planes * p.hout * p.wout) { return; }
    let x = i % p.wout;
    let y = (i / p.wout) % p.hout;
    let pl = i / (p.wout * p.hout);
    let wy = aa_window(y, p.hin, p.hout);
    let wx = aa_window(x, p.win, p.wout);
    var sy = 0.0;
    for (var j = 0; j < i32(wy.y); j = j + 1) { sy = sy + cubic_a05((f32(j) + wy.x - wy.z + 0.5) * wy.w); }
    var sx = 0.0;
    for (var j = 0; j < i32(wx.y); j = j + 1) { sx = sx + cubic_a05((f32(j) + wx.x - wx.z + 0.5) * wx.w); }
    let base = pl * p.hin * p.win;
    // Horizontal pass per source row, then vertical, as torch does.
    var acc = 0.0;
    for (var r = 0; r < i32(wy.y); r = r + 1) {
        let row = u32(i32(wy.x) + r);
        var h = 0.0;
        for (var c = 0; c < i32(wx.y); c = c + 1) {
            let wgt = cubic_a05((f32(c) + wx.x - wx.z + 0.5) * wx.w) / sx;
            h = h + wgt * inp[base + row * p.win + u32(i32(wx.x) + c)];
        }
        acc = acc + cubic_a05((f32(r) + wy.x - wy.z + 0.5) * wy.w) / sy * h;
    }
    out[i] = acc;
}
