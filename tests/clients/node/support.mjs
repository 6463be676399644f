// Shared helpers of the Node suite: where run.sh started things, fixtures, mock directives.
// Same conventions as support/ct.py (see there for the CT_* variables).
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { randomUUID } from "node:crypto";

export const HERE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), ".."); // tests/clients
export const CASES = JSON.parse(readFileSync(path.join(HERE, "cases.json"), "utf8")).errors;
export const MODEL = "gpt-4o-mini";
export const MESSAGES = [{ role: "user", content: "Hello!" }];
export const TIMEOUT_MS = 10_000;

export const BARE_STREAM = "bare/chat_completion_stream.sse";
export const ENVELOPE_STREAM = "envelope/chat_completion_stream.sse";
export const BARE_USAGE_STREAM = "bare/chat_completion_stream_usage.sse";
export const ENVELOPE_USAGE_STREAM = "clients/envelope_chat_completion_stream_usage.sse"; // generated

export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the suite through tests/clients/run.sh`);
  return value;
}

/** Origin of the proxy `bare`, `envelope` or `wrap`. */
export const proxy = (name) => env(`CT_PROXY_${name.toUpperCase()}`);
export const mock = (shape) => env(`CT_MOCK_${shape.toUpperCase()}`);

export const fixtureText = (rel) => readFileSync(path.join(env("CT_FIXTURES"), rel), "utf8");
export const fixtureJSON = (rel) => JSON.parse(fixtureText(rel));

/** The `data:` payload of every event of an SSE fixture. */
export function sseData(text) {
  const out = [];
  for (const event of text.split("\n\n")) {
    for (const line of event.split("\n")) {
      if (line.startsWith("data:")) out.push(line.slice(5).replace(/^ /, ""));
    }
  }
  return out;
}

/** The chunk objects of a stream fixture (envelopes unwrapped), [DONE] and error events left out. */
export function fixtureChunks(rel) {
  const chunks = [];
  for (const data of sseData(fixtureText(rel))) {
    if (data === "[DONE]") continue;
    const obj = JSON.parse(data);
    if (obj.success === false || "error" in obj) continue;
    chunks.push("success" in obj && "data" in obj ? obj.data : obj);
  }
  return chunks;
}

export const contentOf = (chunks) =>
  chunks.flatMap((c) => c.choices ?? []).map((ch) => ch.delta?.content ?? "").join("");

export const completionContent = () => fixtureJSON("bare/chat_completion.json").choices[0].message.content;

export const newKey = (label) => `${label}-${randomUUID()}`;

/** How many requests with x-mock-key: key the mock upstream of `shape` received. */
export async function attempts(shape, key) {
  const r = await fetch(`${mock(shape)}/__mock/attempts?key=${encodeURIComponent(key)}`, {
    signal: AbortSignal.timeout(TIMEOUT_MS),
  });
  return (await r.json()).attempts;
}

/** x-mock-* request headers for the mock upstream (the proxy forwards them). */
export function directives({ fixture, status, header, behaviour, key, failFirst } = {}) {
  const h = {};
  if (fixture !== undefined) h["x-mock-fixture"] = fixture;
  if (status !== undefined) h["x-mock-status"] = String(status);
  if (header !== undefined) h["x-mock-header"] = header;
  if (behaviour !== undefined) h["x-mock-behaviour"] = behaviour;
  if (key !== undefined) h["x-mock-key"] = key;
  if (failFirst !== undefined) h["x-mock-fail-first"] = String(failFirst);
  return h;
}

/** A byte offset in the middle of the third event of a stream fixture (for reset-mid-body). */
export function cutInThirdEvent(rel) {
  const events = readFileSync(path.join(env("CT_FIXTURES"), rel)).toString("latin1").split("\n\n");
  return events[0].length + 2 + events[1].length + 2 + 40;
}

export const TRUNCATED_MESSAGE =
  "the upstream closed the stream early, before `data: [DONE]`; the answer may be incomplete";
export const truncatedError = () => ({
  message: TRUNCATED_MESSAGE,
  type: "upstream_error",
  param: null,
  code: "stream_truncated",
});
export const BROKEN_PREFIX = "the upstream stream broke before it finished (";
export const BROKEN_SUFFIX = "); the answer is incomplete";

export const readme = () => readFileSync(path.join(env("CT_ROOT"), "README.md"), "utf8");

/** The README text under `heading` (a full heading line) up to the next heading of the same or a higher level. */
export function readmeSection(heading) {
  const lines = readme().split("\n");
  const level = heading.match(/^#+/)[0].length;
  const start = lines.indexOf(heading);
  if (start < 0) throw new Error(`README.md has no heading ${JSON.stringify(heading)}`);
  const out = [];
  let inFence = false;
  for (const line of lines.slice(start + 1)) {
    if (line.startsWith("```")) inFence = !inFence;
    const m = line.match(/^(#+) /);
    if (!inFence && m && m[1].length <= level) break;
    out.push(line);
  }
  return out.join("\n");
}

/** Contents of the ```lang fenced blocks in text. */
export function fencedBlocks(text, lang) {
  const blocks = [];
  let current = null;
  for (const line of text.split("\n")) {
    if (current === null && line.trim() === "```" + lang) current = [];
    else if (current !== null && line.trim() === "```") {
      blocks.push(current.join("\n"));
      current = null;
    } else if (current !== null) current.push(line);
  }
  return blocks;
}
