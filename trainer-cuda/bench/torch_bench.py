#!/usr/bin/env python3
"""The PyTorch side of graft-gpu-bench: the same operations in plain PyTorch (bf16, SDPA), timed with
CUDA events in the same run, so the bench can print ratios. Prints one line per result:
    TORCH <key> <median ms>
with the keys graft-gpu-bench uses. Shapes: FLUX.1-dev (hidden 3072, 24 heads x 128, MLP 12288),
512 px = 1024 image + 512 text tokens, 1024 px = 4096 + 512; LoRA rank 16 (alpha 16) on every
linear layer of a block except the modulation. Last, the whole FLUX.1-dev step (19 double + 38 single
blocks, embedders, final layer; `--depth D,S` for fewer), forward + backward to the LoRA gradients.
With `--zimage`, the Z-Image step too (dim 3840, 30 heads, 30 layers + 2 + 2 refiners, 1024 px = 4096 image +
128 caption tokens, LoRA on every linear of the 30 layers), no gradient checkpointing."""
import sys

import torch
import torch.nn.functional as F

C, H, D, MLP, R = 3072, 24, 128, 12288, 16
TOKENS = [(1024, 512), (4096, 512)]
dev, bf16 = "cuda", torch.bfloat16


def median_ms(fn, warmup=3, iters=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def report(key, ms):
    print(f"TORCH {key} {ms:.4f}", flush=True)


def w(*shape, scale=0.02):
    return (torch.randn(*shape, device=dev) * scale).to(bf16)


class Lora:
    def __init__(self, n_in, n_out):
        self.A = (torch.randn(R, n_in, device=dev) / n_in**0.5).requires_grad_()
        self.B = (torch.randn(n_out, R, device=dev) * 0.01).requires_grad_()

    def __call__(self, x):  # fp32 master weights used in bf16, as autocast does
        return F.linear(F.linear(x, self.A.to(bf16)), self.B.to(bf16))  # scale alpha/rank = 1


def rms(x, scale):
    rrms = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)
    return (x.float() * rrms).to(x.dtype) * scale


def rope(x, cos, sin):  # x [B, H, L, D]; cos, sin [L, D/2]; rotates adjacent pairs, in fp32 as FLUX
    xf = x.float()
    x0, x1 = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack([cos * x0 - sin * x1, sin * x0 + cos * x1], dim=-1)
    return out.flatten(-2).type_as(x)


def modulate(x, shift, scale):
    return (1 + scale) * x + shift


def ln(x):
    return F.layer_norm(x, (C,), eps=1e-6)


def heads(t, L):  # [1, L, C] -> [1, H, L, D]
    return t.view(1, L, H, D).transpose(1, 2)


class Stream:
    def __init__(self):
        self.mod_w, self.mod_b = w(6 * C, C), w(6 * C)
        self.qkv_w, self.qkv_b = w(3 * C, C), w(3 * C)
        self.proj_w, self.proj_b = w(C, C), w(C)
        self.mlp0_w, self.mlp0_b = w(MLP, C), w(MLP)
        self.mlp2_w, self.mlp2_b = w(C, MLP), w(C)
        self.q_scale, self.k_scale = w(D, scale=1.0).abs(), w(D, scale=1.0).abs()
        self.lq, self.lk, self.lv = Lora(C, C), Lora(C, C), Lora(C, C)
        self.lproj, self.lmlp0, self.lmlp2 = Lora(C, C), Lora(C, MLP), Lora(MLP, C)

    def qkv(self, x):
        y = F.linear(x, self.qkv_w, self.qkv_b) + torch.cat([self.lq(x), self.lk(x), self.lv(x)], -1)
        return y.chunk(3, dim=-1)


