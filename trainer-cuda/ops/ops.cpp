// ops.h on both devices. Each op: check shapes, make the output, run the forward kernel of its
// device, record the backward. Compiled twice (ops/dispatch.h).
#include "ops/ops.h"

#include <cmath>
#include <cstring>
#include <string>

#include "core/common.h"
#include "ops/cpu_image_ops.h"
#include "ops/cpu_ops.h"
#include "ops/quant.h"
#include "ops/weight_stream.h"

#include "ops/dispatch.h"

namespace graft {

namespace {

// ---- pointers by dtype ----------------------------------------------------------------------------

float* fp(const Tensor& t) {
  if (t.dtype != DType::F32) fail("internal: expected an F32 tensor, got " + t.str());
  return t.data<float>();
}
float* fp(Tensor* t) { return t ? fp(*t) : nullptr; }

#ifdef GRAFT_CUDA
using gpu::bf16;
bf16* bf(const Tensor& t) {
  if (t.dtype != DType::BF16) fail("internal: expected a BF16 tensor, got " + t.str());
  return t.data<bf16>();
}
bf16* bf(Tensor* t) { return t ? bf(*t) : nullptr; }
#endif

// A weight in the dtype its kernel reads (fp32 on the CPU, bf16 on CUDA): the tensor itself when it
// has it (and, on the host, 4-byte alignment: mapped checkpoint data need not), else a converted copy
// for this call only.
Tensor weight_for(const Tensor& w) {
  if (!w.defined()) return w;
  const DType want = compute_dtype(w.device());
  if (w.dtype == want && (w.is_cuda() || ((uintptr_t)w.raw() & 3) == 0)) return w.detach();
  Tensor out = empty(w.shape, want, w.device(), "a weight converted for one call");
  copy_into(out, w);
  return out;
}

// A host weight the CPU kernels can read as it is: fp32, 4-byte aligned.
bool host_f32(const Tensor& w) { return !w.is_cuda() && w.dtype == DType::F32 && ((uintptr_t)w.raw() & 3) == 0; }

void check_activation(const char* op, const Tensor& t) {
  if (!t.defined()) fail(std::string("internal: ") + op + ": undefined input");
  if (t.dtype != compute_dtype(t.device()))
    fail(std::string("internal: ") + op + ": input " + t.str() + " is not in the compute dtype of its device");
}

void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  if (b.defined() && a.device() != b.device())
    fail(std::string("internal: ") + op + ": inputs on " + a.device().str() + " and " + b.device().str());
}

// A linear layer's weight may also stay in host memory while its input is on CUDA: an offloaded
// layer's, streamed in for the call (ops/weight_stream.h).
void check_weight_device(const char* op, const Tensor& x, const Tensor& w) {
  if (!(x.is_cuda() && w.defined() && !w.is_cuda())) check_same_device(op, x, w);
}

[[noreturn]] void shape_error(const char* op, const std::string& what) {
  fail(std::string("internal: ") + op + ": " + what);
}

// A weight slot that needs a gradient must accumulate in fp32 (a parameter leaf).
void check_weight_grad(const char* op, const Tensor* g) {
  if (g && g->dtype != DType::F32) shape_error(op, "a weight's gradient must be fp32, got " + g->str());
}

int as_int(int64_t v, const char* op) {
  if (v < 0 || v > INT32_MAX) shape_error(op, "size " + std::to_string(v) + " out of range");
  return (int)v;
}

Tensor like(const Tensor& x, const Shape& shape) { return empty(shape, x.dtype, x.device()); }

}  // namespace

// ================================================================================================ linear

// LoKr's second factor as one fp32 matrix [b, d]: w2 itself, or w2 @ w2b.
static Tensor lokr_w2(const LokrRef& k) {
  if (!k.w2b.defined()) return k.w2.detach();
  const int b = (int)k.w2.size(0), r = (int)k.w2.size(1), d = (int)k.w2b.size(1);
  Tensor w2 = empty({b, d}, DType::F32, k.w2.device(), "LoKr factor");
  if (w2.is_cuda()) ON_CUDA(gpu::matmul_f32(fp(w2), fp(k.w2), false, fp(k.w2b), false, b, d, r, 0.0f));
  else cpu::matmul_f32(fp(w2), fp(k.w2), false, fp(k.w2b), false, b, d, r, 0.0f);
  return w2;
}

namespace {

// The adapters of a linear layer (LoRA and LoKr), each adding onto its slice of `out` [N, OC]: their
// forward, the tape inputs they add (from index `first`) and their backward.
struct AdapterPass {
  std::vector<LoraRef> used;
  std::vector<Tensor> hs;  // per LoRA: h = x A^T, what its backward needs
  std::vector<LokrRef> used_k;
  int first = 0;


  void forward(const Tensor& out, const Tensor& x, const std::vector<LoraRef>& adapters,
               const std::vector<LokrRef>& lokrs, int N, int IC, int OC) {
    for (const LoraRef& a : adapters) {
      if (a.scale == 0.0f) continue;
      const int rank = as_int(a.A.size(0), "linear");
      if (a.A.size(1) != IC || a.B.size(0) != a.rows || a.B.size(1) != rank || a.row_offset + a.rows > OC)
        shape_error("linear", "adapter A " + shape_str(a.A.shape) + ", B " + shape_str(a.B.shape) + " on a layer " +
                                  std::to_string(IC) + " -> " + std::to_string(OC));
      Tensor h = like(x, {N, rank});
      if (x.is_cuda())
        ON_CUDA(gpu::lora_forward(bf(out) + a.row_offset, OC, bf(h), bf(x), fp(a.A), fp(a.B), N, IC, a.rows, rank,
                                  a.scale));
      else
        cpu::lora_forward(fp(out) + a.row_offset, OC, fp(h), fp(x), fp(a.A), fp(a.B), N, IC, a.rows, rank, a.scale);
      used.push_back(a);
      hs.push_back(h);
    }

    for (const LokrRef& k : lokrs) {
      if (k.scale == 0.0f) continue;
      const int a = as_int(k.w1.size(0), "linear"), c = as_int(k.w1.size(1), "linear"), bb = as_int(k.w2.size(0), "linear");
      const int d = as_int(k.w2b.defined() ? k.w2b.size(1) : k.w2.size(1), "linear");
      if ((int64_t)a * bb != k.rows || (int64_t)c * d != IC || k.row_offset + k.rows > OC ||
          (k.w2b.defined() && k.w2b.size(0) != k.w2.size(1)))
        shape_error("linear", "LoKr w1 " + shape_str(k.w1.shape) + ", w2 " + shape_str(k.w2.shape) +
                                  (k.w2b.defined() ? " @ " + shape_str(k.w2b.shape) : "") + " on rows " +
                                  std::to_string(k.rows) + " of a layer " + std::to_string(IC) + " -> " + std::to_string(OC));
      const Tensor w2 = lokr_w2(k);
      if (x.is_cuda())
        ON_CUDA(gpu::lokr_forward(bf(out) + k.row_offset, OC, bf(x), fp(k.w1), fp(w2), N, a, bb, c, d, k.scale));
      else
        cpu::lokr_forward(fp(out) + k.row_offset, OC, fp(x), fp(k.w1), fp(w2), N, a, bb, c, d, k.scale);
      used_k.push_back(k);
    }
  }

  void add_inputs(std::vector<const Tensor*>& inputs) {
    first = (int)inputs.size();
    for (const LoraRef& a : used) inputs.push_back(&a.A), inputs.push_back(&a.B);
    for (const LokrRef& k : used_k) inputs.push_back(&k.w1), inputs.push_back(&k.w2), inputs.push_back(&k.w2b);
  }

