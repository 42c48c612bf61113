"""A loopback stand-in for the Hugging Face Hub: enough for `upload_folder` and `from_pretrained`.

Models and Spaces: a Space is kept under "spaces/<repo id>" (`hub.commits("spaces/user/app")`),
and its variables (`add_space_variable`) in `hub.variables["user/app"]`.

Standard library only: `http.server` on 127.0.0.1 (a free port) in a background thread. Every
file is accepted as a "regular" upload (base64 inside the ndjson commit), so LFS and Xet never
run. Each commit gets a new sha and a snapshot of the whole tree (files accumulate; past
revisions stay readable); contents live in a temporary folder, named by their git blob id. The
endpoints are those that huggingface_hub 2.4 and transformers 5.23 call.

    with LoopbackHub() as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint}  # before transformers is imported
        ...
        hub.commits("user/model")[-1].tree  # {path: blob id}
"""

import base64
import hashlib
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

REPO = r"(?P<repo>[^/]+/[^/]+)"
ACTIONS = r"(?P<action>revision|tree|preupload|commit)"
API = re.compile(rf"^/api/(?P<kind>models|spaces)/{REPO}(?:/{ACTIONS}/(?P<rev>[^/]+)(?:/(?P<path>.*))?)?$")
RESOLVE = re.compile(rf"^/(?:(?P<kind>spaces)/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
VARIABLES = re.compile(rf"^/api/spaces/{REPO}/variables$")


@dataclass
class Commit:
    sha: str
    message: str
    tree: dict[str, str]  # path -> git blob id: the whole repo after this commit
    added: list[str] = field(default_factory=list)  # the paths this commit wrote


def hub_env(hub: "LoopbackHub", hf_home) -> dict:
    """This process's environment, online against the loopback Hub, with an empty cache (for a subprocess)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(hf_home), NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    return env


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class LoopbackHub:
    def __init__(self):
        self.repos: dict[str, list[Commit]] = {}  # repo id -> commits, oldest first
        self.requests: list[str] = []  # "METHOD /path" of every request, for assertions and debugging
        self.variables: dict[str, dict[str, str]] = {}  # Space id -> {key: value}
        self._lock = threading.Lock()

    def __enter__(self) -> "LoopbackHub":
        self._tmp = tempfile.TemporaryDirectory(prefix="loopback-hub-")
        self.blobs = Path(self._tmp.name)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.hub = self
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info):
        self._server.shutdown()
        self._server.server_close()
        self._tmp.cleanup()

    def commits(self, repo_id: str) -> list[Commit]:
        return list(self.repos.get(repo_id, []))

    def read(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        return (self.blobs / self.commit(repo_id, revision).tree[path]).read_bytes()

    def commit(self, repo_id: str, revision: str = "main") -> Commit | None:
        history = self.repos.get(repo_id) or []
        if revision == "main":
            return history[-1] if history else None
        return next((c for c in history if c.sha == revision), None)

    def apply(self, repo_id: str, lines: list[dict]) -> Commit:
        """One ndjson commit: a header line, then file additions and deletions."""
        with self._lock:
            history = self.repos.setdefault(repo_id, [])
            tree, message, added = dict(history[-1].tree) if history else {}, "", []
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "header":
                    message = value.get("summary", "")
                elif key == "file":  # {"path", "content" (base64), "encoding": "base64"}
                    content = base64.b64decode(value["content"])
                    tree[value["path"]] = oid = git_blob_id(content)
                    (self.blobs / oid).write_bytes(content)
                    added.append(value["path"])
                elif key == "deletedFile":
                    tree.pop(value["path"], None)
                else:
                    raise ValueError(f"the loopback hub does not handle {key!r} commit lines")
            parent = history[-1].sha if history else ""
            sha = hashlib.sha1(json.dumps([parent, message, sorted(tree.items())]).encode()).hexdigest()
            history.append(Commit(sha, message, tree, added))
            return history[-1]


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet; hub.requests is the log
        pass

    def reply(self, status=200, payload=None, body: bytes | None = None, headers=None, error_code=None):
        if error_code:
            headers = {**(headers or {}), "X-Error-Code": error_code, "X-Error-Message": payload["error"]}
        body = json.dumps(payload).encode() if body is None else body
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if payload is not None else "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))  # the real size, for HEAD too: clients size downloads by it
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def route(self, hub: LoopbackHub, path: str, query: dict):
        if path == "/api/repos/create":  # {"name", "organization", "type"}; 200 also when it exists
            request = json.loads(self.body())
            repo_id = f"{request.get('organization') or 'user'}/{request['name']}"
            if request.get("type") == "space" and request.get("sdk") not in ("gradio", "docker", "static"):
                return self.reply(400, {"error": f"a Space needs an sdk, got {request.get('sdk')!r}"})
            prefix = "spaces/" if request.get("type") == "space" else ""
            hub.repos.setdefault(prefix + repo_id, [])
            return self.reply(payload={"url": f"{hub.endpoint}/{prefix}{repo_id}", "name": repo_id})
        match = VARIABLES.match(path)
        if match and self.command == "POST":  # add_space_variable: {"key", "value", "description"}
            if f"spaces/{match['repo']}" not in hub.repos:
                return self.reply(404, {"error": f"Space {match['repo']} not found"}, error_code="RepoNotFound")
            request = json.loads(self.body())
            variables = hub.variables.setdefault(match["repo"], {})
            variables[request["key"]] = request["value"]
            return self.reply(payload={key: {"value": value} for key, value in variables.items()})
        if path == "/api/validate-yaml":  # sent when README.md is uploaded
            self.body()
            return self.reply(payload={"errors": [], "warnings": []})
        match = RESOLVE.match(path) or API.match(path)
        if match is None:
            return self.reply(404, {"error": f"not served here: {self.command} {path}"}, error_code="EndpointNotFound")
        repo_id, action, revision = match["repo"], match.groupdict().get("action", "resolve"), match["rev"] or "main"
        if match["kind"] == "spaces":
            repo_id = f"spaces/{repo_id}"
        if repo_id not in hub.repos:
            return self.reply(404, {"error": f"repository {repo_id} not found"}, error_code="RepoNotFound")
        if action == "preupload":  # every file a regular (inline) upload
            files = json.loads(self.body())["files"]
            return self.reply(payload={"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
        if action == "commit":
            commit = hub.apply(repo_id, [json.loads(line) for line in self.body().splitlines() if line.strip()])
            return self.reply(payload={"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{commit.sha}",
                                       "commitOid": commit.sha})
        commit = hub.commit(repo_id, revision)
        if commit is None:
            return self.reply(404, {"error": f"no revision {revision} in {repo_id}"}, error_code="RevisionNotFound")
        if action in (None, "revision"):  # model_info
            return self.reply(payload={"id": repo_id, "modelId": repo_id, "sha": commit.sha, "private": False,
                                       "siblings": [{"rfilename": name} for name in sorted(commit.tree)]})
        if action == "tree":  # list_repo_tree: the files under `path`
            prefix = f"{match['path'].strip('/')}/" if match["path"] else ""
            recursive = query.get("recursive", ["false"])[0] == "true"
            return self.reply(payload=[
                {"type": "file", "path": name, "oid": oid, "size": (hub.blobs / oid).stat().st_size}
                for name, oid in sorted(commit.tree.items())
                if name.startswith(prefix) and (recursive or "/" not in name[len(prefix):])
            ])
        name, headers = match["path"], {"X-Repo-Commit": commit.sha}  # action "resolve": HEAD or GET of a file
        if name not in commit.tree:
            return self.reply(404, {"error": f"{name} not in {repo_id}"}, headers=headers, error_code="EntryNotFound")
        oid = commit.tree[name]
        self.reply(body=(hub.blobs / oid).read_bytes(), headers={**headers, "ETag": f'"{oid}"'})

    def handle_request(self):
        url = urlsplit(self.path)
        path, hub = unquote(url.path), self.server.hub
        hub.requests.append(f"{self.command} {path}")
        try:
            self.route(hub, path, parse_qs(url.query))
        except Exception as error:  # answer, so the client reports the problem rather than a dropped connection
            self.reply(500, {"error": f"{type(error).__name__}: {error}"})

    do_GET = do_HEAD = do_POST = handle_request