def double_block(img, txt, vec, s_img, s_txt, cos, sin):
    Li, Lt = img.shape[1], txt.shape[1]
    v = F.silu(vec)
    mi = F.linear(v, s_img.mod_w, s_img.mod_b)[:, None, :].chunk(6, -1)
    mt = F.linear(v, s_txt.mod_w, s_txt.mod_b)[:, None, :].chunk(6, -1)
    qi, ki, vi = s_img.qkv(modulate(ln(img), mi[0], mi[1]))
    qt, kt, vt = s_txt.qkv(modulate(ln(txt), mt[0], mt[1]))
    qi, ki, vi = heads(qi, Li), heads(ki, Li), heads(vi, Li)
    qt, kt, vt = heads(qt, Lt), heads(kt, Lt), heads(vt, Lt)
    qi, ki, qt, kt = rms(qi, s_img.q_scale), rms(ki, s_img.k_scale), rms(qt, s_txt.q_scale), rms(kt, s_txt.k_scale)
    q, k, vv = torch.cat([qt, qi], 2), torch.cat([kt, ki], 2), torch.cat([vt, vi], 2)
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    att = F.scaled_dot_product_attention(q, k, vv).transpose(1, 2).reshape(1, Lt + Li, C)
    at, ai = att[:, :Lt], att[:, Lt:]
    out = []
    for x, a, m, s in ((img, ai, mi, s_img), (txt, at, mt, s_txt)):
        x = x + m[2] * (F.linear(a, s.proj_w, s.proj_b) + s.lproj(a))
        hmod = modulate(ln(x), m[3], m[4])
        h = F.gelu(F.linear(hmod, s.mlp0_w, s.mlp0_b) + s.lmlp0(hmod), approximate="tanh")
        x = x + m[5] * (F.linear(h, s.mlp2_w, s.mlp2_b) + s.lmlp2(h))
        out.append(x)
    return out


class Single:
    def __init__(self):
        self.mod_w, self.mod_b = w(3 * C, C), w(3 * C)
        self.l1_w, self.l1_b = w(3 * C + MLP, C), w(3 * C + MLP)
        self.l2_w, self.l2_b = w(C, C + MLP), w(C)
        self.q_scale, self.k_scale = w(D, scale=1.0).abs(), w(D, scale=1.0).abs()
        self.lq, self.lk, self.lv, self.lmlp = Lora(C, C), Lora(C, C), Lora(C, C), Lora(C, MLP)
        self.l2 = Lora(C + MLP, C)


def single_block(x, vec, s, cos, sin):
    L = x.shape[1]
    m = F.linear(F.silu(vec), s.mod_w, s.mod_b)[:, None, :].chunk(3, -1)
    xm = modulate(ln(x), m[0], m[1])
    y = F.linear(xm, s.l1_w, s.l1_b) + torch.cat([s.lq(xm), s.lk(xm), s.lv(xm), s.lmlp(xm)], -1)
    q, k, v, mlp = torch.split(y, [C, C, C, MLP], -1)
    q, k, v = heads(q, L), heads(k, L), heads(v, L)
    q, k = rope(rms(q, s.q_scale), cos, sin), rope(rms(k, s.k_scale), cos, sin)
    att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, L, C)
    cat = torch.cat([att, F.gelu(mlp, approximate="tanh")], -1)
    return x + m[2] * (F.linear(cat, s.l2_w, s.l2_b) + s.l2(cat))


class Lin:
    def __init__(self, n_in, n_out, scale=0.02):
        self.w, self.b = w(n_out, n_in, scale=scale), w(n_out)

    def __call__(self, x):
        return F.linear(x, self.w, self.b)


def timestep_embedding(t, dim=256, max_period=10000.0, time_factor=1000.0):
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-torch.log(torch.tensor(max_period)) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Flux:
    """FLUX.1-dev at full width: the same blocks as above, plus embedders and the final layer."""

    def __init__(self, n_double, n_single):
        self.img_in, self.txt_in = Lin(64, C), Lin(4096, C)
        self.time_in = (Lin(256, C), Lin(C, C))
        self.guidance_in = (Lin(256, C), Lin(C, C))
        self.vector_in = (Lin(768, C), Lin(C, C))
        self.doubles = [(Stream(), Stream()) for _ in range(n_double)]
        self.singles = [Single() for _ in range(n_single)]
        self.final_mod, self.final_linear = Lin(C, 2 * C), Lin(C, 64)

    def __call__(self, img, txt, y, t, g, cos, sin):
        mlp = lambda pair, x: pair[1](F.silu(pair[0](x)))
        vec = mlp(self.time_in, timestep_embedding(t).to(bf16)) + mlp(self.guidance_in, timestep_embedding(g).to(bf16))
        vec = vec + mlp(self.vector_in, y)
        img, txt = self.img_in(img), self.txt_in(txt)
        for s_img, s_txt in self.doubles:
            img, txt = double_block(img, txt, vec, s_img, s_txt, cos, sin)
        x = torch.cat([txt, img], 1)
        for s in self.singles:
            x = single_block(x, vec, s, cos, sin)
        x = x[:, txt.shape[1]:]
        shift, scale = self.final_mod(F.silu(vec))[:, None, :].chunk(2, -1)
        return self.final_linear(modulate(ln(x), shift, scale))


