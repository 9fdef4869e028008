// Internal: what seal, stamp and clone share — names and records for the ledger, the test-only crash hook,
// the seal state record in the header, reading bindings back from tokens, re-keying to completion and the
// temporary files instances are built in. Helpers used by one operation stay in its file.
#pragma once

#include <luksforge/image.hpp>
#include <luksforge/ledger.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/pin.hpp>
#include <luksforge/pipeline.hpp>
#include <luksforge/policy.hpp>

#include "util/json_util.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace luksforge::detail {

// --- common.cpp ---------------------------------------------------------------------------------------------

// `path` made absolute and normalised (as given when that fails): how reports and the ledger name files.
std::string absolute_string(const std::filesystem::path& path);

// The ledger's name for a volume: the image's absolute path, plus " partition N" for a partition of it.
std::string ledger_image_name(const std::filesystem::path& image, std::optional<int> partition);
std::string ledger_image_name(const LuksTarget& target);

LedgerRecord ledger_record(std::string fingerprint, std::string image, std::string uuid, const PolicySource& policy,
                           std::string event);

class Stopwatch {
public:
    double seconds() const {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }

private:
    std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// The test-only crash hook (see pipeline.hpp): SIGKILL when LUKSFORGE_CRASH_AT names `step`, SIGSTOP (the
// test continues the process later) when LUKSFORGE_STOP_AT does.
void crash_point(const char* step);

// Give a reservation back after a failure without hiding the failure (a lost database lets its lease expire).
void release_quietly(std::optional<Ledger>& ledger, const std::optional<std::int64_t>& reservation) noexcept;

// Make a rename or create in `directory` durable (best effort).
void fsync_directory(const std::filesystem::path& directory);

// Re-key `volume` until re-encryption completes (resuming one in progress), dropping orphaned tokens.
// `crash_hook` arms the "rekey-progress" crash point (and its 4 MiB hotzones when `hotzone_bytes` is 0).
void rekey_to_completion(Volume& volume, const std::vector<std::string_view>& passphrases, bool drop_others,
                         const std::function<void(std::uint64_t, std::uint64_t)>& on_progress, bool crash_hook,
                         std::uint64_t hotzone_bytes = 0);

// Clevis tokens whose keyslots are all gone (e.g. dropped by a re-key) open nothing: remove them.
void remove_dead_clevis_tokens(Volume& volume);

// Unlinks a temporary file unless dismissed.
class TemporaryFile {
public:
    explicit TemporaryFile(std::filesystem::path path) : path_(std::move(path)) {}
    TemporaryFile(const TemporaryFile&) = delete;
    TemporaryFile& operator=(const TemporaryFile&) = delete;
    ~TemporaryFile() {
        if (!path_.empty()) ::unlink(path_.c_str());
    }
    void dismiss() noexcept { path_.clear(); }

private:
    std::filesystem::path path_;
};

// Rename without ever replacing an existing file (Error with EEXIST when `to` exists).
void rename_no_replace(const std::filesystem::path& from, const std::filesystem::path& to);

// Remove hidden `.NAME.PID.partial` files in `dir` whose process is gone (killed mid-instance or mid-copy).
void remove_stale_partials(const std::filesystem::path& dir);

// --- binding_info.cpp ---------------------------------------------------------------------------------------

// The Tang servers (URL, exchange and signing thumbprints) a Clevis JWE depends on, sss children included.
void collect_servers(std::string_view compact_jwe, std::vector<TangServer>& servers, int depth = 0);

// The configuration that binds to the same servers and advertisements as `compact_jwe` did; {pin, config}.
std::pair<std::string, JsonPtr> config_from_jwe(std::string_view compact_jwe, int depth = 0);

// The clevis token assigned to `keyslot`, if any.
std::optional<Token> clevis_token_for(const Volume& volume, int keyslot);

// The binding part of a seal report (keyslot, token, pin, config, servers) from the token of `keyslot`.
void fill_binding_report(SealReport& report, const Volume& volume, int keyslot);

// --- seal_state.cpp -----------------------------------------------------------------------------------------

// seal's progress, kept in the LUKS2 header as a keyslot-less token of type "luksforge-seal".
struct SealState {
    int token = -1;
    std::string step;                 // "rekey", "bind", "verify", "remove-build-passphrase"
    std::string fingerprint_before;
    std::string started_at;
    std::optional<int> pending_keyslot;
    // The keyslots the build passphrase opened when the bind began (after the re-key): removed at the end even
    // when a rerun gets its passphrase from the new binding (lmc-postbuild.py recovers it through Tang).
    std::vector<int> build_keyslots;
};

// The room seal/stamp need in `volume` for a token like the one `binding` makes, replacing `replaced_token_bytes`
// of token: FormatError, before anything is written, saying what is too big.
void require_header_room(const Volume& volume, const PinBinding& binding, const PinOptions& pin_options,
                         PipelineSteps steps, const std::string& what);

std::optional<SealState> read_state(const Volume& volume);
// One atomic LUKS2 header write; sets state.token on the first write.
void write_state(Volume& volume, SealState& state);

}  // namespace luksforge::detail
