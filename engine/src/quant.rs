//! Weight storage types. Every type is stored as u32 words, row by row, and
//! dequantised inside the kernels (`shaders/common/weights.wgsl`):
//!
//! | type | per row of `cols` values |
//! |---|---|
//! | f32 | `cols` words |
//! | f16 | `ceil(cols/2)` words, two IEEE halves each (low half first) |
//! | q8  | blocks of 32: 8 words of int8 (byte j of word w = value 4w+j) + 1 f32 scale |
//! | q4  | blocks of 32: 4 words of 4-bit codes (nibble j of word w = value 8w+j, code-8) + 1 f32 scale |
//!
//! Quantised values are `code · scale` with a symmetric per-block scale
//! (max|x|/127 for q8, max|x|/7 for q4).

use crate::error::{Error, Result};

pub const BLOCK: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightDType {
    F32,
    F16,
    Q8,
    Q4,
}

impl WeightDType {
    /// The kernels' `W_DTYPE` specialisation constant.
    pub fn code(self) -> u32 {
        match self {
            WeightDType::F32 => 0,
            WeightDType::F16 => 1,
            WeightDType::Q8 => 2,
            WeightDType::Q4 => 3,
        }
    }

    pub fn row_words(self, cols: usize) -> usize {
        match self {
            WeightDType::F32 => cols,
            WeightDType::F16 => cols.div_ceil(2),
            WeightDType::Q8 => cols.div_ceil(BLOCK) * 9,
            WeightDType::Q4 => cols.div_ceil(BLOCK) * 5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightDType::F32 => "f32",
            WeightDType::F16 => "f16",
            WeightDType::Q8 => "q8",
            WeightDType::Q4 => "q4",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(WeightDType::F32),
            "f16" => Ok(WeightDType::F16),
            "q8" => Ok(WeightDType::Q8),
            "q4" => Ok(WeightDType::Q4),
            _ => Err(Error::Invalid(format!(
                "unknown weight type '{s}' (expected f32, f16, q8 or q4)"
            ))),
        }
    }
}

/// Host-side weight in its storage layout, ready to upload.
#[derive(Clone, Debug)]
pub struct WeightData {
    pub dtype: WeightDType,
    pub shape: Vec<usize>,
    pub rows: usize,
    pub cols: usize,
    pub words: Vec<u32>,
}

impl WeightData {
    /// Packs `data` (row-major, `shape[0]` rows) into `dtype`.
    pub fn from_f32(shape: &[usize], data: &[f32], dtype: WeightDType) -> Result<Self> {
        let n: usize = shape.iter().product();
        if shape.is_empty() || n != data.len() {
            return Err(Error::Invalid(format!(
                "weight shape {shape:?} does not match {} values",
                data.len()
            )));
        }
        let rows = shape[0];
        let cols = n / rows.max(1);
        let rw = dtype.row_words(cols);
        let mut words = Vec::with_capacity(rows * rw);
        for r in 0..rows {
            let row = &data[r * cols..(r + 1) * cols];
            match dtype {
                WeightDType::F32 => words.extend(row.iter().map(|x| x.to_bits())),
                WeightDType::F16 => {
                    for pair in row.chunks(2) {
                        let lo = half::f16::from_f32(pair[0]).to_bits() as u32;
                        let hi = pair
                            .get(1)
                            .map_or(0, |&x| half::f16::from_f32(x).to_bits() as u32);
                        words.push(lo | (hi << 16));
                    }
                }
                WeightDType::Q8 | WeightDType::Q4 => {
                    let (qmax, per_word, bits) = if dtype == WeightDType::Q8 {
                        (127.0f32, 4, 8)
                    } else {
                        (7.0f32, 8, 4)
                    };
                    for block in row.chunks(BLOCK) {
                        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
                        let scale = amax / qmax;
                        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                        let mut packed = vec![0u32; BLOCK / per_word];
                        for (i, &x) in block.iter().enumerate() {
                            let q = (x * inv)
                                .round()
                                .clamp(-qmax - (bits == 4) as i32 as f32, qmax)
                                as i32;
                            let code = if bits == 8 {
                                (q as u8) as u32
                            } else {
                                (q + 8) as u32
                            };
                            packed[i / per_word] |= code << (bits * (i % per_word));
                        }
                        words.extend(packed);
                        words.push(scale.to_bits());
                    }
                }
            }
        }
        Ok(WeightData {
            dtype,
            shape: shape.to_vec(),
            rows,
            cols,
            words,
        })
    }

    /// The values the kernels will see (CPU dequantisation).
    pub fn to_f32(&self) -> Vec<f32> {
        let rw = self.dtype.row_words(self.cols);
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for r in 0..self.rows {
            let row = &self.words[r * rw..(r + 1) * rw];
            for c in 0..self.cols {
                out.push(match self.dtype {
                    WeightDType::F32 => f32::from_bits(row[c]),
                    WeightDType::F16 => {
                        let w = row[c / 2] >> (16 * (c % 2));
                        half::f16::from_bits(w as u16).to_f32()
                    }
                    WeightDType::Q8 => {
                        let b = c / BLOCK;
                        let i = c % BLOCK;
                        let code = (row[b * 9 + i / 4] >> (8 * (i % 4))) as u8 as i8;
                        code as f32 * f32::from_bits(row[b * 9 + 8])
                    }
                    WeightDType::Q4 => {
                        let b = c / BLOCK;
                        let i = c % BLOCK;
                        let code = ((row[b * 5 + i / 8] >> (4 * (i % 8))) & 15) as i32 - 8;
                        code as f32 * f32::from_bits(row[b * 5 + 4])
                    }
                });
            }
        }
        out
    }
}
