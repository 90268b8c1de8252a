// A tokenizer folder's chat template, rendered as transformers' apply_chat_template(tokenize=False) renders
// it: the folder's chat_template.jinja if it has one, else tokenizer_config.json's chat_template (a
// template, or a list of named ones: "default"); Jinja with trim_blocks and lstrip_blocks (both are what
// @huggingface/jinja always does, as transformers sets them); the variables messages, tools and documents
// (None), add_generation_prompt, the folder's special tokens (bos_token, eos_token, ... as strings, each
// only when set) and the caller's own (enable_thinking). Pipelines that prompt a chat model (ZImagePipeline
// with Qwen3) tokenize this text, so it must match the Python rendering character for character.
import { existsSync, readFileSync } from 'node:fs';
import { Template } from '@huggingface/jinja';
import { PrepareError } from './errors.js';
import { readTokenizerJson } from './tokenizer.js';
import type { TokenizerSource } from './tokenizerFiles.js';
import { tokenizerSettings } from './tokenizerSettings.js';

export interface ChatMessage {
  role: string;
  content: string;
}

/** The template text of a folder and the file it came from (for messages). */
export function readChatTemplate(source: TokenizerSource): { template: string; file: string } {
  if (source.chatTemplate && existsSync(source.chatTemplate)) {
    return { template: readFileSync(source.chatTemplate, 'utf8'), file: source.chatTemplate };
  }
  const file = source.tokenizerConfig;
  if (!file) throw new PrepareError(`${'tokenizerJson' in source ? source.tokenizerJson : source.vocab}: the tokenizer folder has no tokenizer_config.json or chat_template.jinja, where its chat template would be`);
  const value = readTokenizerJson(file, 'it holds the chat template').chat_template;
  if (typeof value === 'string' && value.trim() !== '') return { template: value, file };
  // transformers also saves several named templates as a list; apply_chat_template takes "default".
  if (Array.isArray(value)) {
    const named = value.find((t) => t !== null && typeof t === 'object' && (t as { name?: unknown }).name === 'default') as { template?: unknown } | undefined;
    if (typeof named?.template === 'string') return { template: named.template, file };
  }
  throw new PrepareError(`${file}: no chat_template (and no chat_template.jinja beside it): the model's prompts are written through it; take tokenizer_config.json from the model's own tokenizer folder`);
}

/** The special tokens transformers passes a template (its special_tokens_map), as strings, each only when set. */
function specialTokens(source: TokenizerSource): Record<string, unknown> {
  const s = tokenizerSettings(source);
  const out: Record<string, unknown> = {};
  for (const key of ['bos', 'eos', 'unk', 'sep', 'pad', 'cls', 'mask'] as const) if (s[key] !== undefined) out[`${key}_token`] = s[key];
  if (s.additional?.length) out.additional_special_tokens = s.additional;
  return out;
}

export class ChatTemplate {
  private constructor(
    private readonly compiled: Template,
    /** Where the template came from, for messages. */
    readonly file: string,
    private readonly specials: Record<string, unknown>,
  ) {}

  /** A template as text (tests, or a folder's file read by the caller), with the special tokens it is rendered with. */
  static parse(template: string, file: string, specials: Record<string, unknown> = {}): ChatTemplate {
    try {
      return new ChatTemplate(new Template(template), file, specials);
    } catch (err) {
      throw new PrepareError(`${file}: the chat template does not parse: ${(err as Error).message}`);
    }
  }

  /** The template of a tokenizer folder, with the folder's special tokens. */
  static load(source: TokenizerSource): ChatTemplate {
    const { template, file } = readChatTemplate(source);
    return ChatTemplate.parse(template, file, specialTokens(source));
  }

  /** The text of a conversation: apply_chat_template(messages, tokenize=False, add_generation_prompt=..., **variables). */
  render(messages: ChatMessage[], opts: { addGenerationPrompt: boolean; variables?: Record<string, unknown> }): string {
    try {
      return this.compiled.render({
        ...this.specials,
        messages, tools: null, documents: null, add_generation_prompt: opts.addGenerationPrompt,
        ...opts.variables,
      });
    } catch (err) {
      throw new PrepareError(`${this.file}: the chat template failed: ${(err as Error).message}`);
    }
  }
}
