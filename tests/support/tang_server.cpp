// Real Tang and scripted bad servers for the tests (see tang_server.hpp).
#include "tang_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <thread>

namespace luksforge::test {
namespace {

bool port_accepts(int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    return ok;
}

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
    return s;
}

}  // namespace

int free_loopback_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw std::runtime_error("socket() failed");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = 0;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        ::close(fd);
        throw std::runtime_error("cannot find a free loopback port");
    }
    ::close(fd);
    return ntohs(addr.sin_port);
}

pid_t start_socat(int port, const std::string& exec_command) {
    const std::string listen = "TCP-LISTEN:" + std::to_string(port) + ",bind=127.0.0.1,reuseaddr,fork";
    const std::string exec = "EXEC:" + exec_command;
    pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
        // Own process group, so stop_process() also ends the per-connection children.
        ::setpgid(0, 0);
        int null = ::open("/dev/null", O_RDWR);
        if (null >= 0) {
            ::dup2(null, 0);
            ::dup2(null, 1);
            ::dup2(null, 2);
        }
        ::execlp("socat", "socat", listen.c_str(), exec.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    ::setpgid(pid, pid);
    for (int i = 0; i < 200; ++i) {
        if (port_accepts(port)) return pid;
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) == pid) throw std::runtime_error("socat exited at once on port " +
                                                                             std::to_string(port));
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pid_t doomed = pid;
    stop_process(doomed);
    throw std::runtime_error("socat did not listen on port " + std::to_string(port));
}

void stop_process(pid_t& pid) noexcept {
    if (pid <= 0) return;
    ::kill(-pid, SIGTERM);
    ::kill(pid, SIGTERM);
    int status = 0;
    for (int i = 0; i < 100; ++i) {
        if (::waitpid(pid, &status, WNOHANG) == pid) {
            pid = -1;
            return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(-pid, SIGKILL);
    ::kill(pid, SIGKILL);
    ::waitpid(pid, &status, 0);
    pid = -1;
}

TangServer::TangServer() : keys_(dir_ / "db") {
    std::filesystem::create_directory(keys_);
    run_ok({"/usr/libexec/tangd-keygen", keys_.string()});
    start();
}

TangServer::~TangServer() { stop_process(pid_); }

std::string TangServer::url() const { return "http://127.0.0.1:" + std::to_string(port_); }

void TangServer::start() {
    if (pid_ > 0) return;
    // A fresh port each start: a stopped server's port may linger in TIME_WAIT for clients.
    if (port_ == 0) port_ = free_loopback_port();
    pid_ = start_socat(port_, "/usr/libexec/tangd " + keys_.string());
    // tangd runs per connection: make sure it answers, not just that socat listens.
    for (int i = 0; i < 100; ++i) {
        if (run({"curl", "-sf", "-o", "/dev/null", url() + "/adv"}).exit_code == 0) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    throw std::runtime_error("Tang server on " + url() + " does not answer");
}

void TangServer::stop() { stop_process(pid_); }

void TangServer::rotate() { run_ok({"/usr/libexec/tangd-rotate-keys", "-d", keys_.string()}); }

std::filesystem::path TangServer::signing_key_file() const {
    for (const auto& entry : std::filesystem::directory_iterator(keys_)) {
        const std::string name = entry.path().filename().string();
        if (name.empty() || name[0] == '.' || entry.path().extension() != ".jwk") continue;
        // `jose jwk use -u verify` succeeds only for keys allowed to verify: the signing key.
        if (run({"jose", "jwk", "use", "-i", entry.path().string(), "-u", "verify"}).exit_code == 0)
            return entry.path();
    }
    throw std::runtime_error("no signing key in " + keys_.string());
}

std::string TangServer::thumbprint() const {
    return trim(run_ok({"jose", "jwk", "thp", "-i", signing_key_file().string()}));
}

std::string TangServer::thumbprint_s1() const {
    return trim(run_ok({"jose", "jwk", "thp", "-a", "S1", "-i", signing_key_file().string()}));
}

std::string TangServer::advertisement() const { return run_ok({"curl", "-sf", url() + "/adv"}); }

BadServer::BadServer(int status, const std::string& body, double delay_seconds) {
    const auto body_file = dir_ / "body";
    write_file(body_file, body);
    const auto script = dir_ / "serve.sh";
    char delay[32];
    std::snprintf(delay, sizeof delay, "%.3f", delay_seconds);
    std::ofstream out(script);
    out << "#!/bin/sh\n"
           "# Read the request head up to the empty line, then answer with the canned response.\n"
           "while IFS= read -r line; do\n"
           "  case \"$line\" in ''|$(printf '\\r')) break;; esac\n"
           "done\n"
        << ": > '" << (dir_ / "requested").string() << "'\n"
        << "sleep " << delay << "\n"
        << "printf 'HTTP/1.1 " << status << " Canned\\r\\nContent-Type: application/json\\r\\n"
        << "Content-Length: " << body.size() << "\\r\\nConnection: close\\r\\n\\r\\n'\n"
        << "cat '" << body_file.string() << "'\n";
    out.close();
    ::chmod(script.c_str(), 0700);
    port_ = free_loopback_port();
    pid_ = start_socat(port_, script.string());
}

BadServer::~BadServer() { stop_process(pid_); }

std::string BadServer::url() const { return "http://127.0.0.1:" + std::to_string(port_); }

bool BadServer::requested() const { return std::filesystem::exists(dir_ / "requested"); }

namespace {

// Start a non-blocking connect to 127.0.0.1:port; true when it completes within `wait_ms`.
bool connects_within(int fd, int port, int wait_ms) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return true;
    if (errno != EINPROGRESS) throw std::runtime_error("connect to the filled listener failed at once");
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, wait_ms) != 1) return false;
    int error = 0;
    socklen_t length = sizeof error;
    return ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error == 0;
}

}  // namespace

UnansweredServer::UnansweredServer() {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (listener_ < 0) throw std::runtime_error("socket() failed");
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) != 0 || ::listen(listener_, 0) != 0) {
        ::close(listener_);
        throw std::runtime_error("cannot listen on 127.0.0.1");
    }
    port_ = ntohs(addr.sin_port);
    // Connect until one connection does not complete: the accept queue is full and SYNs are being dropped.
    // (Linux keeps backlog + 1 connections, so this takes two or three; a few more in case of slack.)
    for (int i = 0; i < 16; ++i) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) break;
        fillers_.push_back(fd);
        if (!connects_within(fd, port_, 300)) return;
    }
    for (int fd : fillers_) ::close(fd);
    ::close(listener_);
    throw std::runtime_error("could not fill the accept queue of a loopback listener");
}

UnansweredServer::~UnansweredServer() {
    for (int fd : fillers_) ::close(fd);
    if (listener_ >= 0) ::close(listener_);
}

std::string UnansweredServer::url() const { return "http://127.0.0.1:" + std::to_string(port_); }

}  // namespace luksforge::test