def flux_step(n_double, n_single):
    model = Flux(n_double, n_single)
    for Li, Lt in TOKENS:
        T = Li + Lt
        try:
            pos = torch.arange(T, device=dev, dtype=torch.float32)[:, None]
            freqs = 1.0 / (10000 ** (torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D))
            cos, sin = torch.cos(pos * freqs), torch.sin(pos * freqs)
            img, txt, y = w(1, Li, 64, scale=1.0), w(1, Lt, 4096, scale=1.0), w(1, 768, scale=1.0)
            t, g = torch.tensor([0.5], device=dev), torch.tensor([3.5], device=dev)
            gout = w(1, Li, 64, scale=1e-3)

            def step():
                model(img, txt, y, t, g, cos, sin).backward(gout)
            torch.cuda.reset_peak_memory_stats()
            report(f"flux:{T}", median_ms(step, warmup=2, iters=5))
            report(f"flux_peak_mib:{T}", torch.cuda.max_memory_allocated() / 2**20)
        except torch.cuda.OutOfMemoryError as e:
            print(f"# torch flux step at {T} tokens: out of memory ({str(e).splitlines()[0]})", flush=True)
        torch.cuda.empty_cache()


class ZBlock:
    """diffusers' ZImageTransformerBlock in plain PyTorch: RMSNorm, scale-only adaLN, tanh gates, QK-norm."""
    def __init__(self, dim, modulated, lora):
        F_ = int(dim / 3 * 8)
        self.modulated = modulated
        self.qkv, self.out = w(3 * dim, dim), w(dim, dim)
        self.w1, self.w2, self.w3 = w(F_, dim), w(dim, F_), w(F_, dim)
        self.norms = [w(dim, scale=1.0).abs() for _ in range(4)]
        self.qn, self.kn = w(128, scale=1.0).abs(), w(128, scale=1.0).abs()
        self.ada = (w(4 * dim, 256), w(4 * dim)) if modulated else None
        self.lora = {n: Lora(i, o) for n, i, o in [("q", dim, dim), ("k", dim, dim), ("v", dim, dim), ("out", dim, dim),
                                                  ("w1", dim, F_), ("w2", F_, dim), ("w3", dim, F_), ("ada", 256, 4 * dim)]} if lora else {}

    def lin(self, x, W, name, b=None):
        y = F.linear(x, W, b)
        return y + self.lora[name](x) if name in self.lora else y

    def __call__(self, x, c, cos, sin):
        L, dim = x.shape[1], x.shape[2]
        if self.modulated:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.lin(c, self.ada[0], "ada", self.ada[1])[:, None, :].chunk(4, -1)
            gate_msa, gate_mlp = gate_msa.tanh(), gate_mlp.tanh()
        h = rms(x, self.norms[0])
        if self.modulated:
            h = h * (1 + scale_msa)
        q, k, v = F.linear(h, self.qkv).chunk(3, -1)
        q, k, v = q + (self.lora["q"](h) if self.lora else 0), k + (self.lora["k"](h) if self.lora else 0), v + (self.lora["v"](h) if self.lora else 0)
        hd = lambda t: t.view(1, L, dim // 128, 128).transpose(1, 2)
        q, k, v = rope(rms(hd(q), self.qn), cos, sin), rope(rms(hd(k), self.kn), cos, sin), hd(v)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, L, dim)
        a = rms(self.lin(a, self.out, "out"), self.norms[1])
        x = x + (gate_msa * a if self.modulated else a)
        f = rms(x, self.norms[2])
        if self.modulated:
            f = f * (1 + scale_mlp)
        f = rms(self.lin(F.silu(self.lin(f, self.w1, "w1")) * self.lin(f, self.w3, "w3"), self.w2, "w2"), self.norms[3])
        return x + (gate_mlp * f if self.modulated else f)


