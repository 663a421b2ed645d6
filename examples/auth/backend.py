"""A Duplex backend in Python, standard library only: mint connection and
subscription tokens (HS256) and publish through the HTTP API.

    DUPLEX_TOKEN_SECRET=... python3 backend.py token 42             # print a token for user 42
    DUPLEX_API_KEY=... python3 backend.py publish '#user:42' hello  # reach every connection of user 42
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.request


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(secret: str, claims: dict) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(signature)}"


def connection_token(secret: str, user: str, ttl: int = 3600) -> str:
    return mint(secret, {"sub": user, "exp": int(time.time()) + ttl})


def subscription_token(secret: str, user: str, channel: str, ttl: int = 3600) -> str:
    return mint(secret, {"sub": user, "channel": channel, "exp": int(time.time()) + ttl})


def publish(node: str, api_key: str, channel: str, data) -> dict:
    request = urllib.request.Request(
        f"{node}/api/publish",
        data=json.dumps({"channel": channel, "data": data}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"apikey {api_key}"},
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)


if __name__ == "__main__":
    node = os.environ.get("DUPLEX_NODE", "http://127.0.0.1:1234")
    command, *args = sys.argv[1:]
    if command == "token":
        print(connection_token(os.environ["DUPLEX_TOKEN_SECRET"], args[0]))
    elif command == "subscription-token":
        print(subscription_token(os.environ["DUPLEX_TOKEN_SECRET"], args[0], args[1]))
    elif command == "publish":
        print(json.dumps(publish(node, os.environ["DUPLEX_API_KEY"], args[0], args[1])))
    else:
        sys.exit(f"unknown command {command}")
