// openai-node through the proxy's /v1, in front of a bare and an envelope upstream.
// The same checks as python/test_openai_python.py, with the Node SDK's own names
// (err.requestID, completion._request_id, withResponse().request_id, err.error).
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync, readFileSync } from "node:fs";
import path from "node:path";
import OpenAI from "openai";
import * as ct from "./support.mjs";

const SHAPES = ["bare", "envelope"];

/** An SDK client on the proxy in front of the `shape` upstream. Retries off unless a test counts them. */
function client(shape, opts = {}) {
  return new OpenAI({
    baseURL: `${ct.proxy(shape)}/v1`,
    apiKey: "sk-test",
    timeout: ct.TIMEOUT_MS,
    maxRetries: 0,
    ...opts,
  });
}

/** The SDK's own exponential backoff (0.5 s, 1 s, …) shortened to 10 ms. Only the delay changes:
 * which responses are retried, and how often, is still the SDK's own rule. */
class FastBackoffOpenAI extends OpenAI {
  calculateDefaultRetryTimeoutMillis() {
    return 10;
  }
}
const fastClient = (shape, opts = {}) =>
  new FastBackoffOpenAI({ baseURL: `${ct.proxy(shape)}/v1`, apiKey: "sk-test", timeout: ct.TIMEOUT_MS, ...opts });

const create = (c, headers = {}, body = {}) =>
  c.chat.completions.create({ model: ct.MODEL, messages: ct.MESSAGES, ...body }, { headers });

/** Iterates a stream to its end; on an exception, the chunks so far are on it as `chunksBefore`. */
async function collect(stream) {
  const got = [];
  try {
    for await (const chunk of stream) got.push(chunk);
  } catch (e) {
    e.chunksBefore = got;
    throw e;
  }
  return got;
}

/** The exception a promise rejects with (fails if it resolves). */
async function rejection(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  assert.fail("expected an exception");
}

// === Completions ===

describe("completions", () => {
  for (const shape of SHAPES) {
    test(`${shape}: the completion is the upstream completion`, async () => {
      const completion = await create(client(shape));
      assert.equal(completion.choices[0].message.content, ct.completionContent());
      assert.deepEqual(completion, ct.fixtureJSON("bare/chat_completion.json"));
    });

    test(`${shape}: models and embeddings are the upstream ones`, async () => {
      const c = client(shape);
      const models = await c.models.list();
      assert.deepEqual(models.data, ct.fixtureJSON("bare/models.json").data);
      const embeddings = await c.embeddings.create({ model: "text-embedding-3-small", input: ["hi", "there"] });
      assert.deepEqual(embeddings, ct.fixtureJSON("bare/embeddings.json"));
    });

    test(`${shape}: a stream has the upstream chunks`, async () => {
      const chunks = await collect(await create(client(shape), {}, { stream: true }));
      assert.deepEqual(chunks, ct.fixtureChunks(ct.BARE_STREAM));
      assert.equal(ct.contentOf(chunks), "Hello! 👋 How can I help you today?");
      assert.equal(chunks.at(-1).choices[0].finish_reason, "stop");
    });

    test(`${shape}: a stream with include_usage ends with the usage chunk`, async () => {
      const headers = shape === "bare" ? {} : ct.directives({ fixture: ct.ENVELOPE_USAGE_STREAM });
      const chunks = await collect(
        await create(client(shape), headers, { stream: true, stream_options: { include_usage: true } }),
      );
      const expected = ct.fixtureChunks(ct.BARE_USAGE_STREAM);
      assert.deepEqual(chunks, expected);
      assert.deepEqual(chunks.at(-1).choices, []);
      assert.deepEqual(chunks.at(-1).usage, expected.at(-1).usage);
      assert.equal(chunks.at(-1).usage.total_tokens, 29);
    });
  }

  for (const [shape, fixture, expected] of [
    ["bare", "bare/chat_completion_stream_azure.sse", "bare/chat_completion_stream_azure.sse"],
    ["envelope", "envelope/chat_completion_stream_mixed.sse", ct.BARE_STREAM],
  ]) {
    test(`${shape}: ${fixture} reaches the SDK unchanged`, async () => {
      const chunks = await collect(await create(client(shape), ct.directives({ fixture }), { stream: true }));
      assert.deepEqual(chunks, ct.fixtureChunks(expected));
    });
  }
});

