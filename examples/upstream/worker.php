<?php
// A Duplex upstream worker in PHP (php-redis): reads client `send` and `rpc`
// entries from the stream with a consumer group, answers each rpc on the
// entry's `reply_to` channel, acknowledges (XACK).
//
// It keeps running through quiet periods and Redis restarts: on a lost
// connection it reconnects with jittered backoff under the same consumer
// name, creates the group again if Redis lost it, answers the entries it had
// read but not acknowledged, then claims (XAUTOCLAIM) those a crashed worker
// left, at every (re)connect and every CLAIM_IDLE_MS. What happens is logged
// to stderr.
//
//     apt install php-cli php-redis
//     REDIS_URL=redis://localhost:6379 php worker.php [consumer-name]
//
// Run several with different names: they share the load (docs/UPSTREAM.md).

const GROUP = 'workers';
const BLOCK_MS = 2000; // one XREADGROUP waits this long for new entries

$stream = getenv('DUPLEX_UPSTREAM_STREAM') ?: 'duplex:upstream';
$claimIdleMs = (int) (getenv('CLAIM_IDLE_MS') === false ? 30000 : getenv('CLAIM_IDLE_MS')); // "crashed" = unacked this long
$me = $argv[1] ?? 'worker-1';
$url = parse_url(getenv('REDIS_URL') ?: 'redis://localhost:6379');

function logLine(string $message): void
{
    global $me;
    fwrite(STDERR, "worker $me: $message\n");
}

/** The stream or its group is gone (Redis restarted empty, the key deleted): create them again. */
class NoGroup extends RuntimeException
{
}

function connect(array $url): Redis
{
    $r = new Redis();
    $r->connect($url['host'], $url['port'] ?? 6379, 5.0); // throws RedisException
    // Longer than a blocked XREADGROUP, yet finite: a Redis gone without
    // closing the socket is noticed.
    $r->setOption(Redis::OPT_READ_TIMEOUT, BLOCK_MS / 1000 + 5);
    return $r;
}

/** php-redis answers an error reply with false; a lost group must not look like "no entries". */
function checked(Redis $r, $result)
{
    if ($result === false && ($error = $r->getLastError()) !== null) {
        $r->clearLastError();
        if (strpos($error, 'NOGROUP') === 0 || strpos($error, 'UNBLOCKED') === 0) {
            throw new NoGroup($error);
        }
        throw new RuntimeException("Redis: $error");
    }
    return $result;
}

function answer(string $method, $data)
{
    if ($method === 'add') {
        return ['sum' => $data['a'] + $data['b']];
    }
    throw new RuntimeException("no method \"$method\"");
}

function process(Redis $r, string $stream, string $id, $f): void
{
    if (!is_array($f) || !$f) { // trimmed (MAXLEN) while pending: nothing left to answer
        checked($r, $r->xAck($stream, GROUP, [$id]));
        return;
    }
    if ($f['kind'] === 'rpc') {
        $reply = ['op' => 'reply', 'connection' => $f['connection'], 'request' => $f['request']];
        try {
            $reply['data'] = answer($f['method'], json_decode($f['data'], true));
        } catch (Throwable $e) { // the client gets the code and message
            $reply['error'] = ['code' => 4000, 'message' => $e->getMessage()];
        }
        checked($r, $r->publish($f['reply_to'], json_encode($reply)));
    } else {
        echo "send from {$f['connection']}: {$f['data']}\n";
    }
    checked($r, $r->xAck($stream, GROUP, [$id]));
}

function ensureGroup(Redis $r, string $stream): void
{
    // "0": also take what was appended before the group existed.
    if ($r->xGroup('CREATE', $stream, GROUP, '0', true)) {
        logLine("created group " . GROUP . " on $stream");
        return;
    }
    $error = (string) $r->getLastError();
    $r->clearLastError();
    if (strpos($error, 'BUSYGROUP') === false) { // BUSYGROUP: it exists already
        throw new RuntimeException("XGROUP CREATE: $error");
    }
}

/** Entries this consumer read before a lost connection and never acked. */
function answerOwnPending(Redis $r, string $stream, string $me): void
{
    while ($entries = (checked($r, $r->xReadGroup(GROUP, $me, [$stream => '0'], 100)) ?: [])[$stream] ?? []) {
        logLine(count($entries) . " entries read before the connection was lost: answering them");
        foreach ($entries as $id => $f) {
            process($r, $stream, $id, $f);
        }
    }
}

/** Entries other consumers read and left unacked for $claimIdleMs. */
function claimAbandoned(Redis $r, string $stream, string $me, int $claimIdleMs): void
{
    $cursor = '0-0';
    do {
        // A raw command (php-redis 5 has no wrapper): [next, [[id, [k, v, ...]], ...], ...].
        $claimed = checked($r, $r->rawCommand('XAUTOCLAIM', $stream, GROUP, $me, $claimIdleMs, $cursor));
        $cursor = $claimed[0];
        if ($claimed[1]) {
            logLine("claimed " . count($claimed[1]) . " entries left by another worker");
        }
        foreach ($claimed[1] as [$id, $kv]) {
            $f = [];
            for ($i = 0; $i < count($kv ?? []); $i += 2) {
                $f[$kv[$i]] = $kv[$i + 1];
            }
            process($r, $stream, $id, $f);
        }
    } while ($cursor !== '0-0');
}

function serve(Redis $r, string $stream, string $me, int $claimIdleMs): void
{
    $nextClaim = microtime(true) + $claimIdleMs / 1000;
    logLine("reading $stream as $me in group " . GROUP);
    while (true) {
        foreach (checked($r, $r->xReadGroup(GROUP, $me, [$stream => '>'], 100, BLOCK_MS)) ?: [] as $entries) {
            foreach ($entries as $id => $f) {
                process($r, $stream, $id, $f);
            }
        }
        if (microtime(true) >= $nextClaim) {
            claimAbandoned($r, $stream, $me, $claimIdleMs);
            $nextClaim = microtime(true) + $claimIdleMs / 1000;
        }
    }
}

$failures = 0;
while (true) {
    try {
        $r = connect($url);
        ensureGroup($r, $stream);
        answerOwnPending($r, $stream, $me);
        claimAbandoned($r, $stream, $me, $claimIdleMs);
        if ($failures) {
            logLine("back after $failures failed attempts");
        }
        $failures = 0;
        serve($r, $stream, $me, $claimIdleMs);
    } catch (RedisException $e) {
        $failures++;
        // Full jitter: workers that lost Redis together do not all return at once.
        $delay = mt_rand() / mt_getrandmax() * min(5.0, 0.1 * 2 ** $failures);
        logLine(sprintf("Redis unavailable (%s); retrying in %.2f s", $e->getMessage(), $delay));
        usleep((int) ($delay * 1e6));
    } catch (NoGroup $e) {
        logLine("the stream or its group is gone ({$e->getMessage()}): creating it again");
    }
}
