"""A local HTTP endpoint that answers the Hub API calls an upload makes and records them (no network).

huggingface_hub's upload is: POST /api/repos/create, POST /api/validate-yaml (a README's metadata), POST /api/models/<repo>/preupload/<rev> (the server says
each file is uploaded "regular", i.e. inline), POST /api/models/<repo>/commit/<rev> (NDJSON: a header line,
then one line per file with its base64 content). `FakeHub.commits` holds each commit as {path: bytes}.
"""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        self.creates: list[dict] = []
        self.commits: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            hub.requests.append(("GET", self.path, b""))
            self._reply(404, {"error": "not found"})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hub.requests.append(("POST", self.path, body))
            if self.path == "/api/repos/create":
                request = json.loads(body)
                hub.creates.append(request)
                repo = f"{request['organization']}/{request['name']}" if request.get("organization") else \
                    request["name"]
                return self._reply(200, {"url": f"{hub.endpoint}/{repo}", "name": repo})
            if self.path == "/api/validate-yaml":   # the model card's metadata, checked before the commit
                return self._reply(200, {"errors": [], "warnings": []})
            if "/preupload/" in self.path:
                files = json.loads(body)["files"]
                return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                    "shouldIgnore": False} for f in files]})
            if "/commit/" in self.path:
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                files = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                         for line in lines if line["key"] == "file"}
                header = next(line["value"] for line in lines if line["key"] == "header")
                repo = self.path.split("/api/models/")[1].split("/commit/")[0]
                hub.commits.append({"repo": repo, "path": self.path, "header": header, "files": files})
                return self._reply(200, {"commitUrl": f"{hub.endpoint}/{repo}/commit/{'a' * 40}",
                                         "commitOid": "a" * 40, "pullRequestUrl": None})
            self._reply(404, {"error": f"unexpected {self.path}"})

    return Handler
