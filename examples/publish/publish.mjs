// Publishing from Node.js 18+ with nothing but fetch:
//   DUPLEX_NODE=http://127.0.0.1:1234 node publish.mjs CHANNEL '{"any":"json"}'
// (With --redis on the node, ioredis' `redis.publish(channel, text)` works too.)
const [channel, json] = process.argv.slice(2);
const node = process.env.DUPLEX_NODE ?? "http://127.0.0.1:1234";
const headers = { "content-type": "application/json" };
if (process.env.DUPLEX_API_KEY) headers.authorization = `apikey ${process.env.DUPLEX_API_KEY}`;
const response = await fetch(`${node}/api/publish`, {
  method: "POST",
  headers,
  body: JSON.stringify({ channel, data: JSON.parse(json) }),
});
console.log(response.status, await response.text());
if (!response.ok) process.exit(1);