  void backward(GradContext& g, Tensor* dx, const Tensor& xs, const Tensor& dout, int N, int IC, int OC) const {
    const int lokr_in = first + 2 * (int)used.size();
    for (size_t i = 0; i < used.size(); ++i) {
      const LoraRef& a = used[i];
      Tensor *dA = g.din(first + 2 * (int)i), *dB = g.din(first + 1 + 2 * (int)i);
      const int rank = (int)a.A.size(0);
      if (!dx && !dA && !dB) continue;
      if (xs.is_cuda())
        ON_CUDA(gpu::lora_backward(bf(dx), fp(dA), fp(dB), bf(dout) + a.row_offset, OC, bf(hs[i]), bf(xs), fp(a.A),
                                   fp(a.B), N, IC, a.rows, rank, a.scale));
      else
        cpu::lora_backward(fp(dx), fp(dA), fp(dB), fp(dout) + a.row_offset, OC, fp(hs[i]), fp(xs), fp(a.A), fp(a.B),
                           N, IC, a.rows, rank, a.scale);
    }
    for (size_t i = 0; i < used_k.size(); ++i) {
      const LokrRef& k = used_k[i];
      Tensor *dw1 = g.din(lokr_in + 3 * (int)i), *dw2 = g.din(lokr_in + 3 * (int)i + 1);
      Tensor* dw2b = g.din(lokr_in + 3 * (int)i + 2);
      if (!dx && !dw1 && !dw2 && !dw2b) continue;
      const int a = (int)k.w1.size(0), c = (int)k.w1.size(1), bb = (int)k.w2.size(0), d = IC / c;
      const Tensor w2 = lokr_w2(k);
      // The gradient of the whole second factor: w2's own, or a scratch one split onto w2 @ w2b below.
      Tensor dfull;
      if (k.w2b.defined() && (dw2 || dw2b)) dfull = zeros({bb, d}, DType::F32, xs.device(), "LoKr gradient");
      float* dw2_full = k.w2b.defined() ? (dfull.defined() ? fp(dfull) : nullptr) : fp(dw2);
      if (xs.is_cuda())
        ON_CUDA(gpu::lokr_backward(bf(dx), fp(dw1), dw2_full, bf(dout) + k.row_offset, OC, bf(xs), fp(k.w1), fp(w2), N, a,
                                   bb, c, d, k.scale));
      else
        cpu::lokr_backward(fp(dx), fp(dw1), dw2_full, fp(dout) + k.row_offset, OC, fp(xs), fp(k.w1), fp(w2), N, a, bb, c,
                           d, k.scale);
      if (!dfull.defined()) continue;
      const int r = (int)k.w2.size(1);
      // w2 = w2a @ w2b: dw2a += dfull @ w2b^T, dw2b += w2a^T @ dfull
      if (xs.is_cuda()) {
        if (dw2) ON_CUDA(gpu::matmul_f32(fp(*dw2), fp(dfull), false, fp(k.w2b), true, bb, r, d, 1.0f));
        if (dw2b) ON_CUDA(gpu::matmul_f32(fp(*dw2b), fp(k.w2), true, fp(dfull), false, r, d, bb, 1.0f));
      } else {
        if (dw2) cpu::matmul_f32(fp(*dw2), fp(dfull), false, fp(k.w2b), true, bb, r, d, 1.0f);
        if (dw2b) cpu::matmul_f32(fp(*dw2b), fp(k.w2), true, fp(dfull), false, r, d, bb, 1.0f);
      }
    }
  }
};

// The frozen or trainable weight of one linear call: a tensor [OC, IC] in any float dtype, or a
// quantized one (ops.h's QuantWeight: codes with a scale per row, or NF4 blocks).
struct LinearWeight {
  Tensor W, scale, absmax;  // W: the weight, or the codes of a quantized one
  int OC = 0, IC = 0;

  bool quantized() const { return scale.defined() || absmax.defined(); }
  bool plain_f32() const { return !quantized() && host_f32(W); }
  // On CUDA: the weight as bf16, the tensor itself or one decoded for this call only (an offloaded
  // weight is streamed to `device` first).
  Tensor device_bf16(Device device) const {
    const Tensor w = streamed(W, device);
    if (!quantized()) return weight_for(w);
    Tensor out = empty({OC, IC}, DType::BF16, device, "a quantized weight decoded for one product");
    if (absmax.defined()) ON_CUDA(gpu::nf4_dequantize(bf(out), w.data<uint8_t>(), fp(streamed(absmax, device)), (long)OC * IC));
    else ON_CUDA(gpu::dequantize_rows(bf(out), w.raw(), w.dtype, fp(streamed(scale, device)), OC, IC));
    return out;
  }
  // On the CPU: rows of the weight decoded to fp32 a block at a time.
  cpu::WeightRows host_rows() const {
    const Tensor w = W, am = absmax, s = scale;
    const int ic = IC;
    if (absmax.defined())
      return [w, am, ic](float* dst, int o0, int r) {
        dequantize_nf4(w.data<uint8_t>(), am.data<float>(), (size_t)o0 * ic, (size_t)r * ic, dst);
      };
    return [w, s, ic](float* dst, int o0, int r) {
      convert_host(dst, DType::F32, (const char*)w.raw() + (size_t)o0 * ic * dtype_size(w.dtype), w.dtype, (size_t)r * ic);
      if (!s.defined()) return;
      const float* sc = s.data<float>() + o0;
      for (int k = 0; k < r; ++k)
        for (int c = 0; c < ic; ++c) dst[(size_t)k * ic + c] *= sc[k];
    };
  }
};

Tensor linear_with(const Tensor& x, const LinearWeight& w, const Tensor& b, const std::vector<LoraRef>& adapters,
                   const std::vector<LokrRef>& lokrs) {
  if (b.defined() && (b.numel() != w.OC)) shape_error("linear", "bias " + shape_str(b.shape));
  const int IC = w.IC, OC = w.OC;
  const int N = as_int(x.numel() / std::max(IC, 1), "linear");
  Shape oshape = x.shape;
  oshape.back() = OC;
  Tensor out = like(x, oshape);
  const Tensor bc = weight_for(streamed(b, x.device()));
  if (x.is_cuda()) {
    const Tensor Wc = w.device_bf16(x.device());
    ON_CUDA(gpu::linear_forward(bf(out), bf(x), bf(Wc), bc.defined() ? bf(bc) : nullptr, N, IC, OC));
  } else if (w.plain_f32()) {
    cpu::linear_forward(fp(out), fp(x), fp(w.W), bc.defined() ? fp(bc) : nullptr, N, IC, OC);
  } else {
    cpu::linear_forward_decoded(fp(out), fp(x), w.host_rows(), bc.defined() ? fp(bc) : nullptr, N, IC, OC);
  }

  AdapterPass pass;
  pass.forward(out, x, adapters, lokrs, N, IC, OC);
  std::vector<const Tensor*> inputs = {&x, &w.W, &b};
  pass.add_inputs(inputs);
  const Tensor xs = x.detach(), bs = b.detach();
  const LinearWeight ws{w.W.detach(), w.scale, w.absmax, OC, IC};
  record("linear", inputs, {&out}, [=](GradContext& g) {
    const Tensor& dout = g.dout();
    Tensor *dx = g.din(0), *dW = g.din(1), *db = g.din(2);
    check_weight_grad("linear", dW);
    check_weight_grad("linear", db);
    if (xs.is_cuda() && (dx || dW || db)) {
      const Tensor Wc = ws.device_bf16(xs.device());  // decoded again rather than kept from the forward
      ON_CUDA(gpu::linear_backward(bf(dx), fp(dW), fp(db), bf(dout), bf(xs), bf(Wc), N, IC, OC));
    } else if (ws.plain_f32() && (dx || dW || db)) {
      cpu::linear_backward(fp(dx), fp(dW), fp(db), fp(dout), fp(xs), fp(ws.W), N, IC, OC);
    } else if (dx) {  // a weight in another form is frozen: only the input's gradient
      cpu::linear_backward_decoded(fp(dx), fp(dout), ws.host_rows(), N, IC, OC);
    }
    pass.backward(g, dx, xs, dout, N, IC, OC);
  });
  return out;
}

}  // namespace