// === Errors ===

// What openai-node exposes for a bare upstream's non-OpenAI JSON error bodies, which reach it byte
// for byte (README: bare → bare JSON errors pass unchanged). The SDK takes body.error, or the whole
// body when it has no `error` member; the message is error.message, else the error's JSON.
const NODE_RAW = {
  vllm_400: () => {
    const error = ct.fixtureJSON("errors/vllm_400.json");
    return { error, message: `400 ${error.message}`, code: 400, type: "BadRequestError" };
  },
  fastapi_detail_string_401: () => ({
    error: { detail: "Not authenticated" },
    message: '401 {"detail":"Not authenticated"}',
    code: undefined,
    type: undefined,
  }),
  fastapi_detail_list_422: () => {
    const error = ct.fixtureJSON("errors/fastapi_detail_list.json");
    return { error, message: `422 ${JSON.stringify(error)}`, code: undefined, type: undefined };
  },
  // {"error":"<string>","error_type":…}: the string is the error; the message is its JSON.
  tgi_422: () => {
    const error = ct.fixtureJSON("errors/tgi_error.json").error;
    return { error, message: `422 ${JSON.stringify(error)}`, code: undefined, type: undefined };
  },
};

function expectedError(shape, c) {
  if (shape === "bare" && c.bare_passthrough === "raw") return NODE_RAW[c.id]();
  // The upstream's own object (as it wrote it) on a bare upstream, else the proxy's normalised one.
  const error = shape === "bare" && c.bare_passthrough === "openai" ? ct.fixtureJSON(c.fixture).error : c.error;
  return { error, message: `${c.status} ${error.message}`, code: error.code, type: error.type };
}

describe("errors", () => {
  for (const c of ct.CASES) {
    for (const shape of c.shapes) {
      test(`${shape}: ${c.id} -> ${c.class}`, async () => {
        const err = await rejection(
          create(client(shape), ct.directives({ fixture: c.fixture, status: c.upstream_status })),
        );
        assert.equal(err.constructor, OpenAI[c.class]);
        assert.equal(err.status, c.status);
        const want = expectedError(shape, c);
        assert.deepEqual(err.error, want.error);
        assert.equal(err.message, want.message);
        assert.equal(err.code, want.code);
        assert.equal(err.type, want.type);
      });
    }
  }

  for (const [shape, fixture, upstreamStatus, cls, status] of [
    ["bare", "errors/openai_429_rate_limit.json", 429, "RateLimitError", 429],
    ["envelope", "errors/envelope_401.json", 200, "AuthenticationError", 401],
  ]) {
    test(`${shape}: a stream request answered with ${fixture} rejects at create`, async () => {
      const err = await rejection(
        create(client(shape), ct.directives({ fixture, status: upstreamStatus }), { stream: true }),
      );
      assert.equal(err.constructor, OpenAI[cls]);
      assert.equal(err.status, status);
    });
  }
});

// === Retries: the mock counts attempts; the SDK's own rules give the count ===

async function count(shape, c, d, body = {}) {
  const key = ct.newKey("node-retry");
  let result;
  try {
    result = await create(c, ct.directives({ key, ...d }), body);
    if (body.stream) result = await collect(result);
  } catch (e) {
    result = e;
  }
  return [result, await ct.attempts(shape, key)];
}

const RATE_LIMITED = { fixture: "errors/openai_429_rate_limit.json", status: 429, header: "retry-after-ms: 10" };
const OVERLOADED = { fixture: "errors/openai_503_overloaded.json", status: 503 };
const BAD_REQUEST = { fixture: "errors/openai_400_invalid_request.json", status: 400 };

