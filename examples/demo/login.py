"""Browser login in a minute: npm `oidc-provider` as the OpenID Provider (any user name signs
in), a real Envoy running the module with a `login`, and an echo app behind it that shows what
it received. Prints the URL to open; stops everything on Ctrl-C.

Run with `make demo-login` (`DEMO_PORT=8080` by default). Everything listens on 127.0.0.1; open
the app as `http://localhost:<port>` (the OP is on `127.0.0.1`, so the two sets of cookies do
not mix)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from harness import EchoServer, EnvoyFactory, istio_cluster_name, locate_envoy  # noqa: E402


def main() -> int:
    port = int(os.environ.get("DEMO_PORT", "8080"))
    module = Path(os.environ.get("MESH_OAUTH_WASM") or REPO / "dist" / "mesh_oauth.wasm")
    app = f"http://localhost:{port}"
    op = subprocess.Popen(
        ["node", str(REPO / "tests" / "integration" / "login" / "op.mjs"), "--port", "0",
         "--app-origin", app, "--access-token-ttl", "60"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO)
    assert op.stdout is not None
    ready = json.loads(op.stdout.readline())
    echo = EchoServer()
    workdir = Path(tempfile.mkdtemp(prefix="mesh-oauth-login-demo-"))
    factory = EnvoyFactory(locate_envoy(), module, echo, workdir)
    config = {
        "providers": [{"name": "demo-op", "issuer": ready["issuer"], "audiences": [ready["audience"]],
                       "forwardOriginalToken": True}],
        "rules": [{"match": {"paths": ["/goodbye"]}, "allowAnonymous": True}],
        "audit": {"level": "info"},
        "login": {
            "provider": "demo-op",
            "clientId": ready["client_id"],
            "clientSecretEnv": "DEMO_CLIENT_SECRET",
            "cookieKeysEnv": "DEMO_COOKIE_KEYS",
            "hosts": [app],
            "postLogoutRedirectUri": f"{app}/goodbye",
        },
    }
    env = {"DEMO_CLIENT_SECRET": ready["client_secret"],
           "DEMO_COOKIE_KEYS": base64.b64encode(secrets.token_bytes(32)).decode()}
    try:
        envoy = factory.start(config, extra_clusters={istio_cluster_name(ready["port"]): ready["port"]},
                              filter_args={"env": env}, port=port)
        print(f"""
mesh-oauth browser login demo
  open      {app}/orders         (sign in with any name and password)
  log out   a same-origin POST to {app}/oauth2/logout, e.g. in the browser console:
            document.body.insertAdjacentHTML('beforeend', '<form id=out method=post action=/oauth2/logout>'); out.submit()
  the OP    {ready['issuer']}
  Envoy log {envoy.log_path}
Ctrl-C stops it all.""", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        factory.stop_all()
        echo.stop()
        op.terminate()


if __name__ == "__main__":
    sys.exit(main())
