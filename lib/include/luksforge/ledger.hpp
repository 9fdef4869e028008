// The key ledger: a database recording every volume-key fingerprint luksforge produced or copied, with image
// name, LUKS UUID, time, policy and event. It answers "how many instances share this key?" and refuses,
// atomically, to let that number exceed a policy's maximum.
//
// Two backends, chosen by the location: a file path is an SQLite database (the default,
// /var/lib/luksforge/ledger.db, directory created 0700, database 0600; WAL journal, busy timeout, every
// check-then-insert in one BEGIN IMMEDIATE transaction); a postgresql:// URL is a PostgreSQL database shared by
// a build farm (each check-then-insert in one transaction under an advisory lock per fingerprint). A URL must
// not carry a password: libpq reads it from PGPASSFILE (~/.pgpass) or a service file.
//
// Making an instance is reserve() before the copy, commit() once it exists, release() when it failed. A
// reservation holds its slot for a lease (LUKSFORGE_LEDGER_LEASE_SECONDS, default 900 s, the database's clock):
// a builder killed mid-copy gives the slot back when the lease runs out, and a commit after that re-checks the
// limit. A record names the host that made it, so `ledger prune` (prune_ledger in pipeline.hpp) gives back
// only this host's slots whose image never appeared. The schema carries its version (table schema_version) and
// is migrated when a ledger is opened.
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
    std::string host;                 // the builder's host name (gethostname); filled in when empty
    std::string state;                // read back: "committed", "reserved", or "expired" (a lease ran out)
    std::int64_t lease_expires = 0;   // read back: Unix time a reservation's lease ends
    std::uint64_t max_instances = 0;  // read back: the limit it was reserved under (0: recorded unconditionally)
};

class Ledger {
public:
    static std::filesystem::path default_path();  // /var/lib/luksforge/ledger.db
    // $LUKSFORGE_LEDGER when set, else default_path().
    static std::filesystem::path default_location();
    // True for a postgresql:// (or postgres://) URL.
    static bool is_url(const std::filesystem::path& location);

    // Open a ledger file (creating it, its directory and its schema when missing) or connect to a
    // postgresql:// URL (creating or migrating the schema). Throws Error with the database's message,
    // FormatError for a URL with a password or a schema newer than this luksforge.
    static Ledger open(const std::filesystem::path& location = default_location());

    Ledger(Ledger&&) noexcept;
    Ledger& operator=(Ledger&&) noexcept;
    Ledger(const Ledger&) = delete;
    Ledger& operator=(const Ledger&) = delete;
    ~Ledger() noexcept;

    sqlite3* native_handle() const noexcept;           // nullptr for PostgreSQL
    const std::filesystem::path& path() const noexcept;  // the location as opened (file path or URL)
    int schema_version() const;
    void set_lease_seconds(std::int64_t seconds);
    std::int64_t lease_seconds() const noexcept;

    // Append a record unconditionally. Returns its id.
    std::int64_t record(LedgerRecord record);
    // Reserve a slot: append a leased record only if afterwards at most `max_instances` distinct images carry
    // its fingerprint (committed records and live reservations); the count and the insert are one
    // transaction, so concurrent reservations never overshoot. Throws LimitError. An image already recorded
    // under the fingerprint does not count twice.
    std::int64_t reserve(LedgerRecord record, std::uint64_t max_instances);
    // Make a reservation permanent (its image now exists). After its lease ran out the limit is checked again:
    // LimitError (and the reservation is gone) when others took the slot meanwhile. No-op when committed.
    void commit(std::int64_t id);
    // Drop a record again (a reservation whose image was never completed). No-op for an unknown id.
    void release(std::int64_t id);

    // Distinct images recorded with this fingerprint (committed, or reserved under a live lease).
    std::uint64_t count_instances(const std::string& fingerprint) const;
    // All records (reservations included, see LedgerRecord::state), or those of one fingerprint, oldest first.
    std::vector<LedgerRecord> records(const std::optional<std::string>& fingerprint = std::nullopt) const;

private:
    struct Impl;
    explicit Ledger(std::unique_ptr<Impl> impl) noexcept;
    std::unique_ptr<Impl> impl_;
};

// Records as the JSON array `luksforge ledger list --json` / `ledger export` print.
std::string ledger_records_json(const std::vector<LedgerRecord>& records);

// This host's name as records carry it (gethostname).
std::string ledger_host_name();

// Current UTC time as ISO 8601 with seconds ("2026-11-29T10:57:45Z").
std::string utc_timestamp();

}  // namespace luksforge