Tensor linear(const Tensor& x, const Tensor& W, const Tensor& b, const std::vector<LoraRef>& adapters,
              const std::vector<LokrRef>& lokrs) {
  check_activation("linear", x);
  check_weight_device("linear", x, W);
  check_weight_device("linear", x, b);
  const bool pointwise = W.dim() == 4 && W.size(2) == 1 && W.size(3) == 1;  // a 1x1 conv's weight
  if ((W.dim() != 2 && !pointwise) || x.dim() < 1 || x.size(-1) != W.size(1))
    shape_error("linear", "input " + shape_str(x.shape) + " and weight " + shape_str(W.shape));
  return linear_with(x, {W, Tensor(), Tensor(), as_int(W.size(0), "linear"), as_int(W.size(1), "linear")}, b, adapters, lokrs);
}

Tensor linear(const Tensor& x, const QuantWeight& W, const Tensor& b, const std::vector<LoraRef>& adapters,
              const std::vector<LokrRef>& lokrs) {
  check_activation("linear", x);
  for (const Tensor* t : {&W.codes, &W.scale, &W.absmax, &b}) check_weight_device("linear", x, *t);
  const size_t n = (size_t)W.out * (size_t)W.in;
  const bool nf4 = W.absmax.defined();
  const bool ok = x.dim() >= 1 && x.size(-1) == W.in && W.scale.defined() != nf4 &&
                  (nf4 ? W.codes.dtype == DType::U8 && W.absmax.dtype == DType::F32 &&
                             (size_t)W.codes.numel() == nf4_code_bytes(n) && (size_t)W.absmax.numel() == nf4_block_count(n)
                       : (W.codes.dtype == DType::F8_E4M3 || W.codes.dtype == DType::I8) && W.scale.dtype == DType::F32 &&
                             (size_t)W.codes.numel() == n && W.scale.numel() == W.out);
  if (!ok)
    shape_error("linear", "input " + shape_str(x.shape) + " and a quantized weight " + std::to_string(W.out) + "x" +
                              std::to_string(W.in) + " with codes " + W.codes.str() +
                              (nf4 ? ", absmax " + W.absmax.str() : W.scale.defined() ? ", scale " + W.scale.str() : ""));
  return linear_with(x, {W.codes, W.scale, W.absmax, W.out, W.in}, b, adapters, lokrs);
}

// ================================================================================================ norms

Tensor layernorm(const Tensor& x, float eps) {
  check_activation("layernorm", x);
  const int C = as_int(x.size(-1), "layernorm"), N = as_int(x.numel() / std::max(C, 1), "layernorm");
  Tensor out = like(x, x.shape);
  Tensor mean = empty({N}, DType::F32, x.device()), rstd = empty({N}, DType::F32, x.device());
  if (x.is_cuda()) ON_CUDA(gpu::layernorm_forward(bf(out), fp(mean), fp(rstd), bf(x), N, C, eps));
  else cpu::layernorm_forward(fp(out), fp(mean), fp(rstd), fp(x), N, C, eps);
  const Tensor xs = x.detach();
  record("layernorm", {&x}, {&out}, [=](GradContext& g) {
    Tensor* dx = g.din(0);
    if (!dx) return;
    if (xs.is_cuda()) ON_CUDA(gpu::layernorm_backward(bf(dx), bf(g.dout()), bf(xs), fp(mean), fp(rstd), N, C));
    else cpu::layernorm_backward(fp(dx), fp(g.dout()), fp(xs), fp(mean), fp(rstd), N, C);
  });
  return out;
}

Tensor affine(const Tensor& x, const Tensor& w, const Tensor& b) {
  check_activation("affine", x);
  check_same_device("affine", x, w);
  check_same_device("affine", x, b);
  const int C = as_int(w.numel(), "affine");
  if (C == 0 || x.size(-1) != C || (b.defined() && b.numel() != C))
    shape_error("affine", "input " + shape_str(x.shape) + ", weight " + shape_str(w.shape) + (b.defined() ? ", bias " + shape_str(b.shape) : ""));
  const int N = as_int(x.numel() / C, "affine");
  Tensor out = like(x, x.shape);
  const Tensor wc = weight_for(w), bc = weight_for(b);
  if (x.is_cuda()) ON_CUDA(gpu::affine_forward(bf(out), bf(x), bf(wc), bc.defined() ? bf(bc) : nullptr, N, C));
  else cpu::affine_forward(fp(out), fp(x), fp(wc), bc.defined() ? fp(bc) : nullptr, N, C);
  const Tensor xs = x.detach(), ws = w.detach();
  record("affine", {&x, &w, &b}, {&out}, [=](GradContext& g) {
    Tensor *dx = g.din(0), *dw = g.din(1), *db = g.din(2);
    check_weight_grad("affine", dw);
    check_weight_grad("affine", db);
    const Tensor wc = weight_for(ws);
    if (xs.is_cuda()) ON_CUDA(gpu::affine_backward(bf(dx), fp(dw), fp(db), bf(g.dout()), bf(xs), bf(wc), N, C));
    else cpu::affine_backward(fp(dx), fp(dw), fp(db), fp(g.dout()), fp(xs), fp(wc), N, C);
  });
  return out;
}

Tensor rmsnorm(const Tensor& x, const Tensor& scale, float eps) {
  check_activation("rmsnorm", x);
  check_same_device("rmsnorm", x, scale);
  const int C = as_int(scale.numel(), "rmsnorm");
  if (C == 0 || x.numel() % C) shape_error("rmsnorm", "input " + shape_str(x.shape) + ", scale " + shape_str(scale.shape));
  const int N = as_int(x.numel() / C, "rmsnorm");
  Tensor out = like(x, x.shape);
  Tensor rrms = empty({N}, DType::F32, x.device());
  const Tensor sc = weight_for(scale);
  if (x.is_cuda()) ON_CUDA(gpu::rmsnorm_forward(bf(out), fp(rrms), bf(x), bf(sc), N, C, eps));
  else cpu::rmsnorm_forward(fp(out), fp(rrms), fp(x), fp(sc), N, C, eps);
  const Tensor xs = x.detach(), ss = scale.detach();
  record("rmsnorm", {&x, &scale}, {&out}, [=](GradContext& g) {
    Tensor *dx = g.din(0), *ds = g.din(1);
    check_weight_grad("rmsnorm", ds);
    const Tensor sc = weight_for(ss);
    if (xs.is_cuda()) ON_CUDA(gpu::rmsnorm_backward(bf(dx), fp(ds), bf(g.dout()), bf(xs), bf(sc), fp(rrms), N, C));
    else cpu::rmsnorm_backward(fp(dx), fp(ds), fp(g.dout()), fp(xs), fp(sc), fp(rrms), N, C);
  });
  return out;
}

