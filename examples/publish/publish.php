<?php
// Publishing from PHP with php-redis: the classic two-liner.
//   REDIS_URL=redis://127.0.0.1:6379 php publish.php CHANNEL MESSAGE
// Every client subscribed to CHANNEL, on every node using this Redis, gets MESSAGE.
[$_, $channel, $message] = $argv;
$url = parse_url(getenv('REDIS_URL') ?: 'redis://127.0.0.1:6379');

$redis = new Redis();
$redis->connect($url['host'], $url['port'] ?? 6379);
echo $redis->publish($channel, $message), "\n"; // how many nodes heard it
