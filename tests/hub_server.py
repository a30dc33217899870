"""A Hub-compatible test server on 127.0.0.1: only the endpoints huggingface_hub's upload_folder calls.

the agent-harness registry, create_repo, validate-yaml, preupload, the git-LFS batch API with basic transfer, the LFS PUT,
and the ndjson commit. Small files come inline (base64), safetensors through LFS, whose content
is checked against its sha256 oid. Files land on disk under `root/<namespace>/<name>/`.
The client must run with HF_HUB_DISABLE_XET=1: the Xet storage protocol is not served here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = r"(?P<repo>[^/]+/[^/]+)"


class HubState:
    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / ".blobs"
        self.blobs.mkdir(parents=True)
        self.repos: dict[str, dict] = {}
        self.authorizations: list[str] = []
        self.unhandled: list[str] = []
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    state: HubState
    base_url: str

    def log_message(self, *args):  # keep test output clean
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _reply(self, status: int, payload: dict | None = None) -> None:
        body = json.dumps(payload or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self, method: str) -> None:
        self.state.authorizations.append(self.headers.get("Authorization", ""))
        for pattern, handler in ROUTES.get(method, []):
            match = re.fullmatch(pattern, self.path.split("?")[0])
            if match:
                return handler(self, **match.groupdict())
        self.state.unhandled.append(f"{method} {self.path}")
        self._body()
        self._reply(404, {"error": "not served by the test hub"})

    def do_POST(self):
        self._route("POST")

    def do_PUT(self):
        self._route("PUT")

    def do_GET(self):
        self._route("GET")

    # ---- endpoints ----------------------------------------------------------------------
    def create_repo(self):
        payload = json.loads(self._body())
        repo_id = f"{payload['organization']}/{payload['name']}"
        with self.state.lock:
            if repo_id in self.state.repos:
                return self._reply(
                    409, {"error": "You already created this model repo", "url": f"{self.base_url}/{repo_id}"}
                )
            self.state.repos[repo_id] = {"private": payload.get("visibility") == "private", "commits": []}
        (self.state.root / repo_id).mkdir(parents=True)
        self._reply(200, {"url": f"{self.base_url}/{repo_id}"})

    def agent_harnesses(self):
        self._reply(200, {"standardEnvVars": [], "harnesses": {}})

    def validate_yaml(self):
        self._body()
        self._reply(200, {"errors": [], "warnings": []})

    def preupload(self, repo, revision):
        files = json.loads(self._body())["files"]
        modes = [
            {
                "path": f["path"],
                "uploadMode": "lfs" if f["path"].endswith(".safetensors") else "regular",
                "shouldIgnore": False,
                "oid": None,
            }
            for f in files
        ]
        self._reply(200, {"files": modes})

    def lfs_batch(self, repo):
        request = json.loads(self._body())
        objects = []
        for item in request["objects"]:
            entry = {"oid": item["oid"], "size": item["size"]}
            if not (self.state.blobs / item["oid"]).is_file():
                entry["actions"] = {"upload": {"href": f"{self.base_url}/lfs-upload/{item['oid']}"}}
            objects.append(entry)
        self._reply(200, {"transfer": "basic", "objects": objects})

    def lfs_upload(self, oid):
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._reply(400, {"error": "content does not match its oid"})
        (self.state.blobs / oid).write_bytes(data)
        self._reply(200)

    def commit(self, repo, revision):
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        target = self.state.root / repo
        paths = []
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                destination = target / value["path"]
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(base64.b64decode(value["content"]))
                paths.append(value["path"])
            elif line["key"] == "lfsFile":
                destination = target / value["path"]
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.state.blobs / value["oid"], destination)
                paths.append(value["path"])
        oid = hashlib.sha1(json.dumps(lines, sort_keys=True).encode()).hexdigest()
        header = next(line["value"] for line in lines if line["key"] == "header")
        self.state.repos[repo]["commits"].append({"oid": oid, "summary": header["summary"], "paths": paths})
        self._reply(200, {"commitUrl": f"{self.base_url}/{repo}/commit/{oid}", "commitOid": oid})


ROUTES = {
    "POST": [
        (r"/api/repos/create", Handler.create_repo),
        (r"/api/validate-yaml", Handler.validate_yaml),
        (rf"/api/models/{REPO}/preupload/(?P<revision>[^/]+)", Handler.preupload),
        (rf"/{REPO}\.git/info/lfs/objects/batch", Handler.lfs_batch),
        (rf"/api/models/{REPO}/commit/(?P<revision>[^/]+)", Handler.commit),
    ],
    "PUT": [(r"/lfs-upload/(?P<oid>[0-9a-f]{64})", Handler.lfs_upload)],
    "GET": [(r"/api/agent-harnesses", Handler.agent_harnesses)],
}


class TestHub:
    """Context manager: the server runs in a thread for the duration of the block."""

    __test__ = False  # a helper, not a pytest test class

    def __init__(self, root: Path):
        self.state = HubState(root)

    def __enter__(self) -> TestHub:
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        handler.base_url = self.url
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def repo_dir(self, repo_id: str) -> Path:
        return self.state.root / repo_id
