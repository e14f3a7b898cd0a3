// Renders chat conversations with @huggingface/jinja (the Jinja engine of
// transformers.js) for the Go chat-template tests. Run from the repository
// root with the package installed outside the repository:
//   mkdir -p /tmp/jinja-ref && (cd /tmp/jinja-ref && npm install @huggingface/jinja@0.5.11)
//   NODE_PATH=/tmp/jinja-ref/node_modules node testdata/reference/chat_templates.mjs
// It writes testdata/reference/fixtures/chat_templates.json.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const modules = process.env.NODE_PATH || "/tmp/jinja-ref/node_modules";
const require = createRequire(path.join(modules, "x.js"));
const { Template } = require("@huggingface/jinja");
const version = JSON.parse(fs.readFileSync(path.join(modules, "@huggingface/jinja/package.json"), "utf8")).version;

// Special tokens as transformers' special_tokens_map passes them: strings,
// only the ones that are set, additional_special_tokens as a list.
function tokenString(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === "string") return v;
  if (typeof v === "object" && typeof v.content === "string") return v.content;
  return null;
}
function specialTokens(cfg) {
  const out = {};
  for (const k of ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]) {
    const s = tokenString(cfg[k]);
    if (s !== null) out[k] = s;
  }
  if (Array.isArray(cfg.additional_special_tokens)) {
    out.additional_special_tokens = cfg.additional_special_tokens.map(tokenString);
  }
  return out;
}

const templates = [
  { name: "qwen3", config: "../shared/tokenizers/qwen3/tokenizer_config.json" },
  { name: "llama3", config: "../shared/tokenizers/llama3/tokenizer_config.json" },
  { name: "stories260K-chatml", config: "../shared/models/stories260K/tokenizer_config.json", file: "testdata/chat/chatml.jinja" },
  // filters, tests and statements real templates use; a list of named templates
  { name: "features", config: "testdata/chat/features/tokenizer_config.json" },
];

function pick(t) {
  if (typeof t === "string") return t;
  return t.find((x) => x.name === "default").template;
}

const S = { role: "system", content: "You are a helpful assistant." };
const conversations = {
  "single-user": [{ role: "user", content: "Hello!" }],
  "system-user": [S, { role: "user", content: "What is 2+2?" }],
  "single-turn": [{ role: "user", content: "Name a colour." }, { role: "assistant", content: "Blue." }],
  "system-single-turn": [S, { role: "user", content: "Tell me a story." }, { role: "assistant", content: "Once upon a time, there was a cat." }],
  "multi-turn": [
    S,
    { role: "user", content: "Who is in the story?" },
    { role: "assistant", content: "Lily and her dog." },
    { role: "user", content: "Where do they go?" },
    { role: "assistant", content: "They go to the park." },
    { role: "user", content: "Why?" },
  ],
  "multi-turn-no-system": [
    { role: "user", content: "Hi" },
    { role: "assistant", content: "Hello! How can I help?" },
    { role: "user", content: "Say yes." },
    { role: "assistant", content: "Yes." },
  ],
  "thinking": [
    { role: "user", content: "What is 3*3?" },
    { role: "assistant", content: "<think>\nThree threes.\n</think>\n\n9" },
    { role: "user", content: "And 4*4?" },
    { role: "assistant", content: "<think>\nFour fours.\n</think>\n\n16" },
  ],
  "whitespace-unicode": [
    { role: "system", content: "  Réponds en français. \n" },
    { role: "user", content: "\tÇa va ? 你好 🙂\n\n" },
    { role: "assistant", content: " Oui, très bien !  " },
  ],
  "stop": [
    { role: "user", content: "go on" },
    { role: "assistant", content: "STOP here" },
    { role: "user", content: "never shown" },
  ],
  "no-user": [{ role: "system", content: "alone" }],
  "late-system": [
    { role: "user", content: "First." },
    { role: "system", content: "Be brief." },
    { role: "user", content: "Second." },
  ],
};

const cases = [];
for (const t of templates) {
  const cfg = JSON.parse(fs.readFileSync(t.config, "utf8"));
  const source = t.file ? fs.readFileSync(t.file, "utf8") : pick(cfg.chat_template);
  const tmpl = new Template(source);
  for (const [name, messages] of Object.entries(conversations)) {
    for (const gen of [false, true]) {
      const c = { template: t.name, conversation: name, add_generation_prompt: gen, messages };
      try {
        c.text = tmpl.render({ messages, tools: null, documents: null, add_generation_prompt: gen, ...specialTokens(cfg) });
      } catch (e) {
        c.error = String(e.message || e);
      }
      cases.push(c);
    }
  }
}
fs.mkdirSync("testdata/reference/fixtures", { recursive: true });
fs.writeFileSync(
  "testdata/reference/fixtures/chat_templates.json",
  JSON.stringify({ generator: `@huggingface/jinja ${version}`, cases }, null, 1) + "\n",
);
console.log(`${cases.length} renderings with @huggingface/jinja ${version}`);
