// Small pieces seal, stamp and clone share: names and records for the ledger, the crash hook, durable
// renames, re-keying to completion, and reading the policy file.
#include "pipeline/pipeline_internal.hpp"

#include <luksforge/error.hpp>
#include <luksforge/ledger.hpp>
#include <luksforge/pipeline.hpp>

#include "util/digest.hpp"

#include <fcntl.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>

namespace luksforge {

namespace detail {

std::string absolute_string(const std::filesystem::path& path) {
    std::error_code ec;
    auto absolute = std::filesystem::absolute(path, ec);
    return (ec ? path : absolute.lexically_normal()).string();
}

// The ledger's name for a volume: the image's absolute path, plus " partition N" for a partition of it.
std::string ledger_image_name(const std::filesystem::path& image, std::optional<int> partition) {
    std::string name = absolute_string(image);
    if (partition) name += " partition " + std::to_string(*partition);
    return name;
}

std::string ledger_image_name(const LuksTarget& target) { return ledger_image_name(target.image, target.partition); }

LedgerRecord ledger_record(std::string fingerprint, std::string image, std::string uuid, const PolicySource& policy,
                           std::string event) {
    LedgerRecord record;
    record.fingerprint = std::move(fingerprint);
    record.image = std::move(image);
    record.uuid = std::move(uuid);
    record.policy_path = policy.path.string();
    record.policy_hash = policy.sha256;
    record.event = std::move(event);
    return record;
}

// The test-only crash hook (see pipeline.hpp).
void crash_point(const char* step) {
    const char* wanted = std::getenv("LUKSFORGE_CRASH_AT");
    if (wanted != nullptr && std::strcmp(wanted, step) == 0) ::kill(::getpid(), SIGKILL);
    const char* stop = std::getenv("LUKSFORGE_STOP_AT");
    if (stop != nullptr && std::strcmp(stop, step) == 0) ::kill(::getpid(), SIGSTOP);
}

void release_quietly(std::optional<Ledger>& ledger, const std::optional<std::int64_t>& reservation) noexcept {
    if (!ledger || !reservation) return;
    try {
        ledger->release(*reservation);
    } catch (...) {
    }
}

void fsync_directory(const std::filesystem::path& directory) {
    int fd = ::open(directory.empty() ? "." : directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    ::fsync(fd);
    ::close(fd);
}

void rekey_to_completion(Volume& volume, const std::vector<std::string_view>& passphrases, bool drop_others,
                         const std::function<void(std::uint64_t, std::uint64_t)>& on_progress, bool crash_hook,
                         std::uint64_t hotzone_bytes) {
    RekeyOptions options;
    options.drop_other_keyslots = drop_others;
    options.drop_orphaned_tokens = true;  // a dropped keyslot's token opens nothing
    // libcryptsetup's default hotzone holds up to 1 GiB of the image in memory at once; 32 MiB bounds the
    // process at ~60 MiB for any image size, at a small cost in speed (more header commits).
    constexpr std::uint64_t bounded_hotzone_bytes = 32ull << 20;
    options.max_hotzone_bytes = hotzone_bytes != 0 ? hotzone_bytes : bounded_hotzone_bytes;
    if (crash_hook && hotzone_bytes == 0) {
        const char* wanted = std::getenv("LUKSFORGE_CRASH_AT");
        if (wanted != nullptr && std::strcmp(wanted, "rekey-progress") == 0) options.max_hotzone_bytes = 4 << 20;
    }
    options.progress = [&](const RekeyProgress& p) {
        if (on_progress) on_progress(p.done_bytes, p.total_bytes);
        if (crash_hook && p.done_bytes > 0 && p.done_bytes < p.total_bytes) crash_point("rekey-progress");
        return true;
    };
    for (int round = 0; round < 1000; ++round)
        if (volume.rekey(passphrases, options).completed) return;
    throw Error(EIO, "re-encryption of " + volume.path().string() + " does not finish");
}

// Clevis tokens whose keyslots are all gone (e.g. dropped by a re-key) open nothing: remove them.
void remove_dead_clevis_tokens(Volume& volume) {
    for (const Token& token : volume.tokens()) {
        if (token.type != "clevis") continue;
        bool alive = std::any_of(token.keyslots.begin(), token.keyslots.end(),
                                 [&](int slot) { return volume.keyslot(slot).has_value(); });
        if (!alive) volume.remove_token(token.id);
    }
}

// Rename without ever replacing an existing file.
void rename_no_replace(const std::filesystem::path& from, const std::filesystem::path& to) {
    if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return;
    if (errno == EEXIST) throw Error(EEXIST, to.string() + " already exists");
    throw Error(errno, "cannot rename " + from.string() + " to " + to.string() + ": " + std::strerror(errno));
}

namespace {

// The process that writes a hidden `.NAME.PID.partial` file; none for other names.
std::optional<pid_t> partial_writer(const std::string& name) {
    if (!name.starts_with(".") || !name.ends_with(".partial")) return std::nullopt;
    const std::string rest = name.substr(0, name.size() - 8);
    const std::size_t dot = rest.rfind('.');
    if (dot == std::string::npos) return std::nullopt;
    const std::string pid_text = rest.substr(dot + 1);
    if (pid_text.empty() || pid_text.size() > 9 ||
        !std::all_of(pid_text.begin(), pid_text.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return std::nullopt;
    return static_cast<pid_t>(std::stol(pid_text));
}

bool process_gone(pid_t pid) { return ::kill(pid, 0) != 0 && errno == ESRCH; }

// A `.NAME.PID.partial` in `dir` whose process lives: an image is being made (or published) there.
bool live_partials(const std::filesystem::path& dir) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec))
        if (auto pid = partial_writer(entry.path().filename().string()); pid && !process_gone(*pid)) return true;
    return false;
}

// The file of a ledger image name ("/path/disk.img partition 2" → "/path/disk.img").
std::filesystem::path ledger_image_file(const std::string& image) {
    const std::size_t at = image.rfind(" partition ");
    if (at == std::string::npos) return image;
    const std::string number = image.substr(at + 11);
    if (number.empty() || !std::all_of(number.begin(), number.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return image;
    return image.substr(0, at);
}

}  // namespace

// Hidden `.NAME.PID.partial` files whose process is gone (killed mid-instance).
void remove_stale_partials(const std::filesystem::path& dir) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec))
        if (auto pid = partial_writer(entry.path().filename().string()); pid && process_gone(*pid))
            ::unlink(entry.path().c_str());
}

}  // namespace detail

