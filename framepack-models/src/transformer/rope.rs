//! FramePack's 3D rotary position embedding, including the averaged tables of the
//! compressed (2×, 4×) history groups.
//!
//! The head dimension is split into `(t, y, x)` axes (16 + 56 + 56 for FramePack); axis `a`
//! of width `d` uses frequencies `θ^(-2i/d)` (θ = 256), each used for two adjacent channels.
//! Positions are the frame index from the window layout and the row/column on the
//! post-patch grid of the noisy latents, for every group.

/// Per-token `cos` and `sin` tables, `[tokens, head_dim]` row-major, fp32.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTable {
    /// `cos` values.
    pub cos: Vec<f32>,
    /// `sin` values.
    pub sin: Vec<f32>,
    /// Number of tokens.
    pub tokens: usize,
    /// Channels per token (the head dimension).
    pub head_dim: usize,
}

impl RopeTable {
    /// Concatenates tables along the token axis, in the given order.
    pub fn concat(tables: &[RopeTable]) -> RopeTable {
        let head_dim = tables.first().map_or(0, |t| t.head_dim);
        RopeTable {
            cos: tables.iter().flat_map(|t| t.cos.iter().copied()).collect(),
            sin: tables.iter().flat_map(|t| t.sin.iter().copied()).collect(),
            tokens: tables.iter().map(|t| t.tokens).sum(),
            head_dim,
        }
    }
}

/// The RoPE layout of a model: axis widths and base.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope3d {
    /// Channels per axis `(t, y, x)`.
    pub axes: [usize; 3],
    /// The base θ.
    pub theta: f32,
}

impl Rope3d {
    /// Head dimension covered (the sum of the axes).
    pub fn head_dim(&self) -> usize {
        self.axes.iter().sum()
    }

    /// Frequencies `1 / θ^(2i/d)` of one axis, in fp32 as the reference computes them.
    fn frequencies(&self, dim: usize) -> Vec<f32> {
        (0..dim / 2)
            .map(|i| 1.0f32 / self.theta.powf((2 * i) as f32 / dim as f32))
            .collect()
    }

    /// The full-resolution grid as `[head_dim][frames][height][width]` (channel-major, like
    /// the reference's `(C, T, H, W)` table) for `cos` and `sin`.
    fn grid(&self, frames: &[f32], height: usize, width: usize) -> (Vec<f32>, Vec<f32>) {
        let n = frames.len() * height * width;
        let head_dim = self.head_dim();
        let mut cos = vec![0f32; head_dim * n];
        let mut sin = vec![0f32; head_dim * n];
        let mut channel = 0;
        for (axis, &dim) in self.axes.iter().enumerate() {
            for f in self.frequencies(dim) {
                for (ti, &t) in frames.iter().enumerate() {
                    for y in 0..height {
                        for x in 0..width {
                            let pos = match axis {
                                0 => t,
                                1 => y as f32,
                                _ => x as f32,
                            };
                            let angle = f * pos;
                            let token = (ti * height + y) * width + x;
                            for c in [channel, channel + 1] {
                                cos[c * n + token] = angle.cos();
                                sin[c * n + token] = angle.sin();
                            }
                        }
                    }
                }
                channel += 2;
            }
        }
        (cos, sin)
    }

    /// Tables for a full-resolution group: tokens in `(t, y, x)` order over
    /// `frames × height × width` (height and width of the post-patch grid).
    pub fn table(&self, frames: &[f32], height: usize, width: usize) -> RopeTable {
        let (cos, sin) = self.grid(frames, height, width);
        let dims = [frames.len(), height, width];
        RopeTable {
            cos: channel_major_to_token_major(&cos, self.head_dim(), dims),
            sin: channel_major_to_token_major(&sin, self.head_dim(), dims),
            tokens: dims.iter().product(),
            head_dim: self.head_dim(),
        }
    }