Tensor groupnorm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int G) {
  check_activation("groupnorm", x);
  if (x.dim() < 3) shape_error("groupnorm", "input " + shape_str(x.shape) + " is not [B, C, ...]");
  const int B = as_int(x.size(0), "groupnorm"), C = as_int(x.size(1), "groupnorm");
  const int HW = as_int(x.numel() / std::max<int64_t>(1, (int64_t)B * C), "groupnorm");
  if (gamma.numel() != C || beta.numel() != C) shape_error("groupnorm", "gamma/beta for " + std::to_string(C) + " channels");
  if (G <= 0 || C % G) fail("groupnorm: " + std::to_string(G) + " groups do not divide " + std::to_string(C) + " channels");
  Tensor out = like(x, x.shape);
  Tensor mean = empty({B, G}, DType::F32, x.device()), rstd = empty({B, G}, DType::F32, x.device());
  const Tensor gc = weight_for(gamma), bc = weight_for(beta);
  if (x.is_cuda()) ON_CUDA(gpu::groupnorm_forward(bf(out), fp(mean), fp(rstd), bf(x), bf(gc), bf(bc), B, C, HW, G));
  else cpu::groupnorm_forward(fp(out), fp(mean), fp(rstd), fp(x), fp(gc), fp(bc), B, C, HW, G);
  const Tensor xs = x.detach(), gs = gamma.detach();
  record("groupnorm", {&x, &gamma, &beta}, {&out}, [=](GradContext& g) {
    Tensor *dx = g.din(0), *dg = g.din(1), *db = g.din(2);
    check_weight_grad("groupnorm", dg);
    check_weight_grad("groupnorm", db);
    const Tensor gc = weight_for(gs);
    if (xs.is_cuda())
      ON_CUDA(gpu::groupnorm_backward(bf(dx), fp(dg), fp(db), bf(g.dout()), bf(xs), fp(mean), fp(rstd), bf(gc), B, C,
                                      HW, G));
    else
      cpu::groupnorm_backward(fp(dx), fp(dg), fp(db), fp(g.dout()), fp(xs), fp(mean), fp(rstd), fp(gc), B, C, HW, G);
  });
  return out;
}

// ================================================================================================ attention

Tensor rope_table(const std::vector<float>& ids, int P, const std::vector<int>& axes_dim, float theta, Device device) {
  const int n_axes = (int)axes_dim.size();
  if ((int64_t)ids.size() != (int64_t)P * n_axes) fail("internal: rope_table: ids do not match positions and axes");
  int D = 0;
  for (int a : axes_dim) D += a;
  Tensor host = empty({P, D / 2, 2}, DType::F32, Device::cpu());
  cpu::rope_table(host.data<float>(), ids.data(), P, axes_dim.data(), n_axes, theta);
  return to_device(host, device);
}

Tensor rope(const Tensor& x, const Tensor& cos_sin, int H) {
  check_activation("rope", x);
  check_same_device("rope", x, cos_sin);
  if (x.dim() != 3 || H <= 0 || x.size(2) % H) shape_error("rope", "input " + shape_str(x.shape) + " with " + std::to_string(H) + " heads");
  const int B = as_int(x.size(0), "rope"), L = as_int(x.size(1), "rope"), D = as_int(x.size(2) / H, "rope");
  if (cos_sin.numel() != (int64_t)B * L * D) shape_error("rope", "table " + shape_str(cos_sin.shape) + " for " + shape_str(x.shape));
  Tensor out = like(x, x.shape);
  if (x.is_cuda()) ON_CUDA(gpu::rope_forward(bf(out), bf(x), fp(cos_sin), B, L, H, D));
  else cpu::rope_forward(fp(out), fp(x), fp(cos_sin), B, L, H, D);
  record("rope", {&x}, {&out}, [=](GradContext& g) {
    Tensor* dx = g.din(0);
    if (!dx) return;
    if (dx->is_cuda()) ON_CUDA(gpu::rope_backward(bf(dx), bf(g.dout()), fp(cos_sin), B, L, H, D));
    else cpu::rope_backward(fp(dx), fp(g.dout()), fp(cos_sin), B, L, H, D);
  });
  return out;
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, int H, const AttentionOptions& opt) {
  for (const Tensor* t : {&q, &k, &v}) check_activation("attention", *t);
  if (q.dim() != 3 || q.shape != k.shape || q.shape != v.shape || H <= 0 || q.size(2) % H)
    shape_error("attention", "q " + shape_str(q.shape) + ", k " + shape_str(k.shape) + ", v " + shape_str(v.shape));
  const int B = as_int(q.size(0), "attention"), L = as_int(q.size(1), "attention"), D = as_int(q.size(2) / H, "attention");
  if (opt.bias.defined()) {
    check_same_device("attention", q, opt.bias);
    if (opt.bias.dtype != DType::F32 || opt.bias.shape != Shape{H, L, L} || opt.bias.requires_grad())
      shape_error("attention", "bias " + opt.bias.str() + " for " + std::to_string(H) + " heads of " + std::to_string(L) +
                                   " tokens (fp32 [heads, L, L], a constant)");
  }
  const Tensor bias = opt.bias.defined() ? opt.bias.detach() : Tensor();
  const AttentionMask mask{opt.scale, opt.causal, bias.defined() ? fp(bias) : nullptr};
  Tensor out = like(q, q.shape);
  // What the backward needs besides q, k, v: the probabilities on the CPU (the reference keeps the
  // L x L matrix), the log-sum-exp of each row on CUDA (flash attention recomputes the rest).
  // Head sizes the flash kernels lack (the autoencoder's one head of C channels) and masks take
  // the materialised path on CUDA too.
  const bool flash = q.is_cuda() && mask.plain() && (D == 32 || D == 64 || D == 128);
  Tensor stats;
  if (flash) {
    stats = empty({B, H, L}, DType::F32, q.device());
    ON_CUDA(gpu::attention_forward(bf(out), fp(stats), bf(q), bf(k), bf(v), B, L, H, D));
  } else if (q.is_cuda()) {
    stats = empty({B, H, L, L}, DType::F32, q.device(), "attention probabilities");
    ON_CUDA(gpu::attention_math_forward(bf(out), fp(stats), bf(q), bf(k), bf(v), B, L, H, D, mask));
  } else {
    stats = empty({B, H, L, L}, DType::F32, q.device(), "attention probabilities");
    cpu::attention_forward(fp(out), fp(stats), fp(q), fp(k), fp(v), B, L, H, D, mask);
  }
  const Tensor qs = q.detach(), ks = k.detach(), vs = v.detach(), os = out.detach();
  record("attention", {&q, &k, &v}, {&out}, [=](GradContext& g) {
    Tensor *dq = g.din(0), *dk = g.din(1), *dv = g.din(2);
    (void)bias;  // kept alive with the mask that points into it
    if (flash)
      ON_CUDA(gpu::attention_backward(bf(dq), bf(dk), bf(dv), bf(g.dout()), bf(os), fp(stats), bf(qs), bf(ks), bf(vs), B,
                                      L, H, D));
    else if (qs.is_cuda())
      ON_CUDA(gpu::attention_math_backward(bf(dq), bf(dk), bf(dv), bf(g.dout()), fp(stats), bf(qs), bf(ks), bf(vs), B, L,
                                           H, D, mask));
    else
      cpu::attention_backward(fp(dq), fp(dk), fp(dv), fp(g.dout()), fp(stats), fp(qs), fp(ks), fp(vs), B, L, H, D, mask);
  });
  return out;
}

// ================================================================================================ elementwise

