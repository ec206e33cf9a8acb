// Drives a kit endpoint with RunPod's JavaScript SDK (runpod-sdk from npm).
// Usage: node drive.mjs <path to runpod-sdk's index.js> <base url .../v2> <endpoint id>
// Prints one JSON object with what each call returned, as its last line (the SDK prints
// "<id>: IN_PROGRESS" progress lines of its own).
const [sdkPath, baseUrl, endpointId] = process.argv.slice(2);
const { default: runpodSdk } = await import(sdkPath);
const endpoint = runpodSdk("any-key", { baseUrl }).endpoint(endpointId);

const results = {};
const run = await endpoint.run({ input: { n: 1 } });
results.run = run;
const deadline = Date.now() + 30000;
let status = await endpoint.status(run.id);
while (!status.completed && Date.now() < deadline) {
  await new Promise((r) => setTimeout(r, 200));
  status = await endpoint.status(run.id);
}
results.status = status;

// Longer than its wait: runsync answers IN_PROGRESS, then the SDK polls /status-sync.
results.runSync = await endpoint.runSync({ input: { sleep: 4 } }, 3000);

const streamed = await endpoint.run({ input: { stream: 3, pause: 0.5 } });
const chunks = [];
for await (const chunk of endpoint.stream(streamed.id)) chunks.push(chunk.output);
results.stream = chunks;

const cancelled = await endpoint.run({ input: { sleep: 30 } });
await new Promise((r) => setTimeout(r, 500));
results.cancel = await endpoint.cancel(cancelled.id);
results.health = await endpoint.health();
console.log(JSON.stringify(results));
