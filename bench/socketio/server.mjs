// The Socket.IO peer for bench/compare.sh: Socket.IO 4 over WebSocket only,
// a client joins a room with an acknowledged "subscribe" event, and
// POST /publish {"channel","data"} emits "message" to that room. With
// REDIS_URL set it uses @socket.io/redis-adapter, as a multi-node
// deployment would. Run: PORT=3000 [REDIS_URL=redis://...] node server.mjs
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.env.PORT || 3000);
const http = createServer(async (req, res) => {
  if (req.method !== "POST" || req.url !== "/publish") {
    res.writeHead(404).end();
    return;
  }
  let body = "";
  for await (const chunk of req) body += chunk;
  try {
    const { channel, data } = JSON.parse(body);
    io.to(channel).emit("message", data);
    res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
  } catch (e) {
    res.writeHead(400).end(String(e));
  }
});
const io = new Server(http, { transports: ["websocket"], serveClient: false });

if (process.env.REDIS_URL) {
  const { createAdapter } = await import("@socket.io/redis-adapter");
  const { createClient } = await import("redis");
  const pub = createClient({ url: process.env.REDIS_URL });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub));
}

io.on("connection", (socket) => {
  socket.on("subscribe", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack("ok");
  });
});
http.listen(port, "127.0.0.1");