def zimage_step():
    dim, Li, Lt = 3840, 4096, 128
    try:
        layers = [ZBlock(dim, True, True) for _ in range(30)]
        noise = [ZBlock(dim, True, False) for _ in range(2)]
        context = [ZBlock(dim, False, False) for _ in range(2)]
        x_emb, cap_emb, final = (w(dim, 64), w(dim)), (w(dim, 2560), w(dim)), (w(64, dim), w(64))
        t_mlp = (w(1024, 256), w(1024), w(256, 1024), w(256))
        final_mod = (w(dim, 256), w(dim))
        img, cap = w(1, Li, 64, scale=1.0), w(1, Lt, 2560, scale=1.0)
        gout = w(1, Li, 64, scale=1e-3)
        T = Li + Lt
        pos = torch.arange(T, device=dev, dtype=torch.float32)[:, None]
        freqs = 1.0 / (256 ** (torch.arange(0, 128, 2, device=dev, dtype=torch.float32) / 128))
        cos, sin = torch.cos(pos * freqs), torch.sin(pos * freqs)

        def step():
            c = F.linear(F.silu(F.linear(timestep_embedding(torch.tensor([0.5], device=dev)).to(bf16), t_mlp[0], t_mlp[1])), t_mlp[2], t_mlp[3])
            x = F.linear(img, *x_emb)
            for b in noise:
                x = b(x, c, cos[:Li], sin[:Li])
            y = F.linear(cap, *cap_emb)
            for b in context:
                y = b(y, c, cos[Li:], sin[Li:])
            u = torch.cat([x, y], 1)
            for b in layers:
                u = b(u, c, cos, sin)
            h = F.layer_norm(u[:, :Li], (dim,), eps=1e-6) * (1 + F.linear(F.silu(c), *final_mod)[:, None, :])
            F.linear(h, *final).backward(gout)
        torch.cuda.reset_peak_memory_stats()
        report(f"zimage:{T}", median_ms(step, warmup=2, iters=5))
        report(f"zimage_peak_mib:{T}", torch.cuda.max_memory_allocated() / 2**20)
    except torch.cuda.OutOfMemoryError as e:
        print(f"# torch Z-Image step: out of memory ({str(e).splitlines()[0]})", flush=True)
    torch.cuda.empty_cache()


def main():
    depth, blocks, zimage = (19, 38), True, False
    args = sys.argv[1:]
    while args:
        a = args.pop(0)
        if a == "--depth":
            depth = tuple(int(v) for v in args.pop(0).split(","))
        elif a == "--step-only":
            blocks = False
        elif a == "--zimage":
            zimage = True
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    print(f"# torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    gemms = [("qkv", C, 3 * C), ("proj", C, C), ("mlp0", C, MLP), ("mlp2", MLP, C), ("single_l1", C, 3 * C + MLP),
             ("single_l2", C + MLP, C)]
    for Li, Lt in TOKENS if blocks else []:
        T = Li + Lt
        for name, n_in, n_out in gemms:
            x, W = w(T, n_in, scale=1.0), w(n_out, n_in)
            report(f"gemm:{name}:{T}", median_ms(lambda: F.linear(x, W)))
        q, k, v = (w(1, H, T, D, scale=1.0).requires_grad_() for _ in range(3))
        g = w(1, H, T, D, scale=1.0)
        report(f"attn_fwd:{T}", median_ms(lambda: F.scaled_dot_product_attention(q, k, v)))

        def attn_fb():
            F.scaled_dot_product_attention(q, k, v).backward(g)
        report(f"attn_fwdbwd:{T}", median_ms(attn_fb))
        del q, k, v, g

        pos = torch.arange(T, device=dev, dtype=torch.float32)[:, None]
        freqs = 1.0 / (10000 ** (torch.arange(0, D, 2, device=dev, dtype=torch.float32) / D))
        cos, sin = torch.cos(pos * freqs), torch.sin(pos * freqs)
        img = w(1, Li, C, scale=1.0).requires_grad_()
        txt = w(1, Lt, C, scale=1.0).requires_grad_()
        vec = w(1, C, scale=1.0)
        s_img, s_txt = Stream(), Stream()
        gi, gt = w(1, Li, C, scale=1.0), w(1, Lt, C, scale=1.0)

        def dbl():
            oi, ot = double_block(img, txt, vec, s_img, s_txt, cos, sin)
            torch.autograd.backward([oi, ot], [gi, gt])
        torch.cuda.reset_peak_memory_stats()
        report(f"double:{T}", median_ms(dbl))
        report(f"double_peak_mib:{T}", torch.cuda.max_memory_allocated() / 2**20)
        del s_img, s_txt
        x = w(1, T, C, scale=1.0).requires_grad_()
        gx = w(1, T, C, scale=1.0)
        s = Single()

        def sgl():
            single_block(x, vec, s, cos, sin).backward(gx)
        torch.cuda.reset_peak_memory_stats()
        report(f"single:{T}", median_ms(sgl))
        report(f"single_peak_mib:{T}", torch.cuda.max_memory_allocated() / 2**20)
        del s
        torch.cuda.empty_cache()
    flux_step(*depth)
    if zimage:
        zimage_step()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the C++ bench prints what it got; say why the rest is missing
        print(f"# torch bench failed: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
