// The AWS SDK for JavaScript v3 against the gateway, exactly as an unmodified service uses it:
// the client's DEFAULT request handler (HTTP/2 only: prior knowledge on http://, ALPN h2 on
// https://) and a tenant's SigV4 credentials. Run by tests/test_js_sdk.py, which reads the JSON
// this prints. Environment: GATEWAY_URL, MODEL_ID, TENANT_KEY_ID, TENANT_SECRET (and
// NODE_EXTRA_CA_CERTS for https).
import {
  BedrockRuntimeClient,
  ConverseCommand,
  ConverseStreamCommand,
  InvokeModelCommand,
  InvokeModelWithResponseStreamCommand,
} from "@aws-sdk/client-bedrock-runtime";

const client = new BedrockRuntimeClient({
  region: "us-east-1",
  endpoint: process.env.GATEWAY_URL,
  credentials: {
    accessKeyId: process.env.TENANT_KEY_ID,
    secretAccessKey: process.env.TENANT_SECRET,
  },
  maxAttempts: 1,
});
const modelId = process.env.MODEL_ID;
const messages = (text) => [{ role: "user", content: [{ text }] }];
const anthropicBody = (text) =>
  JSON.stringify({
    anthropic_version: "bedrock-2023-05-31",
    max_tokens: 100,
    messages: [{ role: "user", content: text }],
  });
const decode = (bytes) => JSON.parse(new TextDecoder().decode(bytes));

async function converse() {
  const reply = await client.send(
    new ConverseCommand({ modelId, messages: messages("hello [sim:output_tokens=5]") }),
  );
  return { outputTokens: reply.usage.outputTokens, stopReason: reply.stopReason };
}

async function invoke() {
  const reply = await client.send(
    new InvokeModelCommand({ modelId, body: anthropicBody("hello [sim:output_tokens=6]") }),
  );
  return { outputTokens: decode(reply.body).usage.output_tokens };
}

async function converseStream() {
  const reply = await client.send(
    new ConverseStreamCommand({ modelId, messages: messages("stream [sim:output_tokens=7]") }),
  );
  const events = [];
  let usage = null;
  for await (const event of reply.stream) {
    const [kind] = Object.keys(event);
    events.push(kind);
    if (kind === "metadata") usage = event.metadata.usage;
  }
  return { events, outputTokens: usage.outputTokens };
}

async function invokeStream() {
  const reply = await client.send(
    new InvokeModelWithResponseStreamCommand({
      modelId,
      body: anthropicBody("stream [sim:output_tokens=8]"),
    }),
  );
  const types = [];
  let metrics = null;
  for await (const event of reply.body) {
    const chunk = decode(event.chunk.bytes);
    types.push(chunk.type);
    metrics = chunk["amazon-bedrock-invocationMetrics"] ?? metrics;
  }
  return { types, outputTokens: metrics.outputTokenCount };
}

async function streamError() {
  const reply = await client.send(
    new ConverseStreamCommand({
      modelId,
      messages: messages("x [sim:stream_error=throttlingException]"),
    }),
  );
  try {
    for await (const _ of reply.stream) {
      // drain until the exception frame
    }
  } catch (error) {
    return { name: error.name };
  }
  return { name: null };
}

const results = {};
for (const [name, call] of Object.entries({
  converse,
  invoke,
  converseStream,
  invokeStream,
  streamError,
})) {
  try {
    results[name] = await call();
  } catch (error) {
    results[name] = { error: `${error.name}: ${error.message}`, code: error.code ?? null };
  }
}
client.destroy();
console.log(JSON.stringify(results));