Tensor gelu(const Tensor& x) {
  check_activation("gelu", x);
  Tensor out = like(x, x.shape);
  const long n = (long)x.numel();
  if (x.is_cuda()) ON_CUDA(gpu::gelu_forward(bf(out), bf(x), n));
  else cpu::gelu_forward(fp(out), fp(x), (int)n);
  const Tensor xs = x.detach();
  record("gelu", {&x}, {&out}, [=](GradContext& g) {
    Tensor* dx = g.din(0);
    if (xs.is_cuda()) ON_CUDA(gpu::gelu_backward(bf(dx), bf(g.dout()), bf(xs), n));
    else cpu::gelu_backward(fp(dx), fp(g.dout()), fp(xs), (int)n);
  });
  return out;
}

Tensor silu(const Tensor& x) {
  check_activation("silu", x);
  Tensor out = like(x, x.shape);
  const long n = (long)x.numel();
  if (x.is_cuda()) ON_CUDA(gpu::silu_forward(bf(out), bf(x), n));
  else cpu::silu_forward(fp(out), fp(x), (int)n);
  const Tensor xs = x.detach();
  record("silu", {&x}, {&out}, [=](GradContext& g) {
    Tensor* dx = g.din(0);
    if (xs.is_cuda()) ON_CUDA(gpu::silu_backward(bf(dx), bf(g.dout()), bf(xs), n));
    else cpu::silu_backward(fp(dx), fp(g.dout()), fp(xs), (int)n);
  });
  return out;
}

Tensor tanh(const Tensor& x) {
  check_activation("tanh", x);
  Tensor out = like(x, x.shape);
  const long n = (long)x.numel();
  if (x.is_cuda()) ON_CUDA(gpu::tanh_forward(bf(out), bf(x), n));
  else cpu::tanh_forward(fp(out), fp(x), (int)n);
  const Tensor ys = out.detach();
  record("tanh", {&x}, {&out}, [=](GradContext& g) {
    Tensor* dx = g.din(0);
    if (ys.is_cuda()) ON_CUDA(gpu::tanh_backward(bf(dx), bf(g.dout()), bf(ys), n));
    else cpu::tanh_backward(fp(dx), fp(g.dout()), fp(ys), (int)n);
  });
  return out;
}

// acc += x, elementwise, on either device (the gradient of every op that passes it on unchanged).
static void accumulate(Tensor* acc, const Tensor& x) {
  if (!acc) return;
  if (acc->numel() != x.numel()) shape_error("accumulate", acc->str() + " += " + x.str());
  const long n = (long)x.numel();
  if (acc->is_cuda()) {
    if (acc->dtype == DType::BF16) ON_CUDA(gpu::accumulate(bf(acc), bf(x), n));
    else ON_CUDA(gpu::accumulate_f32(fp(acc), fp(x), n));
  } else {
    cpu::accumulate(fp(acc), fp(x), n);
  }
}

Tensor quick_gelu(const Tensor& x) {
  check_activation("quick_gelu", x);
  Tensor out = like(x, x.shape);
  const long n = (long)x.numel();
  if (x.is_cuda()) ON_CUDA(gpu::quick_gelu_forward(bf(out), bf(x), n));
  else cpu::quick_gelu_forward(fp(out), fp(x), n);
  const Tensor xs = x.detach();
  record("quick_gelu", {&x}, {&out}, [=](GradContext& g) {
    Tensor* dx = g.din(0);
    if (xs.is_cuda()) ON_CUDA(gpu::quick_gelu_backward(bf(dx), bf(g.dout()), bf(xs), n));
    else cpu::quick_gelu_backward(fp(dx), fp(g.dout()), fp(xs), n);
  });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  check_activation("mul", a);
  check_activation("mul", b);
  check_same_device("mul", a, b);
  if (a.shape != b.shape) shape_error("mul", shape_str(a.shape) + " * " + shape_str(b.shape));
  Tensor out = like(a, a.shape);
  const long n = (long)a.numel();
  if (a.is_cuda()) ON_CUDA(gpu::mul_forward(bf(out), bf(a), bf(b), n));
  else cpu::mul_forward(fp(out), fp(a), fp(b), n);
  const Tensor as = a.detach(), bs = b.detach();
  record("mul", {&a, &b}, {&out}, [=](GradContext& g) {
    Tensor *da = g.din(0), *db = g.din(1);
    if (as.is_cuda()) ON_CUDA(gpu::mul_backward(bf(da), bf(db), bf(g.dout()), bf(as), bf(bs), n));
    else cpu::mul_backward(fp(da), fp(db), fp(g.dout()), fp(as), fp(bs), n);
  });
  return out;
}

Tensor add(const Tensor& a, const Tensor& b) {
  check_activation("add", a);
  check_activation("add", b);
  check_same_device("add", a, b);
  if (a.shape != b.shape) shape_error("add", shape_str(a.shape) + " + " + shape_str(b.shape));
  Tensor out = like(a, a.shape);
  const long n = (long)a.numel();
  if (a.is_cuda()) ON_CUDA(gpu::add(bf(out), bf(a), bf(b), n));
  else cpu::add_forward(fp(out), fp(a), fp(b), n);
  record("add", {&a, &b}, {&out}, [](GradContext& g) {
    accumulate(g.din(0), g.dout());
    accumulate(g.din(1), g.dout());
  });
  return out;
}

// x [B, L, C] with mod [B, k*C]: the sizes the broadcast kernels take.
struct ModShape { int B, L, C, stride; };
static ModShape mod_shape(const char* op, const Tensor& x, const Tensor& mod, std::initializer_list<int> chunks) {
  if (x.dim() != 3 || mod.dim() != 2 || mod.size(0) != x.size(0) || mod.size(1) % x.size(2))
    shape_error(op, "input " + shape_str(x.shape) + " with modulation " + shape_str(mod.shape));
  ModShape s{as_int(x.size(0), op), as_int(x.size(1), op), as_int(x.size(2), op), as_int(mod.size(1), op)};
  for (int c : chunks)
    if (c < 0 || (int64_t)(c + 1) * s.C > s.stride) shape_error(op, "chunk " + std::to_string(c) + " of " + shape_str(mod.shape));
  return s;
}

Tensor modulate(const Tensor& x, const Tensor& mod, int shift_chunk, int scale_chunk) {
  check_activation("modulate", x);
  check_activation("modulate", mod);
  const bool shifted = shift_chunk >= 0;
  const ModShape s = shifted ? mod_shape("modulate", x, mod, {shift_chunk, scale_chunk})
                             : mod_shape("modulate", x, mod, {scale_chunk});
  const long sh = (long)shift_chunk * s.C, sc = (long)scale_chunk * s.C;
  Tensor out = like(x, x.shape);
  if (x.is_cuda())
    ON_CUDA(gpu::modulate_forward(bf(out), bf(x), shifted ? bf(mod) + sh : nullptr, bf(mod) + sc, s.stride, s.B, s.L, s.C));
  else cpu::modulate_forward(fp(out), fp(x), shifted ? fp(mod) + sh : nullptr, fp(mod) + sc, s.stride, s.B, s.L, s.C);
  const Tensor xs = x.detach(), ms = mod.detach();
  record("modulate", {&x, &mod}, {&out}, [=](GradContext& g) {
    Tensor *dx = g.din(0), *dm = g.din(1);
    Tensor* dshift = shifted ? dm : nullptr;
    if (xs.is_cuda())
      ON_CUDA(gpu::modulate_backward(bf(dx), dshift ? bf(dm) + sh : nullptr, dm ? bf(dm) + sc : nullptr, bf(g.dout()),
                                     bf(xs), bf(ms) + sc, s.stride, s.B, s.L, s.C));
    else
      cpu::modulate_backward(fp(dx), dshift ? fp(dm) + sh : nullptr, dm ? fp(dm) + sc : nullptr, fp(g.dout()), fp(xs),
                             fp(ms) + sc, s.stride, s.B, s.L, s.C);
  });
  return out;
}