    /// Tables for a compressed group: the full-resolution `cos` and `sin` of `frames`,
    /// replicate-padded at the end to multiples of `k` in t, y and x, then averaged over
    /// non-overlapping `k×k×k` blocks (the reference's `avg_pool3d`). The averaged values are
    /// used as they are: they are no longer unit rotations, which the model was trained with.
    pub fn pooled_table(&self, frames: &[f32], height: usize, width: usize, k: usize) -> RopeTable {
        let (cos, sin) = self.grid(frames, height, width);
        let dims = [frames.len(), height, width];
        let (cos, out_dims) = average_pool(&cos, self.head_dim(), dims, k);
        let (sin, _) = average_pool(&sin, self.head_dim(), dims, k);
        RopeTable {
            cos: channel_major_to_token_major(&cos, self.head_dim(), out_dims),
            sin: channel_major_to_token_major(&sin, self.head_dim(), out_dims),
            tokens: out_dims.iter().product(),
            head_dim: self.head_dim(),
        }
    }
}

fn channel_major_to_token_major(values: &[f32], channels: usize, dims: [usize; 3]) -> Vec<f32> {
    let n: usize = dims.iter().product();
    let mut out = vec![0f32; values.len()];
    for c in 0..channels {
        for token in 0..n {
            out[token * channels + c] = values[c * n + token];
        }
    }
    out
}

/// Replicate-pads `[channels][t][h][w]` at the end to multiples of `k` and averages `k³` blocks.
fn average_pool(
    values: &[f32],
    channels: usize,
    dims: [usize; 3],
    k: usize,
) -> (Vec<f32>, [usize; 3]) {
    let [t, h, w] = dims;
    let out_dims = [t.div_ceil(k), h.div_ceil(k), w.div_ceil(k)];
    let [ot, oh, ow] = out_dims;
    let n = t * h * w;
    let mut out = vec![0f32; channels * ot * oh * ow];
    let clamp = |i: usize, len: usize| i.min(len - 1);
    for c in 0..channels {
        for bt in 0..ot {
            for by in 0..oh {
                for bx in 0..ow {
                    let mut sum = 0f32;
                    for dt in 0..k {
                        for dy in 0..k {
                            for dx in 0..k {
                                let ti = clamp(bt * k + dt, t);
                                let yi = clamp(by * k + dy, h);
                                let xi = clamp(bx * k + dx, w);
                                sum += values[c * n + (ti * h + yi) * w + xi];
                            }
                        }
                    }
                    out[((c * ot + bt) * oh + by) * ow + bx] = sum / (k * k * k) as f32;
                }
            }
        }
    }
    (out, out_dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROPE: Rope3d = Rope3d {
        axes: [16, 56, 56],
        theta: 256.0,
    };

    #[test]
    fn channels_are_interleaved_pairs_of_t_y_x() {
        let table = ROPE.table(&[3.0], 2, 2);
        assert_eq!(table.tokens, 4);
        // token 3 is (t=3, y=1, x=1); channel 0/1 use frequency 1 on t, channel 16/17 frequency 1 on y.
        let row = &table.cos[3 * 128..4 * 128];
        assert_eq!(row[0], 3f32.cos());
        assert_eq!(row[1], 3f32.cos());
        assert_eq!(row[16], 1f32.cos());
        assert_eq!(row[72], 1f32.cos());
        // the second t frequency is 256^(-2/16).
        let f1 = 1.0f32 / 256f32.powf(2.0 / 16.0);
        assert!((row[2] - (3.0 * f1).cos()).abs() < 1e-7);
    }

    #[test]
    fn pooled_table_averages_cos_values_with_replicate_padding() {
        // width 3 pads to 4 by repeating the last column.
        let full = ROPE.table(&[0.0, 1.0], 2, 3);
        let pooled = ROPE.pooled_table(&[0.0, 1.0], 2, 3, 2);
        assert_eq!(pooled.tokens, 2);
        let c = 20; // an x channel
        let at = |t: usize, y: usize, x: usize| full.cos[((t * 2 + y) * 3 + x) * 128 + c];
        let mut expected = 0.0;
        for t in 0..2 {
            for y in 0..2 {
                expected += at(t, y, 2) * 2.0;
            }
        }
        expected /= 8.0;
        assert!((pooled.cos[128 + c] - expected).abs() < 1e-6);
        // averaged cosines shrink: no longer unit rotations.
        let norm = pooled.cos[128 + c].powi(2) + pooled.sin[128 + c].powi(2);
        assert!(norm < 1.0);
    }
}
