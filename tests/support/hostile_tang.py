#!/usr/bin/python3
"""A hostile "Tang" server on 127.0.0.1 for tests/test_hostile_tang.cpp: every way a server (or whoever answers
in its place) can misbehave, one per --mode. Stdlib only (Debian's python3); never resolves or contacts any host
but 127.0.0.1.

Modes (GET /adv..., POST /rec/...):
  huge-adv       /adv: 200 with Content-Length 4 GiB, then bytes as fast as the client reads
  endless-adv    /adv: chunked, chunks forever
  drip-adv       /adv: headers, then a one-byte chunk every second, forever
  redirect       every request: 302 to http://10.255.255.1:9/ (another host)
  wrong-type     /adv: the --adv file with Content-Type text/html
  adv-file       /adv: the --adv file (invalid curves, points off the curve, mismatched kids: the test crafts it)
  huge-rec       /rec: 200 with an endless body
  stall-rec      /rec: reads the request, then never answers (the client's total timeout must end it)
  rec-file       /rec: the --rec file (a reply off the curve, on the wrong curve, ...)
  proxy-rec      /rec: forwarded to --upstream (a real tangd on 127.0.0.1): the honest answer, or a wrong one when
                 the upstream holds other keys
"""
import argparse
import http.client
import http.server
import socketserver
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    args = None

    def log_message(self, fmt, *a):  # quiet: the test prints the client's errors
        pass

    def send_body(self, body, ctype="application/jose+json", status=200):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def endless(self, chunked, drip=False):
        self.send_response(200)
        self.send_header("Content-Type", "application/jose+json")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(4 << 30))
        self.end_headers()
        block = b"A" * (1 if drip else 65536)
        try:
            while True:
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                else:
                    self.wfile.write(block)
                self.wfile.flush()
                if drip:
                    time.sleep(1)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def read_file(self, path):
        with open(path, "rb") as f:
            return f.read()

    def do_GET(self):
        mode = self.args.mode
        if mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "http://10.255.255.1:9" + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif mode == "huge-adv":
            self.endless(chunked=False)
        elif mode == "endless-adv":
            self.endless(chunked=True)
        elif mode == "drip-adv":
            self.endless(chunked=True, drip=True)
        elif mode == "wrong-type":
            self.send_body(self.read_file(self.args.adv), "text/html; charset=utf-8")
        elif self.args.adv:
            self.send_body(self.read_file(self.args.adv))
        else:
            self.send_body(b"{}", status=404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        request = self.rfile.read(min(length, 1 << 20))
        mode = self.args.mode
        if mode == "redirect":
            return self.do_GET()
        if mode == "huge-rec":
            return self.endless(chunked=True)
        if mode == "stall-rec":
            time.sleep(3600)
            return None
        if mode == "rec-file":
            return self.send_body(self.read_file(self.args.rec), "application/jwk+json")
        if mode == "proxy-rec":
            host, port = self.args.upstream.split(":")
            if host != "127.0.0.1":
                raise SystemExit("upstream must be on 127.0.0.1")
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("POST", self.path, body=request, headers={"Content-Type": "application/jwk+json"})
            reply = conn.getresponse()
            body = reply.read()
            return self.send_body(body, "application/jwk+json", reply.status)
        self.send_body(b"{}", status=404)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", required=True)
    parser.add_argument("--adv")
    parser.add_argument("--rec")
    parser.add_argument("--upstream")
    Handler.args = parser.parse_args()
    server = Server(("127.0.0.1", Handler.args.port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
