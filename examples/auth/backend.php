<?php
// A Duplex backend in PHP, no extensions beyond the standard ones: mint
// connection and subscription tokens (HS256) and publish through the HTTP API.
//
//   DUPLEX_TOKEN_SECRET=... php backend.php token 42              # print a token for user 42
//   DUPLEX_API_KEY=... php backend.php publish '#user:42' hello   # reach every connection of user 42
//
// Or from your web pages (php -S, php-fpm, Apache), which get the functions only:
//   require __DIR__ . '/backend.php';
//   echo connection_token(getenv('DUPLEX_TOKEN_SECRET'), $signedInUserId);
//
// With php-redis the publish is the classic two-liner instead:
//   $redis = new Redis(); $redis->connect('127.0.0.1');
//   $redis->publish('#user:42', 'hello');

function b64url(string $data): string {
    return rtrim(strtr(base64_encode($data), '+/', '-_'), '=');
}

function mint(string $secret, array $claims): string {
    $header = b64url(json_encode(['alg' => 'HS256', 'typ' => 'JWT']));
    $payload = b64url(json_encode($claims));
    $signature = hash_hmac('sha256', "$header.$payload", $secret, true);
    return "$header.$payload." . b64url($signature);
}

function connection_token(string $secret, string $user, int $ttl = 3600): string {
    return mint($secret, ['sub' => $user, 'exp' => time() + $ttl]);
}

function subscription_token(string $secret, string $user, string $channel, int $ttl = 3600): string {
    return mint($secret, ['sub' => $user, 'channel' => $channel, 'exp' => time() + $ttl]);
}

function publish(string $node, string $apiKey, string $channel, $data): array {
    $context = stream_context_create(['http' => [
        'method' => 'POST',
        'header' => "Content-Type: application/json\r\nAuthorization: apikey $apiKey\r\n",
        'content' => json_encode(['channel' => $channel, 'data' => $data]),
    ]]);
    $body = file_get_contents("$node/api/publish", false, $context);
    if ($body === false) {
        throw new RuntimeException("publish failed");
    }
    return json_decode($body, true);
}

// The command line, only when this file is the script run (not when a page
// or another script requires it: there STDERR and $argv do not exist).
if (PHP_SAPI !== 'cli' || realpath($_SERVER['argv'][0] ?? '') !== __FILE__) {
    return;
}
$node = getenv('DUPLEX_NODE') ?: 'http://127.0.0.1:1234';
$command = $argv[1] ?? '';
switch ($command) {
    case 'token':
        echo connection_token(getenv('DUPLEX_TOKEN_SECRET'), $argv[2]), "\n";
        break;
    case 'subscription-token':
        echo subscription_token(getenv('DUPLEX_TOKEN_SECRET'), $argv[2], $argv[3]), "\n";
        break;
    case 'publish':
        echo json_encode(publish($node, getenv('DUPLEX_API_KEY'), $argv[2], $argv[3])), "\n";
        break;
    default:
        fwrite(STDERR, "unknown command $command\n");
        exit(1);
}
