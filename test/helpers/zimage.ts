// Z-Image model folders for preparation's tests, in the real layouts by their file and tensor names (no weight
// is read there, only safetensors headers): the diffusers folder of Tongyi-MAI/Z-Image(-Turbo) and ComfyUI's
// models/ folders. Each tensor is one float: what matters is the names. The tokenizer is the trainer's own
// (graft-trainer make-tokenizers --kind qwen).
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { makeTokenizers } from './tokenizers.js';

/** A safetensors file whose tensors are the given names, one F32 each. */
export function writeNames(file: string, names: string[]): void {
  const header: Record<string, unknown> = {};
  names.forEach((n, i) => { header[n] = { dtype: 'F32', shape: [1], data_offsets: [4 * i, 4 * i + 4] }; });
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, Buffer.concat([len, json, Buffer.alloc(4 * names.length)]));
}

/** A sharded component: <stem>-0000i-of-0000n.safetensors and the index naming them. */
function writeSharded(dir: string, stem: string, names: string[], shards: number): void {
  const weightMap: Record<string, string> = {};
  for (let s = 0; s < shards; s++) {
    const file = `${stem}-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part = names.filter((_, i) => i % shards === s);
    writeNames(join(dir, file), part);
    for (const n of part) weightMap[n] = file;
  }
  writeFileSync(join(dir, `${stem}.safetensors.index.json`), JSON.stringify({ metadata: { total_size: 4 * names.length }, weight_map: weightMap }, null, 2));
}

const json = (file: string, value: unknown) => {
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, `${JSON.stringify(value, null, 2)}\n`);
};

/** The diffusers transformer's names (ZImageTransformer2DModel). */
export const DIFFUSERS_TRANSFORMER = [
  'all_x_embedder.2-1.weight', 'cap_embedder.0.weight', 'cap_embedder.1.weight', 'cap_pad_token', 'x_pad_token',
  'context_refiner.0.attention.to_q.weight', 'noise_refiner.0.attention.to_q.weight',
  'layers.0.attention.to_q.weight', 'layers.0.attention.to_k.weight', 'layers.0.adaLN_modulation.0.weight',
  't_embedder.mlp.0.weight', 'all_final_layer.2-1.linear.weight',
];
/** The original (and ComfyUI's, prefixed) transformer names: fused q/k/v. */
export const ORIGINAL_TRANSFORMER = [
  'x_embedder.weight', 'cap_embedder.0.weight', 'cap_embedder.1.weight', 'context_refiner.0.attention.qkv.weight',
  'layers.0.attention.qkv.weight', 'layers.0.attention.out.weight', 'final_layer.linear.weight',
];
/** Qwen3's names as transformers saves Qwen3Model, and as ComfyUI's qwen_3_4b.safetensors holds them. */
export const QWEN3 = ['model.embed_tokens.weight', 'model.layers.0.self_attn.q_proj.weight', 'model.layers.0.mlp.up_proj.weight', 'model.norm.weight'];
/** The autoencoder (FLUX.1's), in diffusers' names and in BFL's (ae.safetensors). */
export const VAE = ['encoder.conv_in.weight', 'encoder.mid_block.attentions.0.to_q.weight', 'decoder.conv_out.weight'];
export const AE = ['encoder.conv_in.weight', 'encoder.mid.attn_1.q.weight', 'decoder.conv_out.weight'];

export const QWEN3_CONFIG = { architectures: ['Qwen3ForCausalLM'], hidden_size: 64, num_hidden_layers: 1, vocab_size: 484, model_type: 'qwen3' };

/** A diffusers Z-Image folder as the Hub repos hold it (sharded transformer and text encoder). */
export function makeZImageDiffusers(dir: string, opts: { pipeline?: string } = {}): string {
  json(join(dir, 'model_index.json'), {
    _class_name: opts.pipeline ?? 'ZImagePipeline', _diffusers_version: '0.36.0',
    scheduler: ['diffusers', 'FlowMatchEulerDiscreteScheduler'], text_encoder: ['transformers', 'Qwen3Model'],
    tokenizer: ['transformers', 'Qwen2Tokenizer'], transformer: ['diffusers', 'ZImageTransformer2DModel'], vae: ['diffusers', 'AutoencoderKL'],
  });
  json(join(dir, 'scheduler', 'scheduler_config.json'), { _class_name: 'FlowMatchEulerDiscreteScheduler', num_train_timesteps: 1000, shift: 3.0, use_dynamic_shifting: false });
  json(join(dir, 'transformer', 'config.json'), { _class_name: 'ZImageTransformer2DModel', dim: 64, n_layers: 1 });
  writeSharded(join(dir, 'transformer'), 'diffusion_pytorch_model', DIFFUSERS_TRANSFORMER, 2);
  json(join(dir, 'text_encoder', 'config.json'), QWEN3_CONFIG);
  writeFileSync(join(dir, 'text_encoder', 'generation_config.json'), '{}\n');
  writeSharded(join(dir, 'text_encoder'), 'model', QWEN3, 2);
  json(join(dir, 'vae', 'config.json'), { _class_name: 'AutoencoderKL', latent_channels: 16 });
  writeNames(join(dir, 'vae', 'diffusion_pytorch_model.safetensors'), VAE);
  makeTokenizers(join(dir, 'tokenizer'), 'qwen');
  return dir;
}

/** ComfyUI's models/ folder: diffusion_models/z_image_turbo_bf16.safetensors, text_encoders/qwen_3_4b.safetensors, vae/ae.safetensors. */
export function makeZImageComfy(dir: string, opts: { encoder?: boolean; ae?: boolean } = {}): string {
  writeNames(join(dir, 'diffusion_models', 'z_image_turbo_bf16.safetensors'), ORIGINAL_TRANSFORMER.map((n) => `model.diffusion_model.${n}`));
  if (opts.encoder !== false) writeNames(join(dir, 'text_encoders', 'qwen_3_4b.safetensors'), QWEN3);
  if (opts.ae !== false) writeNames(join(dir, 'vae', 'ae.safetensors'), AE);
  return join(dir, 'diffusion_models', 'z_image_turbo_bf16.safetensors');
}
