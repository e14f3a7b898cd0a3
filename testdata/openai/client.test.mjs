// The real `openai` npm client against a running `dllm serve` (see
// scripts/openai-client-test.sh, which installs the package in a temporary
// folder and sets DLLM_URL, DLLM_KEY, DLLM_BIN, DLLM_MODEL, OPENAI_DIR).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';

const require = createRequire(process.env.OPENAI_DIR + '/');
const mod = require('openai');
const OpenAI = mod.default ?? mod;
const client = new OpenAI({ baseURL: process.env.DLLM_URL, apiKey: process.env.DLLM_KEY, maxRetries: 0 });

// `dllm generate --stop-at-eos` with the same settings: its ids (--json)
// and its printed text (prompt and sample decoded together).
function generate(prompt, flags) {
  const args = ['generate', process.env.DLLM_MODEL, '--prompt', prompt, '--stop-at-eos', '--device', 'cpu', '--threads', '1', ...flags];
  const ids = JSON.parse(execFileSync(process.env.DLLM_BIN, [...args, '--json'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString());
  const text = execFileSync(process.env.DLLM_BIN, args, { stdio: ['ignore', 'pipe', 'ignore'] }).toString().replace(/\n$/, '');
  return { ids: ids.samples.map((s) => s.ids), text };
}

const cases = [
  [{ prompt: 'Once upon a time', max_tokens: 16, steps: 8, seed: 3, temperature: 0.7 },
    ['--gen-len', '16', '--steps', '8', '--seed', '3', '--temperature', '0.7']],
  [{ prompt: 'The little bird', max_tokens: 12, steps: 12, block_length: 4, alg: 'margin', top_p: 0.9, temperature: 1, seed: 9 },
    ['--gen-len', '12', '--steps', '12', '--block-len', '4', '--alg', 'margin', '--top-p', '0.9', '--temperature', '1', '--seed', '9']],
  [{ prompt: 'Lily', max_tokens: 16, steps: 16, threshold: 0.2 }, ['--gen-len', '16', '--steps', '16', '--threshold', '0.2']],
];

const complete = (body) => client.completions.create({ model: 'tiny', return_token_ids: true, ...body });

test('models lists the served model', async () => {
  const list = await client.models.list();
  assert.deepEqual(list.data.map((m) => m.id), ['tiny']);
});

test('completions equal dllm generate', async () => {
  for (const [body, flags] of cases) {
    const want = generate(body.prompt, flags);
    const got = await complete({ ...body, echo: true });
    assert.deepEqual(got.choices[0].token_ids, want.ids[0], JSON.stringify(body));
    assert.equal(got.choices[0].text, want.text, JSON.stringify(body));
    assert.equal(got.object, 'text_completion');
    assert.equal(got.usage.completion_tokens, want.ids[0].length);
  }
});

test('concurrent requests equal sequential ones', async () => {
  const bodies = [];
  for (let seed = 0; seed < 8; seed++) {
    bodies.push({ prompt: seed % 2 ? 'Once upon a time' : 'Max liked the sea', max_tokens: 12, temperature: 0.9, seed });
  }
  const seq = [];
  for (const b of bodies) seq.push(await complete(b));
  const par = await Promise.all(bodies.map(complete));
  for (let i = 0; i < bodies.length; i++) {
    assert.deepEqual(par[i].choices[0].token_ids, seq[i].choices[0].token_ids, `request ${i}`);
    assert.equal(par[i].choices[0].text, seq[i].choices[0].text);
  }
  assert.ok(par.some((r) => r.dllm.batch_rows > 1), 'no request was batched with another');
});

test('a stream concatenates to the plain answer', async () => {
  const body = { prompt: 'Once upon a time', max_tokens: 24, block_length: 4, temperature: 0.8, seed: 5, n: 2 };
  const plain = await complete(body);
  const stream = await client.completions.create({ model: 'tiny', ...body, stream: true });
  const text = ['', ''];
  let chunks = 0;
  const finish = [];
  for await (const c of stream) {
    chunks++;
    for (const ch of c.choices) {
      text[ch.index] += ch.text;
      if (ch.finish_reason) finish[ch.index] = ch.finish_reason;
    }
  }
  for (const i of [0, 1]) {
    assert.equal(text[i], plain.choices[i].text);
    assert.equal(finish[i], plain.choices[i].finish_reason);
  }
  assert.ok(chunks >= 3, `only ${chunks} chunks: not streamed block by block`);

  const msgs = [{ role: 'user', content: 'Tell me about Max' }];
  const chat = await client.chat.completions.create({ model: 'tiny', messages: msgs, max_tokens: 16, seed: 2, temperature: 0.5 });
  let content = '';
  for await (const c of await client.chat.completions.create({ model: 'tiny', messages: msgs, max_tokens: 16, seed: 2, temperature: 0.5, stream: true })) {
    content += c.choices[0]?.delta?.content ?? '';
  }
  assert.equal(content, chat.choices[0].message.content);
  assert.equal(chat.choices[0].message.role, 'assistant');
});

test('bad requests get 4xx with an error object', async () => {
  const bad = [
    [{ prompt: 'hi', max_tokens: -1 }, 400, 'max_tokens'],
    [{ prompt: 'hi', temperature: 'hot' }, 400, 'temperature'],
    [{ prompt: 'hi', n: 0 }, 400, 'n'],
    [{ prompt: 'hi', seed: -1 }, 400, 'seed'],
    [{ prompt: 'hi', steps: -3 }, 400, 'steps'],
    [{ prompt: ['a', 'b'] }, 400, 'prompt'],
    [{ prompt: 'hi', model: 'gpt-4' }, 404, null],
  ];
  for (const [body, status, param] of bad) {
    await assert.rejects(client.completions.create({ model: 'tiny', ...body }), (err) => {
      assert.ok(err instanceof OpenAI.APIError, `${JSON.stringify(body)}: ${err}`);
      assert.equal(err.status, status, JSON.stringify(body));
      assert.ok(err.error?.message, 'no error message');
      if (param) assert.equal(err.param, param);
      return true;
    });
  }
  const wrongKey = new OpenAI({ baseURL: process.env.DLLM_URL, apiKey: 'wrong', maxRetries: 0 });
  await assert.rejects(wrongKey.models.list(), (err) => err.status === 401);
});

test('a client that hangs up mid-stream does not hurt the next request', async () => {
  const body = { prompt: 'Once upon a time', max_tokens: 16, temperature: 0.7, seed: 4 };
  const before = await complete(body);
  const ctrl = new AbortController();
  const stream = await client.completions.create({ model: 'tiny', prompt: 'The end', max_tokens: 200, steps: 200, block_length: 4, stream: true },
    { signal: ctrl.signal });
  let n = 0;
  try {
    for await (const _ of stream) {
      if (++n === 1) ctrl.abort();
    }
  } catch (err) {
    // The client may end the iteration quietly or with an abort error.
    assert.ok(err instanceof OpenAI.APIUserAbortError || err.name === 'AbortError', String(err));
  }
  assert.equal(n, 1);
  const after = await complete(body);
  assert.deepEqual(after.choices[0].token_ids, before.choices[0].token_ids);
  const health = await (await fetch(process.env.DLLM_URL.replace(/\/v1$/, '/health'))).json();
  assert.equal(health.status, 'ok');
});