describe("retries", () => {
  for (const shape of SHAPES) {
    test(`${shape}: a 429 with retry-after-ms is retried maxRetries times`, async () => {
      // Default maxRetries (2): 3 attempts. retry-after-ms: 10 is honoured, so no backoff change.
      const [result, n] = await count(shape, client(shape, { maxRetries: 2 }), RATE_LIMITED);
      assert.equal(result.constructor, OpenAI.RateLimitError);
      assert.equal(n, 3);
    });

    test(`${shape}: a 429 then a success returns the completion`, async () => {
      const [result, n] = await count(shape, client(shape, { maxRetries: 2 }), { ...RATE_LIMITED, failFirst: 1 });
      assert.equal(result.choices?.[0].message.content, ct.completionContent());
      assert.equal(n, 2);
    });

    test(`${shape}: a 429 then a success on a stream request`, async () => {
      const [result, n] = await count(
        shape,
        client(shape, { maxRetries: 2 }),
        { ...RATE_LIMITED, failFirst: 1 },
        { stream: true },
      );
      assert.deepEqual(result, ct.fixtureChunks(ct.BARE_STREAM));
      assert.equal(n, 2);
    });

    test(`${shape}: a 503 is retried with the SDK's backoff`, async () => {
      const [result, n] = await count(shape, fastClient(shape, { maxRetries: 2 }), OVERLOADED);
      assert.equal(result.constructor, OpenAI.InternalServerError);
      assert.equal(n, 3);
    });

    test(`${shape}: x-should-retry: false stops retries`, async () => {
      const [result, n] = await count(shape, fastClient(shape, { maxRetries: 2 }), {
        ...OVERLOADED,
        header: "x-should-retry: false",
      });
      assert.equal(result.constructor, OpenAI.InternalServerError);
      assert.equal(n, 1);
    });

    test(`${shape}: a 400 is not retried`, async () => {
      const [result, n] = await count(shape, fastClient(shape, { maxRetries: 2 }), BAD_REQUEST);
      assert.equal(result.constructor, OpenAI.BadRequestError);
      assert.equal(n, 1);
    });

    test(`${shape}: x-should-retry: true makes even a 400 retried`, async () => {
      const [result, n] = await count(shape, fastClient(shape, { maxRetries: 2 }), {
        ...BAD_REQUEST,
        header: "x-should-retry: true",
      });
      assert.equal(result.constructor, OpenAI.BadRequestError);
      assert.equal(n, 3);
    });
  }

  test("envelope: a 429 envelope under HTTP 200 is retried like a 429", async () => {
    // Without the proxy the SDK would see a 200 and never retry.
    const [result, n] = await count("envelope", client("envelope", { maxRetries: 2 }), {
      fixture: "errors/envelope_429_int_code.json",
      status: 200,
      header: "retry-after-ms: 10",
    });
    assert.equal(result.constructor, OpenAI.RateLimitError);
    assert.deepEqual(result.error, {
      message: "Too many requests, please retry later",
      type: "rate_limit_error",
      param: null,
      code: "429",
    });
    assert.equal(n, 3);
  });

  test("envelope: a 401 envelope under HTTP 200 is not retried", async () => {
    const [result, n] = await count("envelope", client("envelope", { maxRetries: 2 }), {
      fixture: "errors/envelope_401.json",
      status: 200,
    });
    assert.equal(result.constructor, OpenAI.AuthenticationError);
    assert.equal(n, 1);
  });
});

// === Streams that go wrong ===