Tensor gate_residual(const Tensor& x, const Tensor& y, const Tensor& mod, int gate_chunk) {
  check_activation("gate_residual", x);
  check_activation("gate_residual", y);
  check_activation("gate_residual", mod);
  if (x.shape != y.shape) shape_error("gate_residual", shape_str(x.shape) + " and " + shape_str(y.shape));
  const ModShape s = mod_shape("gate_residual", x, mod, {gate_chunk});
  const long gc = (long)gate_chunk * s.C;
  Tensor out = clone(x);
  if (x.is_cuda()) ON_CUDA(gpu::gate_residual_forward(bf(out), bf(y), bf(mod) + gc, s.stride, s.B, s.L, s.C));
  else cpu::gate_residual_forward(fp(out), fp(y), fp(mod) + gc, s.stride, s.B, s.L, s.C);
  const Tensor ys = y.detach(), ms = mod.detach();
  record("gate_residual", {&x, &y, &mod}, {&out}, [=](GradContext& g) {
    accumulate(g.din(0), g.dout());
    Tensor *dy = g.din(1), *dm = g.din(2);
    if (!dy && !dm) return;
    if (ys.is_cuda())
      ON_CUDA(gpu::gate_residual_backward(bf(dy), dm ? bf(dm) + gc : nullptr, bf(g.dout()), bf(ys), bf(ms) + gc, s.stride,
                                          s.B, s.L, s.C));
    else
      cpu::gate_residual_backward(fp(dy), dm ? fp(dm) + gc : nullptr, fp(g.dout()), fp(ys), fp(ms) + gc, s.stride, s.B,
                                  s.L, s.C);
  });
  return out;
}

Tensor timestep_embedding(const Tensor& t, int dim, float time_factor, float max_period) {
  if (t.dtype != DType::F32 || t.dim() != 1) shape_error("timestep_embedding", "timesteps " + t.str() + " (F32 [B] expected)");
  const int B = as_int(t.size(0), "timestep_embedding");
  Tensor out = empty({B, dim}, compute_dtype(t.device()), t.device());
  if (t.is_cuda()) ON_CUDA(gpu::timestep_embedding_forward(bf(out), fp(t), B, dim, time_factor, max_period));
  else cpu::timestep_embedding_forward(fp(out), fp(t), B, dim, time_factor, max_period);
  const Tensor ts = t.detach();
  record("timestep_embedding", {&t}, {&out}, [=](GradContext& g) {
    Tensor* dt = g.din(0);
    if (!dt) return;
    if (ts.is_cuda()) ON_CUDA(gpu::timestep_embedding_backward(fp(dt), bf(g.dout()), fp(ts), B, dim, time_factor, max_period));
    else cpu::timestep_embedding_backward(fp(dt), fp(g.dout()), fp(ts), B, dim, time_factor, max_period);
  });
  return out;
}

Tensor embedding(const Tensor& ids, const Tensor& table) {
  if (ids.dtype != DType::I32) shape_error("embedding", "ids " + ids.str() + " are not I32");
  check_same_device("embedding", ids, table);
  if (table.dim() != 2) shape_error("embedding", "table " + shape_str(table.shape));
  const int N = as_int(ids.numel(), "embedding"), V = as_int(table.size(0), "embedding"), C = as_int(table.size(1), "embedding");
  if (!ids.is_cuda())  // out-of-range ids are checked where they can be read cheaply
    for (int i = 0; i < N; ++i)
      if (ids.data<int>()[i] < 0 || ids.data<int>()[i] >= V)
        fail("embedding: token id " + std::to_string(ids.data<int>()[i]) + " outside the vocabulary of " + std::to_string(V));
  Shape oshape = ids.shape;
  oshape.push_back(C);
  Tensor out = empty(oshape, compute_dtype(ids.device()), ids.device());
  if (ids.is_cuda()) {
    const Tensor tc = weight_for(table);
    ON_CUDA(gpu::embedding_forward(bf(out), ids.data<int>(), bf(tc), N, V, C));
  } else if (host_f32(table)) {
    cpu::embedding_forward(fp(out), ids.data<int>(), fp(table), N, V, C);
  } else {  // a table in another dtype (a T5 vocabulary in bf16 is 250 MB): only the rows asked for
    const size_t row = (size_t)C * dtype_size(table.dtype);
    for (int n = 0; n < N; ++n)
      convert_host(fp(out) + (size_t)n * C, DType::F32, (const char*)table.raw() + ids.data<int>()[n] * row, table.dtype, C);
  }
  const Tensor is = ids.detach();
  record("embedding", {&ids, &table}, {&out}, [=](GradContext& g) {
    Tensor* dt = g.din(1);
    if (!dt) return;
    check_weight_grad("embedding", dt);
    if (is.is_cuda()) ON_CUDA(gpu::embedding_backward(fp(dt), bf(g.dout()), is.data<int>(), N, V, C));
    else cpu::embedding_backward(fp(dt), fp(g.dout()), is.data<int>(), N, V, C);
  });
  return out;
}

Tensor mean_tokens(const Tensor& x) {
  check_activation("mean_tokens", x);
  if (x.dim() != 3) shape_error("mean_tokens", "input " + shape_str(x.shape) + " is not [B, L, C]");
  const int B = as_int(x.size(0), "mean_tokens"), L = as_int(x.size(1), "mean_tokens"), C = as_int(x.size(2), "mean_tokens");
  Tensor out = like(x, {B, C});
  if (x.is_cuda()) ON_CUDA(gpu::mean_tokens_forward(bf(out), bf(x), B, L, C));
  else cpu::mean_tokens_forward(fp(out), fp(x), B, L, C);
  record("mean_tokens", {&x}, {&out}, [=](GradContext& g) {
    Tensor* dx = g.din(0);
    if (!dx) return;
    if (dx->is_cuda()) ON_CUDA(gpu::mean_tokens_backward(bf(dx), bf(g.dout()), B, L, C));
    else cpu::mean_tokens_backward(fp(dx), fp(g.dout()), B, L, C);
  });
  return out;
}

// ================================================================================================ shapes

std::vector<Tensor> on_backward(const std::vector<Tensor>& xs, std::function<void()> fn) {
  std::vector<const Tensor*> inputs;
  for (const Tensor& x : xs) inputs.push_back(&x);
  if (!grad_enabled()) return xs;  // recorded even when no input needs a gradient: the hook must run
  std::vector<Tensor> outs;
  for (const Tensor& x : xs) outs.push_back(x.detach());
  std::vector<Tensor*> out_ptrs;
  for (Tensor& t : outs) out_ptrs.push_back(&t);
  const int n = (int)xs.size();
  record("on_backward", inputs, out_ptrs, [fn, n](GradContext& g) {
    fn();
    for (int i = 0; i < n; ++i)
      if (Tensor* d = g.din(i); d && g.dout(i).defined()) accumulate(d, g.dout(i));
  }, /*always=*/true);
  return outs;
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  if (shape_numel(shape) != x.numel()) shape_error("reshape", shape_str(x.shape) + " to " + shape_str(shape));
  Tensor out = x.view(shape);
  record("reshape", {&x}, {&out}, [](GradContext& g) { accumulate(g.din(0), g.dout()); });
  return out;
}

