#include "testutil.hpp"

#include <openssl/evp.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <stdexcept>

namespace luksforge::test {

TempDir::TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/luksforge-test-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) throw std::runtime_error("mkdtemp failed: " + std::string(std::strerror(errno)));
    path_ = templ;
}

TempDir::~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

RunResult run(const std::vector<std::string>& argv, const std::string& input, const std::vector<int>& extra_fds) {
    if (argv.empty()) throw std::invalid_argument("run: empty argv");
    int in_pipe[2], out_pipe[2], err_pipe[2];
    if (::pipe2(in_pipe, O_CLOEXEC) != 0 || ::pipe2(out_pipe, O_CLOEXEC) != 0 || ::pipe2(err_pipe, O_CLOEXEC) != 0)
        throw std::runtime_error("pipe failed");
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
        ::dup2(in_pipe[0], 0);
        ::dup2(out_pipe[1], 1);
        ::dup2(err_pipe[1], 2);
        for (int fd : extra_fds) {
            const int flags = ::fcntl(fd, F_GETFD);
            if (flags >= 0) ::fcntl(fd, F_SETFD, flags & ~FD_CLOEXEC);
        }
        ::execvp(args[0], args.data());
        const std::string msg = "exec " + argv[0] + " failed: " + std::strerror(errno) + "\n";
        (void)!::write(2, msg.data(), msg.size());
        ::_exit(127);
    }
    ::close(in_pipe[0]);
    ::close(out_pipe[1]);
    ::close(err_pipe[1]);
    // Feed stdin and drain stdout/stderr together, so a chatty child never blocks on a full pipe.
    RunResult result;
    std::size_t written = 0;
    int in_fd = in_pipe[1];
    if (input.empty()) {
        ::close(in_fd);
        in_fd = -1;
    }
    ::signal(SIGPIPE, SIG_IGN);
    bool out_open = true, err_open = true;
    while (out_open || err_open || in_fd >= 0) {
        std::array<pollfd, 3> fds{};
        int n = 0;
        int out_i = -1, err_i = -1, in_i = -1;
        if (out_open) { fds[n] = {out_pipe[0], POLLIN, 0}; out_i = n++; }
        if (err_open) { fds[n] = {err_pipe[0], POLLIN, 0}; err_i = n++; }
        if (in_fd >= 0) { fds[n] = {in_fd, POLLOUT, 0}; in_i = n++; }
        if (::poll(fds.data(), n, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        char buffer[65536];
        const auto drain = [&](int idx, int fd, std::string& into, bool& open) {
            if (idx < 0 || fds[idx].revents == 0) return;
            const ssize_t got = ::read(fd, buffer, sizeof buffer);
            if (got > 0) into.append(buffer, static_cast<std::size_t>(got));
            else if (got == 0 || errno != EINTR) open = false;
        };
        drain(out_i, out_pipe[0], result.out, out_open);
        drain(err_i, err_pipe[0], result.err, err_open);
        if (in_i >= 0 && fds[in_i].revents != 0) {
            const ssize_t put = ::write(in_fd, input.data() + written, input.size() - written);
            if (put > 0) written += static_cast<std::size_t>(put);
            if (put < 0 && errno != EINTR) written = input.size();
            if (written >= input.size()) {
                ::close(in_fd);
                in_fd = -1;
            }
        }
    }
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return result;
}

RunResult run_cli(const std::vector<std::string>& args, const std::string& input, const std::vector<int>& extra_fds) {
    std::vector<std::string> argv{LUKSFORGE_CLI};
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv, input, extra_fds);
}

std::string run_ok(const std::vector<std::string>& argv, const std::string& input) {
    RunResult r = run(argv, input);
    if (r.exit_code != 0) {
        std::string cmd;
        for (const auto& a : argv) cmd += a + " ";
        throw std::runtime_error(cmd + "failed with " + std::to_string(r.exit_code) + ": " + r.err);
    }
    return r.out;
}

void make_sparse_file(const std::filesystem::path& path, std::uint64_t bytes) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) throw std::runtime_error("cannot create " + path.string());
    const int rc = ::ftruncate(fd, static_cast<off_t>(bytes));
    ::close(fd);
    if (rc != 0) throw std::runtime_error("cannot size " + path.string());
}

void write_file(const std::filesystem::path& path, const std::string& data) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) throw std::runtime_error("cannot create " + path.string());
    std::size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n <= 0) {
            ::close(fd);
            throw std::runtime_error("cannot write " + path.string());
        }
        done += static_cast<std::size_t>(n);
    }
    ::close(fd);
}

std::string read_file_bytes(const std::filesystem::path& path, std::uint64_t offset, std::uint64_t length) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("cannot open " + path.string());
    std::string data;
    char buffer[1 << 16];
    std::uint64_t position = offset;
    for (;;) {
        std::size_t want = sizeof buffer;
        if (length != 0) {
            if (data.size() >= length) break;
            want = static_cast<std::size_t>(std::min<std::uint64_t>(want, length - data.size()));
        }
        const ssize_t n = ::pread(fd, buffer, want, static_cast<off_t>(position));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        data.append(buffer, static_cast<std::size_t>(n));
        position += static_cast<std::uint64_t>(n);
    }
    ::close(fd);
    return data;
}

std::string sha256_hex(const std::string& data) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr);
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < len; ++i) {
        out += hex[digest[i] >> 4];
        out += hex[digest[i] & 15];
    }
    return out;
}

std::string sha256_file(const std::filesystem::path& path, std::uint64_t offset, std::uint64_t length) {
    return sha256_hex(read_file_bytes(path, offset, length));
}

LoopDevice::LoopDevice(const std::filesystem::path& backing, std::optional<std::uint64_t> offset,
                       std::optional<std::uint64_t> size_limit, bool partscan) {
    std::vector<std::string> argv{"losetup", "--find", "--show"};
    if (offset) argv.insert(argv.end(), {"--offset", std::to_string(*offset)});
    if (size_limit) argv.insert(argv.end(), {"--sizelimit", std::to_string(*size_limit)});
    if (partscan) argv.push_back("--partscan");
    argv.push_back(backing.string());
    std::string out = run_ok(argv);
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    if (out.empty()) throw std::runtime_error("losetup printed no device");
    path_ = out;
}

void LoopDevice::detach() noexcept {
    if (path_.empty()) return;
    try {
        // udev or a just-closed holder can keep the device briefly busy: retry a few times.
        for (int attempt = 0; attempt < 20; ++attempt) {
            if (run({"losetup", "--detach", path_.string()}).exit_code == 0) break;
            ::usleep(100000);
        }
    } catch (...) {
    }
    path_.clear();
}

LoopDevice::~LoopDevice() { detach(); }

bool have_program(const std::string& name) {
    const char* path = std::getenv("PATH");
    std::string dirs = path != nullptr ? path : "/usr/sbin:/usr/bin:/sbin:/bin";
    std::size_t start = 0;
    while (start <= dirs.size()) {
        const std::size_t end = std::min(dirs.find(':', start), dirs.size());
        const std::filesystem::path candidate = std::filesystem::path(dirs.substr(start, end - start)) / name;
        if (::access(candidate.c_str(), X_OK) == 0) return true;
        start = end + 1;
    }
    return false;
}

}  // namespace luksforge::test