describe("streams that go wrong", () => {
  for (const [shape, fixture, error] of [
    [
      "bare",
      "bare/chat_completion_stream_mid_error.sse",
      {
        message: "The server had an error while processing your request. Sorry about that!",
        type: "server_error",
        param: null,
        code: null,
      },
    ],
    [
      "envelope",
      "envelope/chat_completion_stream_mid_error.sse",
      { message: "model backend error", type: "server_error", param: null, code: "500" },
    ],
  ]) {
    test(`${shape}: a mid-stream error event throws APIError`, async () => {
      const stream = await create(client(shape), ct.directives({ fixture }), { stream: true });
      const err = await rejection(collect(stream));
      assert.equal(err.constructor, OpenAI.APIError);
      assert.equal(ct.contentOf(err.chunksBefore), "Hello!");
      assert.deepEqual(err.error, error);
      assert.equal(err.message, error.message);
      assert.equal(err.code, error.code);
      assert.equal(err.type, error.type);
      assert.equal(err.status, undefined);
    });
  }

  for (const [shape, fixture] of [
    ["bare", "bare/chat_completion_stream_no_done.sse"],
    ["bare", "bare/chat_completion_stream_cut_mid_answer.sse"],
    ["bare", "bare/chat_completion_stream_one_chunk_no_done.sse"],
    ["envelope", "envelope/chat_completion_stream_no_done.sse"],
  ]) {
    // Issue 8: the SDK throws instead of returning a short answer.
    test(`${shape}: ${fixture} (no [DONE]) throws APIError`, async () => {
      const stream = await create(client(shape), ct.directives({ fixture }), { stream: true });
      const err = await rejection(collect(stream));
      assert.equal(err.constructor, OpenAI.APIError);
      assert.deepEqual(err.chunksBefore, ct.fixtureChunks(fixture)); // everything sent, then the error
      assert.deepEqual(err.error, ct.truncatedError());
      assert.equal(err.message, ct.TRUNCATED_MESSAGE);
      assert.equal(err.code, "stream_truncated");
      assert.equal(err.type, "upstream_error");
    });
  }

  for (const [shape, fixture] of [
    ["bare", ct.BARE_STREAM],
    ["envelope", ct.ENVELOPE_STREAM],
  ]) {
    // The error events end the HTTP response cleanly: the same client goes on serving requests.
    test(`${shape}: the client keeps working after failed streams`, async () => {
      const c = client(shape);
      for (const d of [
        { fixture: `${shape}/chat_completion_stream_no_done.sse` },
        { behaviour: `reset-mid-body:${ct.cutInThirdEvent(fixture)}` },
      ]) {
        const err = await rejection(collect(await create(c, ct.directives(d), { stream: true })));
        assert.equal(err.constructor, OpenAI.APIError);
      }
      assert.deepEqual(await collect(await create(c, {}, { stream: true })), ct.fixtureChunks(ct.BARE_STREAM));
      assert.equal((await create(c)).choices[0].message.content, ct.completionContent());
    });
  }

  test("control: without the proxy the SDK returns the short answer", async () => {
    // Why the proxy's truncation event matters: straight from the upstream, the SDK ends quietly.
    const c = new OpenAI({ baseURL: `${ct.mock("bare")}/v1`, apiKey: "sk-test", timeout: ct.TIMEOUT_MS, maxRetries: 0 });
    const fixture = "bare/chat_completion_stream_cut_mid_answer.sse";
    const chunks = await collect(await create(c, ct.directives({ fixture }), { stream: true }));
    assert.deepEqual(chunks, ct.fixtureChunks(fixture));
    assert.equal(ct.contentOf(chunks), "Hello! 👋 How");
  });

  for (const [shape, fixture] of [
    ["bare", ct.BARE_STREAM],
    ["envelope", ct.ENVELOPE_STREAM],
  ]) {
    test(`${shape}: a broken upstream stream throws APIError`, async () => {
      const behaviour = `reset-mid-body:${ct.cutInThirdEvent(fixture)}`;
      const stream = await create(client(shape), ct.directives({ behaviour }), { stream: true });
      const err = await rejection(collect(stream));
      assert.equal(err.constructor, OpenAI.APIError);
      assert.deepEqual(err.chunksBefore, ct.fixtureChunks(ct.BARE_STREAM).slice(0, 2)); // whole events only
      assert.equal(ct.contentOf(err.chunksBefore), "Hello");
      assert.equal(err.code, "upstream_broken");
      assert.equal(err.type, "upstream_error");
      assert.ok(err.message.startsWith(ct.BROKEN_PREFIX) && err.message.endsWith(ct.BROKEN_SUFFIX), err.message);
    });
  }
});

