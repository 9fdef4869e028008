// Shared fixtures for luksforge's C++ tests: temporary directories, running programs without a shell, sparse
// image files, loop devices (always detached), file bytes and hashes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace luksforge::test {

// A fresh directory under /tmp (or $TMPDIR), removed recursively when the object dies.
class TempDir {
public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::filesystem::path& path() const noexcept { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

private:
    std::filesystem::path path_;
};

struct RunResult {
    int exit_code = -1;       // exit status, or 128+signal when killed
    std::string out;          // stdout
    std::string err;          // stderr
};

// Run argv[0] (searched in PATH) with `args` via fork/exec — no shell — feeding `input` on stdin.
// `extra_fds`: file descriptors to keep open in the child (e.g. for --passphrase-fd tests).
RunResult run(const std::vector<std::string>& argv, const std::string& input = {},
              const std::vector<int>& extra_fds = {});
// Run the luksforge CLI built by this tree (LUKSFORGE_CLI) with `args`.
RunResult run_cli(const std::vector<std::string>& args, const std::string& input = {},
                  const std::vector<int>& extra_fds = {});
// Like run() but throw std::runtime_error (with stderr) unless the exit code is 0.
std::string run_ok(const std::vector<std::string>& argv, const std::string& input = {});

// Create (or truncate) a sparse file of `bytes`.
void make_sparse_file(const std::filesystem::path& path, std::uint64_t bytes);
// Write `data` to `path` (created 0600, truncated).
void write_file(const std::filesystem::path& path, const std::string& data);
// Bytes [offset, offset+length) of a file or device (shorter at end of file); length 0 = to the end.
std::string read_file_bytes(const std::filesystem::path& path, std::uint64_t offset = 0, std::uint64_t length = 0);
std::string sha256_hex(const std::string& data);
std::string sha256_file(const std::filesystem::path& path, std::uint64_t offset = 0, std::uint64_t length = 0);

// A loop device over a file (`losetup --find --show`), optionally a window of it; detached when destroyed.
class LoopDevice {
public:
    explicit LoopDevice(const std::filesystem::path& backing, std::optional<std::uint64_t> offset = std::nullopt,
                        std::optional<std::uint64_t> size_limit = std::nullopt, bool partscan = false);
    ~LoopDevice();
    LoopDevice(const LoopDevice&) = delete;
    LoopDevice& operator=(const LoopDevice&) = delete;
    const std::filesystem::path& path() const noexcept { return path_; }
    void detach() noexcept;

private:
    std::filesystem::path path_;
};

// Whether a program exists on PATH.
bool have_program(const std::string& name);

}  // namespace luksforge::test
