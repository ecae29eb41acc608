//! Convolutions of the VAE: the plain 1×1×1 `quant_conv`s and the causal 3D convolution.

use burn::tensor::{DType, Tensor};

use crate::ops::portable::{replicate_pad_front, replicate_pad_hw};
use crate::ops::FramePackBackend;
use crate::weights::{join, TensorSource, WeightError};

/// The temporal tail a causal convolution carries between calls of a streamed decode: its
/// last `k - 1` time-padded input frames (already replicate-padded in height and width), or
/// `None` before the stream's first call.
pub(crate) type Tail<B> = Option<Tensor<B, 5>>;

/// A `Conv3d` without padding: `weight` `[out, in, kt, kh, kw]`, `bias` `[out]`.
#[derive(Debug, Clone)]
pub struct Conv3d<B: FramePackBackend> {
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    stride: [usize; 3],
}

impl<B: FramePackBackend> Conv3d<B> {
    /// Loads `{prefix}.weight` and `{prefix}.bias` of a cubic kernel of size `kernel`.
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: [usize; 3],
        dtype: DType,
    ) -> Result<Self, WeightError> {
        Ok(Self {
            weight: src.tensor(
                &join(prefix, "weight"),
                [out_channels, in_channels, kernel, kernel, kernel],
                dtype,
            )?,
            bias: Some(src.tensor(&join(prefix, "bias"), [out_channels], dtype)?),
            stride,
        })
    }

    /// The convolution, no padding, `[batch, in, t, h, w]` → `[batch, out, t', h', w']`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        B::conv3d_valid(x, self.weight.clone(), self.bias.clone(), self.stride)
    }

    /// The (cubic) kernel size.
    pub fn kernel(&self) -> usize {
        self.weight.dims()[2]
    }
}

/// `HunyuanVideoCausalConv3d`: replicate padding of `k/2` on each side of height and width
/// and `k - 1` frames in front (none behind), then a plain convolution. Output frame `t` sees
/// input frames `t-k+1 ..= t`; the first frame sees only copies of itself.
///
/// In a streamed decode the front padding is replaced by the previous call's last `k - 1`
/// input frames (its *tail*), so that a clip decoded call by call sees the same temporal
/// context as one decoded at once. Tails assume a temporal stride of 1 (every decoder conv).
#[derive(Debug, Clone)]
pub struct CausalConv3d<B: FramePackBackend> {
    conv: Conv3d<B>,
}

impl<B: FramePackBackend> CausalConv3d<B> {
    /// Loads `{prefix}.conv.weight` and `{prefix}.conv.bias` (note the extra `.conv`).
    pub fn load<S: TensorSource<B>>(
        src: &mut S,
        prefix: &str,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: [usize; 3],
        dtype: DType,
    ) -> Result<Self, WeightError> {
        Ok(Self {
            conv: Conv3d::load(
                src,
                &join(prefix, "conv"),
                in_channels,
                out_channels,
                kernel,
                stride,
                dtype,
            )?,
        })
    }

    /// The causal convolution of `x` `[batch, in, t, h, w]`.
    ///
    /// `tail`: `None` for a self-contained call (replicate padding in front, as the
    /// reference); `Some` in a streamed decode, where the stored tail (if any) is used as the
    /// front padding and replaced by this call's last input frames.
    pub fn forward(&self, x: Tensor<B, 5>, tail: Option<&mut Tail<B>>) -> Tensor<B, 5> {
        let k = self.conv.kernel();
        if k == 1 {
            return self.conv.forward(x);
        }
        let Some(tail) = tail else {
            // Self-contained: the backend pads and convolves in one go.
            let c = &self.conv;
            return B::conv3d_replicate_padded(
                x,
                c.weight.clone(),
                c.bias.clone(),
                c.stride,
                [k - 1, k / 2, k / 2],
            );
        };
        // Streamed: the previous call's tail (or, on the first call, replicate padding) in
        // front, and this call's last frames kept as the next tail.
        let x = replicate_pad_hw(x, k / 2, k / 2);
        let x = match tail.clone() {
            Some(previous) => Tensor::cat(vec![previous, x], 2),
            None => replicate_pad_front(x, k - 1),
        };
        let frames = x.dims()[2];
        // A copy, not a view: a view would keep this call's whole input alive.
        *tail = Some(x.clone().narrow(2, frames - (k - 1), k - 1).mul_scalar(1.0));
        self.conv.forward(x)
    }
}

/// Nearest-neighbour upsampling by integer factors `(t, h, w)`: every value repeated, as
/// `F.interpolate(mode="nearest")` with integer scale factors.
pub(crate) fn upsample_nearest<B: FramePackBackend>(
    x: Tensor<B, 5>,
    [ft, fh, fw]: [usize; 3],
) -> Tensor<B, 5> {
    if ft == 1 && fh == 1 && fw == 1 {
        return x;
    }
    let [b, c, t, h, w] = x.dims();
    x.reshape([b, c, t, 1, h, 1, w, 1])
        .expand([b, c, t, ft, h, fh, w, fw])
        .reshape([b, c, t * ft, h * fh, w * fw])
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    type B = burn::backend::Flex;

    fn seq(shape: [usize; 5]) -> Tensor<B, 5> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    #[test]
    fn replicate_padding_repeats_edges() {
        let x = seq([1, 1, 2, 2, 3]);
        let y = replicate_pad_front(replicate_pad_hw(x, 1, 1), 2);
        assert_eq!(y.dims(), [1, 1, 4, 4, 5]);
        let v: Vec<f32> = y.into_data().to_vec().unwrap();
        // frame 0 (a copy of input frame 0), first padded row = input row 0 with edges.
        assert_eq!(&v[0..5], &[0.0, 0.0, 1.0, 2.0, 2.0]);
        // frame 3 = input frame 1, last padded row = its row 1 with edges.
        let last = &v[3 * 20 + 15..3 * 20 + 20];
        assert_eq!(last, &[9.0, 9.0, 10.0, 11.0, 11.0]);
    }

    #[test]
    fn nearest_upsampling_repeats_each_value() {
        let x = seq([1, 1, 2, 1, 2]);
        let y = upsample_nearest(x, [2, 2, 2]);
        assert_eq!(y.dims(), [1, 1, 4, 2, 4]);
        let v: Vec<f32> = y.into_data().to_vec().unwrap();
        assert_eq!(&v[0..8], &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
        assert_eq!(&v[8..16], &v[0..8]);
        assert_eq!(&v[16..20], &[2.0, 2.0, 3.0, 3.0]);
    }
}