// Copies `cols` columns at `src_off` of src (rows x src_ld) to `dst_off` of dst (rows x dst_ld),
// in elements of t's dtype, on t's device.
static void copy_block(const Tensor& dst, long dst_ld, long dst_off, const Tensor& src, long src_ld, long src_off,
                       long rows, long cols) {
  const int e = (int)dtype_size(src.dtype);
  char* d = (char*)dst.raw() + dst_off * e;
  const char* s = (const char*)src.raw() + src_off * e;
  if (src.is_cuda()) ON_CUDA(gpu::copy_block(d, dst_ld * e, s, src_ld * e, cols * e, rows));
  else cpu::copy_cols(d, dst_ld, s, src_ld, rows, cols, e);
}

// dst[:, dst_off : dst_off + cols] += src[:, src_off : ...] (gradients: fp32 on the CPU, any on CUDA).
static void add_block(const Tensor& dst, long dst_ld, long dst_off, const Tensor& src, long src_ld, long src_off,
                      long rows, long cols) {
  if (dst.is_cuda()) {
    if (dst.dtype == DType::BF16) ON_CUDA(gpu::add_block(bf(dst) + dst_off, dst_ld, bf(src) + src_off, src_ld, rows, cols));
    else ON_CUDA(gpu::add_block_f32(fp(dst) + dst_off, dst_ld, fp(src) + src_off, src_ld, rows, cols));
  } else {
    cpu::add_cols(fp(dst) + dst_off, dst_ld, fp(src) + src_off, src_ld, rows, cols);
  }
}

// Dims before `dim` as rows, the rest as columns: narrow and cat are column blocks of that matrix.
static void rows_cols(const Shape& s, int dim, long* rows, long* inner) {
  *rows = 1;
  *inner = 1;
  for (int i = 0; i < dim; ++i) *rows *= s[i];
  for (size_t i = dim + 1; i < s.size(); ++i) *inner *= s[i];
}

Tensor narrow(const Tensor& x, int dim, int64_t start, int64_t len) {
  if (dim < 0) dim += x.dim();
  if (dim < 0 || dim >= x.dim() || start < 0 || len < 0 || start + len > x.size(dim))
    shape_error("narrow", "[" + std::to_string(start) + ", +" + std::to_string(len) + ") of dim " + std::to_string(dim) +
                              " of " + shape_str(x.shape));
  long rows, inner;
  rows_cols(x.shape, dim, &rows, &inner);
  Shape oshape = x.shape;
  oshape[dim] = len;
  Tensor out = like(x, oshape);
  const long src_ld = x.size(dim) * inner, w = len * inner, off = start * inner;
  copy_block(out, w, 0, x, src_ld, off, rows, w);
  record("narrow", {&x}, {&out}, [=](GradContext& g) {
    if (Tensor* dx = g.din(0)) add_block(*dx, src_ld, off, g.dout(), w, 0, rows, w);
  });
  return out;
}

Tensor cat(const std::vector<Tensor>& xs, int dim) {
  if (xs.empty()) shape_error("cat", "nothing to concatenate");
  const Tensor& x0 = xs[0];
  if (dim < 0) dim += x0.dim();
  Shape oshape = x0.shape;
  oshape[dim] = 0;
  for (const Tensor& x : xs) {
    Shape a = x.shape, b = x0.shape;
    if (x.dim() != x0.dim() || x.dtype != x0.dtype || x.device() != x0.device())
      shape_error("cat", x.str() + " with " + x0.str());
    a[dim] = b[dim] = 0;
    if (a != b) shape_error("cat", shape_str(x.shape) + " with " + shape_str(x0.shape) + " along dim " + std::to_string(dim));
    oshape[dim] += x.size(dim);
  }
  long rows, inner;
  rows_cols(oshape, dim, &rows, &inner);
  Tensor out = like(x0, oshape);
  const long ld = oshape[dim] * inner;
  std::vector<long> offs;
  long off = 0;
  for (const Tensor& x : xs) {
    const long w = x.size(dim) * inner;
    copy_block(out, ld, off, x, w, 0, rows, w);
    offs.push_back(off);
    off += w;
  }
  std::vector<const Tensor*> inputs;
  std::vector<long> widths;
  for (const Tensor& x : xs) inputs.push_back(&x), widths.push_back(x.size(dim) * inner);
  record("cat", inputs, {&out}, [=](GradContext& g) {
    for (size_t i = 0; i < offs.size(); ++i)
      if (Tensor* dx = g.din((int)i)) add_block(*dx, widths[i], 0, g.dout(), ld, offs[i], rows, widths[i]);
  });
  return out;
}

Tensor channels_to_tokens(const Tensor& x) {
  check_activation("channels_to_tokens", x);
  if (x.dim() != 4) shape_error("channels_to_tokens", "input " + shape_str(x.shape) + " is not [B, C, H, W]");
  const int B = as_int(x.size(0), "c2t"), C = as_int(x.size(1), "c2t"), HW = as_int(x.size(2) * x.size(3), "c2t");
  Tensor out = like(x, {B, HW, C});
  if (x.is_cuda()) ON_CUDA(gpu::transpose_inner(bf(out), bf(x), B, C, HW, false));
  else cpu::channels_to_tokens_forward(fp(out), fp(x), B, C, HW);
  record("channels_to_tokens", {&x}, {&out}, [=](GradContext& g) {
    Tensor* dx = g.din(0);
    if (!dx) return;
    if (dx->is_cuda()) ON_CUDA(gpu::transpose_inner(bf(dx), bf(g.dout()), B, HW, C, true));
    else cpu::channels_to_tokens_backward(fp(dx), fp(g.dout()), B, C, HW);
  });
  return out;
}

Tensor tokens_to_channels(const Tensor& x, int H, int W) {
  check_activation("tokens_to_channels", x);
  if (x.dim() != 3 || x.size(1) != (int64_t)H * W) shape_error("tokens_to_channels", "input " + shape_str(x.shape));
  const int B = as_int(x.size(0), "t2c"), C = as_int(x.size(2), "t2c"), HW = H * W;
  Tensor out = like(x, {B, C, H, W});
  if (x.is_cuda()) ON_CUDA(gpu::transpose_inner(bf(out), bf(x), B, HW, C, false));
  else cpu::tokens_to_channels_forward(fp(out), fp(x), B, C, HW);
  record("tokens_to_channels", {&x}, {&out}, [=](GradContext& g) {
    Tensor* dx = g.din(0);
    if (!dx) return;
    if (dx->is_cuda()) ON_CUDA(gpu::transpose_inner(bf(dx), bf(g.dout()), B, C, HW, true));
    else cpu::tokens_to_channels_backward(fp(dx), fp(g.dout()), B, C, HW);
  });
  return out;
}

// ================================================================================================ images