// === x-request-id ===

describe("x-request-id", () => {
  for (const shape of SHAPES) {
    test(`${shape}: reaches the completion`, async () => {
      const completion = await create(client(shape), ct.directives({ header: "x-request-id: req_node_ok" }));
      assert.equal(completion._request_id, "req_node_ok");
    });

    test(`${shape}: reaches the stream response`, async () => {
      const { data, request_id } = await client(shape)
        .chat.completions.create(
          { model: ct.MODEL, messages: ct.MESSAGES, stream: true },
          { headers: ct.directives({ header: "x-request-id: req_node_stream" }) },
        )
        .withResponse();
      assert.equal(request_id, "req_node_stream");
      assert.deepEqual(await collect(data), ct.fixtureChunks(ct.BARE_STREAM));
    });

    test(`${shape}: reaches a mid-stream APIError`, async () => {
      const fixture = `${shape}/chat_completion_stream_mid_error.sse`;
      const stream = await create(
        client(shape),
        ct.directives({ fixture, header: "x-request-id: req_node_midstream" }),
        { stream: true },
      );
      const err = await rejection(collect(stream));
      assert.equal(err.constructor, OpenAI.APIError);
      assert.equal(err.requestID, "req_node_midstream");
    });
  }

  for (const [shape, fixture, status, cls] of [
    ["bare", "errors/openai_429_rate_limit.json", 429, "RateLimitError"],
    ["bare", "errors/nginx_502.html", 502, "InternalServerError"], // normalised by the proxy
    ["envelope", "errors/envelope_401.json", 200, "AuthenticationError"], // translated from a 200
  ]) {
    test(`${shape}: reaches the ${cls} for ${fixture}`, async () => {
      const err = await rejection(
        create(client(shape), ct.directives({ fixture, status, header: "x-request-id: req_node_err" })),
      );
      assert.equal(err.constructor, OpenAI[cls]);
      assert.equal(err.requestID, "req_node_err");
    });
  }
});

// === README ===

describe("README", () => {
  for (const shape of SHAPES) {
    test(`${shape}: the Node snippet prints the completion`, () => {
      const blocks = ct.fencedBlocks(ct.readmeSection("### With the OpenAI SDK"), "js");
      assert.equal(blocks.length, 1);
      assert.equal(blocks[0].trim().split("\n").length, 3, blocks[0]);
      assert.ok(blocks[0].includes("http://127.0.0.1:8080/v1"));
      // Run as written, but for the address and the key placeholder (`sk-…` is not a valid header).
      const code = blocks[0].replace("http://127.0.0.1:8080/v1", `${ct.proxy(shape)}/v1`).replace('"sk-…"', '"sk-test"');
      // Written next to node_modules/, so that `import "openai"` resolves as in a user's project.
      const dir = path.join(ct.env("CT_WORK"), "readme");
      mkdirSync(dir, { recursive: true });
      const file = path.join(dir, `snippet-${shape}.mjs`);
      writeFileSync(file, code);
      const out = spawnSync(process.execPath, [file], { encoding: "utf8", timeout: 60_000 });
      assert.equal(out.status, 0, out.stderr);
      assert.equal(out.stdout, ct.completionContent() + "\n");
    });
  }

  test("the tested SDK version is the pinned one, and the README names it", () => {
    const pkg = JSON.parse(readFileSync(path.join(ct.HERE, "package.json"), "utf8"));
    const installed = JSON.parse(readFileSync(path.join(ct.HERE, "node_modules/openai/package.json"), "utf8"));
    assert.equal(pkg.dependencies.openai, installed.version);
    assert.ok(ct.readmeSection("### With the OpenAI SDK").includes(`openai-node ${installed.version}`));
  });
});
