// Z-Image's captions as ZImagePipeline hands them to Qwen3: one user message through the tokenizer folder's chat
// template (add_generation_prompt, enable_thinking), then Qwen's byte-level BPE, cut to 512 on the right and
// padded with <|endoftext|>. The folder is the trainer's own (graft-trainer make-tokenizers --kind qwen). The
// rendered text is compared character for character, and with Python's Jinja where one is installed; the ids
// are checked against tokens spelled by hand and looked up in vocab.json as data, and decoded back to the
// text through GPT-2's byte table written out here, independently of the tokenizer library.
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { captionProblems } from '../src/datasets/checks.js';
import { ChatTemplate, type ChatMessage } from '../src/prepare/chatTemplate.js';
import { PrepareError } from '../src/prepare/errors.js';
import { TextTokenizers } from '../src/prepare/textTokenizers.js';
import type { TokenizerFiles } from '../src/prepare/tokenizerFiles.js';
import { zimageTokenizer } from '../src/prepare/zimageTokenizers.js';
import { tempDir } from './helpers/dataset.js';
import { makeTokenizers } from './helpers/tokenizers.js';

let root: string;
let folder: string;
let tokDir: string;
let vocab: Record<string, number>;
beforeAll(() => {
  root = tempDir('graft-qwen-');
  folder = join(root, 'zimage');
  tokDir = join(folder, 'tokenizer');
  makeTokenizers(tokDir, 'qwen');
  vocab = JSON.parse(readFileSync(join(tokDir, 'vocab.json'), 'utf8')) as Record<string, number>;
  // The added tokens live in tokenizer_config.json's added_tokens_decoder, as transformers saves them.
  const config = JSON.parse(readFileSync(join(tokDir, 'tokenizer_config.json'), 'utf8')) as { added_tokens_decoder: Record<string, { content: string }> };
  for (const [id, t] of Object.entries(config.added_tokens_decoder)) vocab[t.content] = Number(id);
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

const user = (content: string): ChatMessage[] => [{ role: 'user', content }];
const template = () => ChatTemplate.load(zimageTokenizer(folder).source);
const prompt = (caption: string, enableThinking = true) => template().render(user(caption), { addGenerationPrompt: true, variables: { enable_thinking: enableThinking } });

describe('the chat template (tokenizer_config.json chat_template, @huggingface/jinja)', () => {
  it('renders a caption as ZImagePipeline asks: one user turn, the assistant turn opened, thinking left on', () => {
    expect(prompt('a red star')).toBe('<|im_start|>user\na red star<|im_end|>\n<|im_start|>assistant\n');
    expect(prompt('')).toBe('<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n');
    expect(prompt('two\nlines, "quoted" {{ not jinja }}')).toBe('<|im_start|>user\ntwo\nlines, "quoted" {{ not jinja }}<|im_end|>\n<|im_start|>assistant\n');
  });

  it('enable_thinking false closes an empty think block; without the generation prompt the chat just ends', () => {
    expect(prompt('a red star', false)).toBe('<|im_start|>user\na red star<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n');
    expect(prompt('', false)).toBe('<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n');
    expect(template().render(user('hi'), { addGenerationPrompt: false })).toBe('<|im_start|>user\nhi<|im_end|>\n');
  });

  it('walks the turns with their roles; an answer before the last question loses its thinking (namespace, loop.index0)', () => {
    const chat: ChatMessage[] = [
      { role: 'system', content: 'S' }, { role: 'user', content: 'q1' }, { role: 'assistant', content: '<think>\nhm\n</think>\n\nA1' },
      { role: 'user', content: 'q2' }, { role: 'assistant', content: '<think>x</think>A2' },
    ];
    expect(template().render(chat, { addGenerationPrompt: false })).toBe(
      '<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n' +
      '<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n<think>x</think>A2<|im_end|>\n');
  });

  it('gets the variables transformers passes: the special tokens set in the folder (bos_token is null there), messages, tools None', () => {
    const jinja = join(root, 'probe.jinja');
    writeFileSync(jinja, '{{ bos_token is defined }}|{{ eos_token }}|{{ pad_token }}|{{ additional_special_tokens | join(",") }}|' +
      '{{ tools is none }}|{{ messages | length }}|{{ add_generation_prompt }}|{{ enable_thinking }}');
    const probe = ChatTemplate.load({ ...zimageTokenizer(folder).source, chatTemplate: jinja });
    expect(probe.render(user('x'), { addGenerationPrompt: true, variables: { enable_thinking: true } })).toBe('false|<|im_end|>|<|endoftext|>|<|im_start|>,<|im_end|>|true|1|true|true');
  });

  it('a chat_template.jinja beside tokenizer_config.json wins (as in transformers); a list of named templates gives "default"', () => {
    expect(zimageTokenizer(folder).source).not.toHaveProperty('chatTemplate');
    const jinjaDir = join(root, 'with-jinja');
    makeTokenizers(join(jinjaDir, 'tokenizer'), 'qwen');
    writeFileSync(join(jinjaDir, 'tokenizer', 'chat_template.jinja'), '{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}{% if add_generation_prompt %} =>{% endif %}\n');
    const withJinja = zimageTokenizer(jinjaDir);
    expect(withJinja.source).toMatchObject({ chatTemplate: join(jinjaDir, 'tokenizer', 'chat_template.jinja') });
    // Jinja drops the template's last newline (keep_trailing_newline is off).
    expect(ChatTemplate.load(withJinja.source).render(user('a cat'), { addGenerationPrompt: true })).toBe('[user] a cat =>');

    const dir = join(root, 'named-templates');
    makeTokenizers(dir, 'qwen');
    const config = join(dir, 'tokenizer_config.json');
    const c = JSON.parse(readFileSync(config, 'utf8'));
    writeFileSync(config, JSON.stringify({ ...c, chat_template: [{ name: 'tool_use', template: 'tools' }, { name: 'default', template: '<{{ messages[0].content }}>' }] }));
    expect(ChatTemplate.load({ tokenizerJson: join(dir, 'tokenizer.json'), tokenizerConfig: config }).render(user('a'), { addGenerationPrompt: true })).toBe('<a>');
  });

  it('no template, or one that does not parse, is one line naming the file', () => {
    const dir = join(root, 'no-template');
    makeTokenizers(dir, 'qwen');
    const config = join(dir, 'tokenizer_config.json');
    const { chat_template: _dropped, ...rest } = JSON.parse(readFileSync(config, 'utf8'));
    writeFileSync(config, JSON.stringify(rest));
    const source = { tokenizerJson: join(dir, 'tokenizer.json'), tokenizerConfig: config };
    expect(() => ChatTemplate.load(source)).toThrow(new PrepareError(`${config}: no chat_template (and no chat_template.jinja beside it): the model's prompts are written through it; take tokenizer_config.json from the model's own tokenizer folder`));
    expect(() => ChatTemplate.parse('{% for m in messages %}', 'broken.jinja')).toThrow(/^broken\.jinja: the chat template does not parse: /);
    expect(() => ChatTemplate.parse('{{ raise_exception("no system role") }}', 't.jinja').render(user('x'), { addGenerationPrompt: true })).toThrow('t.jinja: the chat template failed: no system role');
  });

  // Python's Jinja (what transformers renders with; Debian's python3-jinja2, which `make` installs): the same text,
  // conversation by conversation.
  it('renders exactly as Python\'s jinja2 does with transformers\' settings (trim_blocks, lstrip_blocks, sandboxed)', () => {
    const cases = [
      { messages: user('a red star'), add_generation_prompt: true, enable_thinking: true },
      { messages: user(''), add_generation_prompt: true, enable_thinking: false },
      { messages: [{ role: 'system', content: 'S' }, { role: 'user', content: 'q1' }, { role: 'assistant', content: '<think>\nhm\n</think>\n\nA1' }, { role: 'user', content: 'q2' }], add_generation_prompt: true, enable_thinking: true },
      // A tool's answer in a user turn is not the last question: the assistant turn before it keeps its thinking.
      { messages: [{ role: 'user', content: 'q1' }, { role: 'assistant', content: '<think>\nhm\n</think>\n\nA1' }, { role: 'user', content: '<tool_response>42</tool_response>' }], add_generation_prompt: false, enable_thinking: true },
    ];
    const script = [
      'import json, sys',
      'from jinja2.sandbox import ImmutableSandboxedEnvironment',
      'config, cases = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))',
      't = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(config["chat_template"])',
      'print(json.dumps([t.render(tools=None, documents=None, eos_token=config["eos_token"], pad_token=config["pad_token"], **c) for c in cases]))',
    ].join('\n');
    const casesFile = join(root, 'cases.json');
    writeFileSync(casesFile, JSON.stringify(cases));
    const r = spawnSync('/usr/bin/python3', ['-c', script, join(tokDir, 'tokenizer_config.json'), casesFile], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const ours = cases.map((c) => template().render(c.messages, { addGenerationPrompt: c.add_generation_prompt, variables: { enable_thinking: c.enable_thinking } }));
    expect(ours).toEqual(JSON.parse(r.stdout));
  });
});

/** GPT-2's byte table (bytes_to_unicode), written out: a token's characters back to its bytes. */
function byteOf(): Map<string, number> {
  const printable = [...Array(256).keys()].filter((b) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff));
  const map = new Map<string, number>(printable.map((b) => [String.fromCharCode(b), b]));
  let n = 0;
  for (let b = 0; b < 256; b++) if (!printable.includes(b)) map.set(String.fromCharCode(256 + n++), b);
  return map;
}

/** Ids back to text: each id's token from the files, special tokens as they are, other characters through the byte table. */
function decode(ids: number[]): string {
  const byId = new Map(Object.entries(vocab).map(([t, id]) => [id, t]));
  const bytes = byteOf();
  const specials = new Set(['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<think>', '</think>']);
  // A character's bytes may span tokens: bytes are gathered up to the next special token, then read as UTF-8.
  let out = '';
  let pending: number[] = [];
  const flush = () => { out += Buffer.from(pending).toString('utf8'); pending = []; };
  for (const id of ids) {
    const token = byId.get(id)!;
    if (specials.has(token)) { flush(); out += token; } else pending.push(...[...token].map((c) => bytes.get(c)!));
  }
  flush();
  return out;
}

const load = (over: Partial<TokenizerFiles> = {}) => TextTokenizers.load([{ ...zimageTokenizer(folder), ...over }]);
let loaded: TextTokenizers | undefined;
/** The folder's tokenizer, loaded once (or the one of another set). */
const qwen = (set?: TextTokenizers) => (set ?? (loaded ??= load())).encoders[0]!.tokenizer;

/** Ids of hand-spelled tokens, padded with <|endoftext|> to 512. */
function ids(tokens: string[], maxLen = 512): number[] {
  const out = tokens.map((t) => { expect(vocab[t], t).toBeDefined(); return vocab[t]!; });
  while (out.length < maxLen) out.push(vocab['<|endoftext|>']!);
  return out;
}
/** What the trainer reads of a prompt: 1 + the index of its last id that is not the pad id. */
const promptLength = (got: number[], pad: number) => got.length - [...got].reverse().findIndex((id) => id !== pad);
const OPEN = ['<|im_start|>', 'user', 'Ċ'];
const CLOSE = ['<|im_end|>', 'Ċ', '<|im_start|>', 'assistant', 'Ċ'];

describe('Qwen tokens (Z-Image tokenizer/, as ZImagePipeline tokenizes)', () => {
  it('the special tokens are the largest ids, in Qwen\'s order; byte characters sit where Qwen\'s do', () => {
    const largest = Object.values(vocab).sort((a, b) => b - a).slice(0, 5).reverse();
    expect(['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<think>', '</think>'].map((t) => vocab[t])).toEqual(largest);
    // As in Qwen's vocabulary: "!" 0, "a" 64, "," 11, "Ċ" (newline) 198, "Ġ" (space) 220.
    expect([vocab['!'], vocab.a, vocab[','], vocab['Ċ'], vocab['Ġ']]).toEqual([0, 64, 11, 198, 220]);
    expect(qwen().padId).toBe(vocab['<|endoftext|>']);
  });

  it('a caption: chat tokens around it, words after a space whole, padded with <|endoftext|> to 512', () => {
    const got = qwen().encode('a red star');
    expect(got).toEqual(ids([...OPEN, 'a', 'Ġred', 'Ġstar', ...CLOSE]));
    expect(decode(got.slice(0, 11))).toBe(prompt('a red star'));
    expect(promptLength(got, qwen().padId)).toBe(11);
    expect(qwen().encode('')).toEqual(ids([...OPEN, ...CLOSE]));
  });

  it('every caption word after a space is one token; other text is spelled in bytes and decodes back', () => {
    const words = Object.keys(vocab).filter((t) => /^Ġ[a-z]{2,}$/.test(t));
    expect(words.length).toBeGreaterThan(40);
    for (const w of words) expect(qwen().encode(`x ${w.slice(1)}`), w).toEqual(ids([...OPEN, 'x', w, ...CLOSE]));
    for (const text of ['zxq, a Red STAR!', 'café crème 日本 🌟', 'tab\there  two  spaces\n\nnew lines', "it's 123", '<think> stays text? no: a token']) {
      const got = qwen().encode(text);
      const len = promptLength(got, qwen().padId);
      expect(decode(got.slice(0, len)), text).toBe(prompt(text));
      expect(got.slice(len).every((id) => id === qwen().padId)).toBe(true);
    }
  });

  it('enable_thinking false adds the empty think block\'s tokens', () => {
    const set = load({ chat: { enableThinking: false } });
    expect(qwen(set).encode('a red star')).toEqual(ids([...OPEN, 'a', 'Ġred', 'Ġstar', ...CLOSE, '<think>', 'ĊĊ', '</think>', 'ĊĊ']));
  });

  it('cuts at 512 on the right as the pipeline does: the caption\'s start is kept, the chat\'s end is lost', () => {
    // 3 + (1 + k) + 5 tokens: k = 503 fills 512 exactly.
    const fits = `a${' red'.repeat(503)}`;
    expect(qwen().encode(fits)).toEqual(ids([...OPEN, 'a', ...Array(503).fill('Ġred'), ...CLOSE]));
    expect(qwen().encode(`a${' red'.repeat(502)}`).at(-1)).toBe(qwen().padId);
    const long = `a${' red'.repeat(600)}`;
    expect(qwen().encode(long)).toEqual(ids([...OPEN, 'a', ...Array(508).fill('Ġred')]));
    const set = load();
    expect(set.lengths(long)).toEqual([{ name: 'qwen3', count: 609, max: 512 }]);
    expect(captionProblems(long, set.lengths(long))).toEqual(['caption is 609 tokens; the text encoder reads 512: the rest is cut']);
    expect(captionProblems(fits, set.lengths(fits))).toEqual([]);
  });

  it('job.json\'s text: the qwen3 encoder\'s length and pad id, the empty prompt; every token field keyed by encoder', () => {
    const set = load();
    expect(set.textSection()).toEqual({ encoders: { qwen3: { max_len: 512, pad_id: vocab['<|endoftext|>'] } }, empty_tokens: { qwen3: ids([...OPEN, ...CLOSE]) } });
    expect(set.encode('a red star')).toEqual({ qwen3: ids([...OPEN, 'a', 'Ġred', 'Ġstar', ...CLOSE]) });
  });

  it('a folder without its pad token, or a tokenizer that is not BPE, is named', () => {
    const dir = join(root, 'no-pad');
    makeTokenizers(join(dir, 'tokenizer'), 'qwen');
    const config = join(dir, 'tokenizer', 'tokenizer_config.json');
    writeFileSync(config, JSON.stringify({ ...JSON.parse(readFileSync(config, 'utf8')), pad_token: null }));
    expect(() => TextTokenizers.load([zimageTokenizer(dir)])).toThrow(new PrepareError(`${config}: no pad_token: the prompt is padded with it (Qwen's is <|endoftext|>)`));
    const t5 = join(root, 't5');
    makeTokenizers(t5, 't5');
    expect(() => TextTokenizers.load([{ ...zimageTokenizer(folder), source: { tokenizerJson: join(t5, 'tokenizer.json'), tokenizerConfig: join(tokDir, 'tokenizer_config.json') } }]))
      .toThrow(`${join(t5, 'tokenizer.json')}: model.type is "Unigram", not the BPE model of a Qwen tokenizer`);
    expect(() => zimageTokenizer(join(root, 'nowhere'))).toThrow(`tokenizer.json is missing from ${join(root, 'nowhere', 'tokenizer')} (Z-Image's Qwen3 tokenizer: tokenizer.json and tokenizer_config.json)`);
  });
});