Tensor conv2d(const Tensor& x, const Tensor& W, const Tensor& b, int stride, const int pad[4]) {
  check_activation("conv2d", x);
  check_same_device("conv2d", x, W);
  if (x.dim() != 4 || W.dim() != 4 || x.size(1) != W.size(1))
    shape_error("conv2d", "input " + shape_str(x.shape) + ", weight " + shape_str(W.shape));
  Conv2dShape s;
  s.B = as_int(x.size(0), "conv2d"), s.IC = as_int(x.size(1), "conv2d"), s.H = as_int(x.size(2), "conv2d");
  s.W = as_int(x.size(3), "conv2d");
  s.OC = as_int(W.size(0), "conv2d"), s.KH = as_int(W.size(2), "conv2d"), s.KW = as_int(W.size(3), "conv2d");
  s.stride = stride;
  s.pad_top = pad[0], s.pad_left = pad[1], s.pad_bottom = pad[2], s.pad_right = pad[3];
  if (b.defined() && b.numel() != s.OC) shape_error("conv2d", "bias " + shape_str(b.shape));
  if (s.out_h() <= 0 || s.out_w() <= 0) fail("conv2d: input " + shape_str(x.shape) + " is smaller than the kernel");
  Tensor out = like(x, {s.B, s.OC, s.out_h(), s.out_w()});
  const Tensor Wc = weight_for(W), bc = weight_for(b);
  if (x.is_cuda()) ON_CUDA(gpu::conv2d_forward(bf(out), bf(x), bf(Wc), bc.defined() ? bf(bc) : nullptr, s));
  else cpu::conv2d_forward(fp(out), fp(x), fp(Wc), bc.defined() ? fp(bc) : nullptr, s);
  const Tensor xs = x.detach(), Ws = W.detach();
  record("conv2d", {&x, &W, &b}, {&out}, [=](GradContext& g) {
    Tensor *dx = g.din(0), *dW = g.din(1), *db = g.din(2);
    check_weight_grad("conv2d", dW);
    check_weight_grad("conv2d", db);
    const Tensor Wc = weight_for(Ws);
    if (xs.is_cuda()) ON_CUDA(gpu::conv2d_backward(bf(dx), fp(dW), fp(db), bf(g.dout()), bf(xs), bf(Wc), s));
    else cpu::conv2d_backward(fp(dx), fp(dW), fp(db), fp(g.dout()), fp(xs), fp(Wc), s);
  });
  return out;
}

Tensor conv2d(const Tensor& x, const Tensor& W, const Tensor& b, int pad) {
  const int p[4] = {pad, pad, pad, pad};
  return conv2d(x, W, b, 1, p);
}

Tensor upsample_nearest2x(const Tensor& x) {
  check_activation("upsample_nearest2x", x);
  if (x.dim() != 4) shape_error("upsample_nearest2x", "input " + shape_str(x.shape));
  const int B = as_int(x.size(0), "up"), C = as_int(x.size(1), "up"), H = as_int(x.size(2), "up"), W = as_int(x.size(3), "up");
  Tensor out = like(x, {B, C, 2 * H, 2 * W});
  if (x.is_cuda()) ON_CUDA(gpu::upsample_nearest2x_forward(bf(out), bf(x), B, C, H, W));
  else cpu::upsample_nearest2x_forward(fp(out), fp(x), B, C, H, W);
  record("upsample_nearest2x", {&x}, {&out}, [=](GradContext& g) {
    Tensor* dx = g.din(0);
    if (!dx) return;
    if (dx->is_cuda()) ON_CUDA(gpu::upsample_nearest2x_backward(bf(dx), bf(g.dout()), B, C, H, W));
    else cpu::upsample_nearest2x_backward(fp(dx), fp(g.dout()), B, C, H, W);
  });
  return out;
}

// ================================================================================================ Gaussian

Tensor gaussian_sample(const Tensor& mean, const Tensor& logvar, const Tensor& noise) {
  for (const Tensor* t : {&mean, &logvar, &noise}) check_activation("gaussian_sample", *t);
  if (mean.shape != logvar.shape || mean.shape != noise.shape) shape_error("gaussian_sample", "shapes differ");
  const long n = (long)mean.numel();
  Tensor out = like(mean, mean.shape);
  if (mean.is_cuda()) ON_CUDA(gpu::gaussian_sample_forward(bf(out), bf(mean), bf(logvar), bf(noise), n));
  else cpu::gaussian_sample_forward(fp(out), fp(mean), fp(logvar), fp(noise), n);
  const Tensor ls = logvar.detach(), ns = noise.detach();
  record("gaussian_sample", {&mean, &logvar}, {&out}, [=](GradContext& g) {
    Tensor *dm = g.din(0), *dl = g.din(1);
    if (ls.is_cuda()) ON_CUDA(gpu::gaussian_sample_backward(bf(dm), bf(dl), bf(g.dout()), bf(ls), bf(ns), n));
    else cpu::gaussian_sample_backward(fp(dm), fp(dl), fp(g.dout()), fp(ls), fp(ns), n);
  });
  return out;
}

Tensor gaussian_kl(const Tensor& mean, const Tensor& logvar) {
  check_activation("gaussian_kl", mean);
  check_activation("gaussian_kl", logvar);
  if (mean.shape != logvar.shape) shape_error("gaussian_kl", "shapes differ");
  const long n = (long)mean.numel();
  Tensor out = empty({1}, DType::F32, mean.device());
  if (mean.is_cuda()) ON_CUDA(gpu::gaussian_kl_forward(fp(out), bf(mean), bf(logvar), n));
  else fp(out)[0] = cpu::gaussian_kl_forward(fp(mean), fp(logvar), n);
  const Tensor ms = mean.detach(), ls = logvar.detach();
  record("gaussian_kl", {&mean, &logvar}, {&out}, [=](GradContext& g) {
    Tensor *dm = g.din(0), *dl = g.din(1);
    const float dkl = item(g.dout());
    if (ms.is_cuda()) ON_CUDA(gpu::gaussian_kl_backward(bf(dm), bf(dl), bf(ms), bf(ls), n, dkl));
    else cpu::gaussian_kl_backward(fp(dm), fp(dl), fp(ms), fp(ls), n, dkl);
  });
  return out;
}

// ================================================================================================ losses

double mse(const Tensor& a, const Tensor& b) {
  check_same_device("mse", a, b);
  if (a.numel() != b.numel() || a.dtype != b.dtype) shape_error("mse", a.str() + " and " + b.str());
  const long n = (long)a.numel();
  if (a.is_cuda()) {
    double v = 0.0;
    ON_CUDA(v = gpu::mse_forward_host(bf(a), bf(b), n));
    return v;
  }
  return cpu::mse_forward(fp(a), fp(b), n);
}

Tensor mse_grad(const Tensor& pred, const Tensor& target, float scale, const std::vector<float>& weights) {
  check_same_device("mse_grad", pred, target);
  if (pred.numel() != target.numel() || pred.dtype != target.dtype) shape_error("mse_grad", pred.str() + " and " + target.str());
  const long n = (long)pred.numel();
  Tensor d = zeros(pred.shape, pred.dtype, pred.device(), "a loss gradient");
  if (!weights.empty() && (int64_t)weights.size() != pred.size(0)) shape_error("mse_grad", "one weight per row expected");
  const long per = weights.empty() ? n : n / (long)weights.size();
  if (pred.is_cuda()) {
    // Row by row with the weight folded into the scale (the CPU multiplies after: the same value
    // up to rounding).
    for (size_t b = 0; b < std::max<size_t>(1, weights.size()); ++b) {
      [[maybe_unused]] const float w = weights.empty() ? 1.0f : weights[b];
      [[maybe_unused]] const long o = (long)b * per;
      // d(mean over all n) for this row: 2 (p - t) / n, so the row's share keeps n.
      ON_CUDA(gpu::mse_backward_scaled(bf(d) + o, bf(pred) + o, bf(target) + o, per, n, scale * w));
    }
    return d;
  }
  float* g = fp(d);
  cpu::mse_backward(g, fp(pred), fp(target), n, scale);
  for (size_t b = 0; b < weights.size(); ++b)
    if (weights[b] != 1.0f)
      for (long i = 0; i < per; ++i) g[b * per + i] *= weights[b];
  return d;
}

}  // namespace graft
