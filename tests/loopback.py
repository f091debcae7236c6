"""A file server on 127.0.0.1 for download tests: serves <root>/<url path>; files named in `cut` stop halfway.

It records each request's path (`requests`) and headers (`request_headers`)."""
import http.server
import threading
from pathlib import Path


class FileServer:
    def __init__(self, root: Path):
        self.root, self.cut, self.requests, self.request_headers = Path(root), set(), [], []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                server.request_headers.append(dict(self.headers))
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))  # announces the whole file, even when cut
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if path.name in server.cut else body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
