<?php
// A Duplex HTTP upstream in PHP, no extensions: the node POSTs client `send`s
// and `rpc`s here (`upstream_url`), signed with `upstream_secret`; this
// checks the signature and answers the rpcs. One page: serve it with php-fpm
// or Apache, or on its own:
//
//     DUPLEX_UPSTREAM_SECRET=... php -S 127.0.0.1:8000 http_backend.php
//     duplex serve --upstream-url http://127.0.0.1:8000/duplex --upstream-secret ...
//
// A request without a valid `Duplex-Signature` (HMAC-SHA256 of "<t>.<body>"
// with the secret, t within 5 minutes of now) gets 401: it is not from a
// node. Several secrets, comma-separated, are all accepted (for rotation).

const TOLERANCE = 300; // seconds: older (or later) signatures are refused, against replays

/** Whether $header (t=<secs>,v1=<hex>[,v1=...]) signs $body with one of $secrets, recently. */
function signed_by_a_node(string $header, string $body, array $secrets): bool
{
    $timestamps = [];
    $signatures = [];
    foreach (explode(',', $header) as $part) {
        [$key, $value] = array_pad(explode('=', $part, 2), 2, '');
        if (trim($key) === 't') {
            $timestamps[] = trim($value);
        } elseif (trim($key) === 'v1') {
            $signatures[] = trim($value);
        }
    }
    if (count($timestamps) !== 1 || !ctype_digit($timestamps[0])) {
        return false;
    }
    $t = $timestamps[0];
    if (abs(time() - (int) $t) > TOLERANCE) {
        return false;
    }
    foreach ($secrets as $secret) {
        $expected = hash_hmac('sha256', "$t.$body", $secret);
        foreach ($signatures as $signature) {
            if (hash_equals($expected, $signature)) { // constant time
                return true;
            }
        }
    }
    return false;
}

function answer(string $method, $data)
{
    if ($method === 'add') {
        return ['sum' => $data['a'] + $data['b']];
    }
    throw new RuntimeException("no method \"$method\"");
}

function reply(int $status, $value): void
{
    http_response_code($status);
    header('Content-Type: application/json');
    if ($value !== null) {
        echo json_encode($value);
    }
}

$secrets = array_filter(array_map('trim', explode(',', (string) getenv('DUPLEX_UPSTREAM_SECRET'))), 'strlen');
$body = file_get_contents('php://input');
if ($_SERVER['REQUEST_METHOD'] !== 'POST') {
    reply(405, ['error' => ['code' => 4005, 'message' => 'POST only']]);
} elseif (!$secrets) {
    error_log('http_backend: set DUPLEX_UPSTREAM_SECRET (the node\'s --upstream-secret)');
    reply(500, ['error' => ['code' => 4500, 'message' => 'not configured']]);
} elseif (!signed_by_a_node($_SERVER['HTTP_DUPLEX_SIGNATURE'] ?? '', $body, $secrets)) {
    reply(401, ['error' => ['code' => 4001, 'message' => 'bad signature']]);
} else {
    $call = json_decode($body, true);
    if ($call['kind'] !== 'rpc') {
        error_log("send from {$call['connection']}: " . json_encode($call['data'] ?? null));
        reply(204, null);
    } else {
        try {
            reply(200, answer($call['method'], $call['data'] ?? null));
        } catch (Throwable $e) { // the client gets the code and message
            reply(400, ['error' => ['code' => 4000, 'message' => $e->getMessage()]]);
        }
    }
}
