// Weight loading for f16 weights on adapters with `shader-f16` (the module
// starts with `enable f16;`): the same packed words as weights.wgsl, read as
// native `vec2<f16>` with no unpacking, and the weight tile kept as f16 in
// workgroup memory (half the bytes). Products and sums stay f32: an f16 value
// converts to f32 exactly, so results equal the portable path's.
override W_DTYPE: u32 = 1u;
alias WWord = vec2<f16>;
alias WTile = f16;

fn load_w(row_base: u32, col: u32) -> WTile {
    let p = w[row_base + (col >> 1u)];
    return select(p.x, p.y, (col & 1u) == 1u);
}
