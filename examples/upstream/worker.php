<?php
// A Duplex upstream worker in PHP (php-redis): reads client `send` and `rpc`
// entries from the stream with a consumer group, answers each rpc on the
// entry's `reply_to` channel, acknowledges (XACK). At start it claims the
// entries a crashed worker read and never acknowledged (XAUTOCLAIM).
//
//     apt install php-cli php-redis
//     REDIS_URL=redis://localhost:6379 php worker.php [consumer-name]
//
// Run several with different names: they share the load (docs/UPSTREAM.md).

$stream = getenv('DUPLEX_UPSTREAM_STREAM') ?: 'duplex:upstream';
$group = 'workers';
$claimIdleMs = (int) (getenv('CLAIM_IDLE_MS') === false ? 30000 : getenv('CLAIM_IDLE_MS')); // "crashed" = unacked this long
$me = $argv[1] ?? 'worker-1';
$url = parse_url(getenv('REDIS_URL') ?: 'redis://localhost:6379');
$r = new Redis();
$r->connect($url['host'], $url['port'] ?? 6379);
$r->setOption(Redis::OPT_READ_TIMEOUT, -1);

function answer(string $method, $data)
{
    if ($method === 'add') {
        return ['sum' => $data['a'] + $data['b']];
    }
    throw new RuntimeException("no method \"$method\"");
}

function process(Redis $r, string $stream, string $group, string $id, array $f): void
{
    if ($f['kind'] === 'rpc') {
        $reply = ['op' => 'reply', 'connection' => $f['connection'], 'request' => $f['request']];
        try {
            $reply['data'] = answer($f['method'], json_decode($f['data'], true));
        } catch (Throwable $e) { // the client gets the code and message
            $reply['error'] = ['code' => 4000, 'message' => $e->getMessage()];
        }
        $r->publish($f['reply_to'], json_encode($reply));
    } else {
        echo "send from {$f['connection']}: {$f['data']}\n";
    }
    $r->xAck($stream, $group, [$id]);
}

// "0": also take what was appended before the group existed; fails if it exists.
@$r->xGroup('CREATE', $stream, $group, '0', true);
$r->clearLastError();
// XAUTOCLAIM as a raw command (php-redis 5 has no wrapper): [next, [[id, [k, v, ...]], ...], ...].
$claimed = $r->rawCommand('XAUTOCLAIM', $stream, $group, $me, $claimIdleMs, '0-0');
foreach ($claimed[1] ?? [] as [$id, $kv]) {
    $f = [];
    for ($i = 0; $i < count($kv); $i += 2) {
        $f[$kv[$i]] = $kv[$i + 1];
    }
    process($r, $stream, $group, $id, $f);
}
while (true) {
    foreach ($r->xReadGroup($group, $me, [$stream => '>'], 100, 5000) ?: [] as $entries) {
        foreach ($entries as $id => $f) {
            process($r, $stream, $group, $id, $f);
        }
    }
}