using detail::absolute_string;
using detail::sha256_hex;

// --- ledger prune -----------------------------------------------------------------------------------------------

std::vector<LedgerRecord> prune_ledger(Ledger& ledger, const std::vector<std::filesystem::path>& dirs, bool dry_run) {
    if (dirs.empty()) throw FormatError("ledger prune needs at least one directory");
    std::vector<std::filesystem::path> wanted;
    for (const auto& dir : dirs) wanted.emplace_back(absolute_string(dir));
    const std::string host = ledger_host_name();
    std::vector<LedgerRecord> dropped;
    for (const LedgerRecord& r : ledger.records()) {
        // Only what this host committed: another builder's image of the same path is on its own disk, and a
        // reservation comes back by itself when its lease ends.
        if (r.state != "committed" || r.host != host) continue;
        const std::filesystem::path file = detail::ledger_image_file(r.image);
        const std::filesystem::path dir = file.parent_path();
        if (std::find(wanted.begin(), wanted.end(), dir) == wanted.end()) continue;
        // A live writer's partial first, then the image: a builder commits while its partial exists and renames
        // it into place afterwards, so a record seen committed with neither is one whose builder died between.
        if (detail::live_partials(dir)) continue;
        std::error_code ec;
        const auto status = std::filesystem::symlink_status(file, ec);
        if (status.type() != std::filesystem::file_type::not_found) continue;
        if (!dry_run) ledger.release(r.id);
        dropped.push_back(r);
    }
    return dropped;
}

// --- policy source ----------------------------------------------------------------------------------------------

PolicySource policy_source(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw NotFoundError("cannot read policy " + path.string());
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return {std::filesystem::path(absolute_string(path)), sha256_hex(bytes)};
}

}  // namespace luksforge
