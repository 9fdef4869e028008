// The key ledger: an SQLite database recording every volume-key fingerprint luksforge produced or copied,
// with image name, LUKS UUID, time, policy and event. It answers "how many instances share this key?" and
// refuses, atomically, to let that number exceed a policy's maximum.
//
// Default path /var/lib/luksforge/ledger.db (directory created 0700, database 0600). Safe with concurrent
// writers: WAL journal, a busy timeout, and every check-then-insert in one BEGIN IMMEDIATE transaction.
#pragma once

#include <luksforge/error.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

struct sqlite3;

namespace luksforge {

// Recording one more instance would exceed the maximum number of instances allowed to share a volume key.
class LimitError : public Error {
public:
    explicit LimitError(const std::string& message) : Error(EDQUOT, message) {}
};

struct LedgerRecord {
    std::int64_t id = 0;              // assigned by the ledger
    std::string fingerprint;          // Inspection::fingerprint of the volume key
    std::string image;                // image path (absolute), plus " partition N" for a partition
    std::string uuid;                 // LUKS UUID
    std::string time;                 // UTC, ISO 8601 ("2026-11-29T10:57:45Z"); filled in when empty
    std::string policy_path;          // empty when no policy applied
    std::string policy_hash;          // SHA-256 (hex) of the policy file's bytes
    std::string event;                // "sealed", "stamped", "cloned"
};

class Ledger {
public:
    static std::filesystem::path default_path();  // /var/lib/luksforge/ledger.db

    // Open (creating it, its directory and its schema when missing). Throws Error with SQLite's message.
    static Ledger open(const std::filesystem::path& path = default_path());

    Ledger(Ledger&&) noexcept;
    Ledger& operator=(Ledger&&) noexcept;
    Ledger(const Ledger&) = delete;
    Ledger& operator=(const Ledger&) = delete;
    ~Ledger() noexcept;

    sqlite3* native_handle() const noexcept;
    const std::filesystem::path& path() const noexcept;

    // Append a record unconditionally. Returns its id.
    std::int64_t record(LedgerRecord record);
    // Append a record only if afterwards at most `max_instances` distinct images carry its fingerprint; the
    // count and the insert are one transaction, so concurrent reservations never overshoot. Throws LimitError.
    // An image already recorded under the fingerprint does not count twice.
    std::int64_t reserve(LedgerRecord record, std::uint64_t max_instances);
    // Drop a record again (a reservation whose image was never completed). No-op for an unknown id.
    void release(std::int64_t id);

    // Distinct images recorded with this fingerprint.
    std::uint64_t count_instances(const std::string& fingerprint) const;
    // All records, or those of one fingerprint, oldest first.
    std::vector<LedgerRecord> records(const std::optional<std::string>& fingerprint = std::nullopt) const;

private:
    struct Impl;
    explicit Ledger(std::unique_ptr<Impl> impl) noexcept;
    std::unique_ptr<Impl> impl_;
};

// Current UTC time as ISO 8601 with seconds ("2026-11-29T10:57:45Z").
std::string utc_timestamp();

}  // namespace luksforge
