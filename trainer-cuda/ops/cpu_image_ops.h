// Image operations on the CPU (fp32, NCHW), each a forward/backward pair, for the autoencoder.
//
// Same conventions as cpu_ops.h: explicit shapes; backward functions ACCUMULATE (+=) into every
// gradient buffer they are given and skip nullptr ones; forwards OVERWRITE their outputs;
// statistics a backward needs (GroupNorm's mean and rstd) are stored by the forward in buffers
// the caller owns.
#pragma once

namespace graft {

// Geometry of a 2-D convolution. Padding is explicit on each side so that FLUX's Downsample
// (F.pad(x, (0, 1, 0, 1)) then a 3x3 stride-2 conv with no padding) is one call.
struct Conv2dShape {
  int B = 0, IC = 0, H = 0, W = 0;  // input [B, IC, H, W]
  int OC = 0, KH = 0, KW = 0;       // weight [OC, IC, KH, KW]
  int stride = 1;
  int pad_top = 0, pad_left = 0, pad_bottom = 0, pad_right = 0;
  int out_h() const { return (H + pad_top + pad_bottom - KH) / stride + 1; }
  int out_w() const { return (W + pad_left + pad_right - KW) / stride + 1; }
};

// A KxK conv with `pad` zeros on every side, stride 1 unless given.
Conv2dShape conv2d_shape(int B, int IC, int H, int W, int OC, int K, int pad, int stride = 1);

namespace cpu {

// out[B, OC, OH, OW] = conv(inp[B, IC, H, W], W[OC, IC, KH, KW]) + bias[OC] (bias may be nullptr).
// Cross-correlation, as torch.nn.Conv2d; zero padding. Throws Error on an empty output.
void conv2d_forward(float* out, const float* inp, const float* W, const float* bias, const Conv2dShape& s);
void conv2d_backward(float* dinp, float* dW, float* dbias, const float* dout, const float* inp, const float* W,
                     const Conv2dShape& s);

// GroupNorm with affine parameters, eps = 1e-6 (the FLUX VAE's): the C channels of each image
// are split into G groups of C/G consecutive channels; each (image, group) is normalised over its
// (C/G) * HW values (biased variance), then out = xhat * gamma[c] + beta[c].
// mean, rstd: [B, G]. Throws Error when G does not divide C.
void groupnorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* gamma,
                       const float* beta, int B, int C, int HW, int G);
void groupnorm_backward(float* dinp, float* dgamma, float* dbeta, const float* dout, const float* inp,
                        const float* mean, const float* rstd, const float* gamma, int B, int C, int HW, int G);

// Nearest-neighbour 2x upsampling (F.interpolate(scale_factor=2, mode="nearest")):
// out[b, c, y, x] = inp[b, c, y/2, x/2], out [B, C, 2H, 2W]. Backward sums each 2x2 block.
void upsample_nearest2x_forward(float* out, const float* inp, int B, int C, int H, int W);
void upsample_nearest2x_backward(float* dinp, const float* dout, int B, int C, int H, int W);

// Channels <-> tokens: [B, C, HW] -> [B, HW, C] (einops "b c h w -> b (h w) c"), so attention and
// 1x1 convolutions can run as the token ops of ops.h. Each backward is the other forward, accumulated.
void channels_to_tokens_forward(float* out, const float* inp, int B, int C, int HW);
void channels_to_tokens_backward(float* dinp, const float* dout, int B, int C, int HW);
void tokens_to_channels_forward(float* out, const float* inp, int B, int C, int HW);
void tokens_to_channels_backward(float* dinp, const float* dout, int B, int C, int HW);

// The reparameterised sample of the diagonal Gaussian: z = mean + exp(logvar / 2) * noise
// (BFL's DiagonalGaussian with sample=True, the noise given). Backward accumulates as ops.h.
void gaussian_sample_forward(float* z, const float* mean, const float* logvar, const float* noise, long n);
void gaussian_sample_backward(float* dmean, float* dlogvar, const float* dz, const float* logvar, const float* noise,
                              long n);
// KL divergence to N(0, 1), averaged over the n latent values:
//   kl = (1/n) sum 0.5 * (mean^2 + exp(logvar) - 1 - logvar).
float gaussian_kl_forward(const float* mean, const float* logvar, long n);
void gaussian_kl_backward(float* dmean, float* dlogvar, const float* mean, const float* logvar, long n, float dkl);

}  // namespace cpu
}  // namespace graft
